"""tests/gpu_check.sh on a CPU: its plumbing at tiny sizes (every check runs, GPU-only measurements are n/a); on a
machine with CUDA the real check too (slow)."""
import os, subprocess, sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, "tests/gpu_check.py", "--device", "cpu", "--workdir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    assert r.returncode == 0 and [ln[:3] for ln in lines] == [f"[{i}]" for i in range(1, 8)], r.stdout + r.stderr
    assert all(": PASS |" in ln for ln in lines) and "7/7 checks passed" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu(tmp_path):
    r = subprocess.run(["bash", "tests/gpu_check.sh", str(tmp_path)], cwd=ROOT, timeout=1200)
    assert r.returncode == 0
