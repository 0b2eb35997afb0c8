import os, sys
# Triton runs on the CPU only in its interpreter, and the flag must be set before anything imports triton
# (transformers imports it as a side effect).
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def end_worker():
    """The last call of a torchrun test worker, once its work is written and its process group destroyed: leave
    without interpreter finalization, as the stage scripts do (model.exit_worker says why: gloo's threads still
    release the last collective while Python finalizes; SIGABRT in 4 of 50 runs of test_grpo's worker)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
