"""Our kernels/ folder shadows Hugging Face's Hub-kernels package (import name `kernels`), which transformers >= 5.25
requires and imports when a model class loads; kernels/__init__.py makes the one package serve both. Each check
runs in a fresh interpreter with the repository root first on sys.path, as our scripts run."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code, path=(ROOT,)):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    return r.stdout


def test_transformers_loads_a_model_class_beside_our_kernels():
    """Fails without the fix under transformers 5.25 (ImportError: cannot import name 'CUDAProperties' from
    'kernels'); under older versions, which do not import the Hub package, it passes either way."""
    run("""
import importlib.metadata
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config
m = AutoModelForCausalLM.from_config(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
import kernels
from kernels.logprob import token_logprobs
try:
    hub = importlib.metadata.version("kernels")
except importlib.metadata.PackageNotFoundError:
    hub = None
assert hub is None or (kernels.__version__ == hub and hasattr(kernels, "CUDAProperties")), kernels.__version__
print("transformers", transformers.__version__, "Hub kernels", hub, "ok")
""")


def test_an_installed_hub_package_is_merged_into_ours(tmp_path):
    """Whatever transformers is installed: a stand-in Hub package (with its distribution metadata, and a
    submodule its __init__ imports by absolute name) installed behind the repository root."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("from kernels._layer import VALUE\n__version__ = '9.9'\n")
    (tmp_path / "kernels" / "_layer.py").write_text("VALUE = 42\n")
    (tmp_path / "kernels-9.9.dist-info").mkdir()
    (tmp_path / "kernels-9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 9.9\n")
    run("""
import kernels
from kernels import logprob
from kernels.logprob import token_logprobs
assert kernels.VALUE == 42 and kernels.__version__ == "9.9" and kernels.__file__.startswith(%r)
print("ok")
""" % os.path.join(ROOT, "kernels"), path=(ROOT, str(tmp_path)))
