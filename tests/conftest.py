import os, subprocess, sys

import pytest
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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """run_tiny.sh in its smoke size, once per session: test_pipeline checks its artifacts, test_report opens its
    report.html in a browser. -> the RUN folder."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "SMOKE": "1", "CONTROLS": "1", "NO_INSTALL": "1", "RUN": str(run), "PATH": os.path.dirname(sys.executable)
           + os.pathsep + os.environ.get("PATH", "")}
    p = subprocess.run(["bash", "run_tiny.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return run
