import os, sys
# Triton runs on the CPU only in its interpreter, and the flag must be set before anything imports triton
# (transformers imports it as a side effect).
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
