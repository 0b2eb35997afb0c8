"""The whole tiny pipeline in its smoke size (a few steps per stage): every stage runs through the real scripts
and leaves well-formed artifacts. The numbers are not checked here (a few steps learn nothing); README's table
comes from the full `bash run_tiny.sh`."""
import json, os, subprocess, sys

from common import read_jsonl, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_tiny_smoke(smoke_run):  # conftest.py runs it, once for this test and test_report's browser test
    run = smoke_run
    # knowledge graph, questions, pool, cold-start data
    stats = json.load(open(run / "kg" / "stats.json"))
    assert stats["entities"] > 500 and stats["edges"] > 1000
    train, test = read_records(run / "synth" / "train.jsonl"), read_records(run / "synth" / "test.jsonl")
    assert len(train) == 600 and len(test) == 100
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    pool = read_records(run / "pool" / "train.jsonl")
    assert pool and all(r["difficulty"] in ("easy", "moderate", "difficult") for r in pool)
    sft = read_jsonl(run / "sft.jsonl")
    assert len(sft) == len(pool) and all(r["messages"][-1]["role"] == "assistant" for r in sft)
    # checkpoints are HF folders that reload
    s = run / "seed0"
    for ckpt in (run / "base" / "final", s / "sft" / "final", s / "rl1" / "best", s / "rl2" / "best"):
        assert (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists(), ckpt
    assert read_jsonl(s / "mine" / "pass_rates.jsonl")
    for stage in ("rl1", "rl2"):
        rows = [r for r in read_jsonl(s / stage / "metrics.jsonl") if "reward" in r]
        assert rows and all(-0.5 <= r["reward"] <= 1.0 for r in rows)
    # evaluation: one prediction per test item per stage, and the ablation table
    for d in (run / "eval_base", s / "eval" / "sft", s / "eval" / "rl1", s / "eval" / "rl2"):
        preds = read_jsonl(d / "predictions.jsonl")
        assert sorted(r["id"] for r in preds) == sorted(r["id"] for r in test), d
    table = json.load(open(run / "ablation.json"))
    assert list(table["stages"]) == ["base", "sft", "rl1", "rl2"] and table["n_test"] == len(test)
    assert "| + RL stage 2 |" in open(run / "ablation.md").read()
    assert table["chains"]["rl2"]["all"]["n"] == len(test) and list(table["verdicts"]) == ["base", "sft", "rl1", "rl2"]
    assert json.load(open(run / "eval_formats" / "results.json"))["benchmarks"]["medqa"]["n"] == 5
    assert (run / "report.html").stat().st_size > 10000  # report.py's audit page (its browser test: test_report.py)
    # the diagnosis of where answers go wrong, on a stage-1 model's greedy and sampled answers
    p = subprocess.run([sys.executable, "dev/chains.py", "--model", str(s / "rl1" / "best"), "--data",
                        str(run / "pool" / "train.jsonl"), "--n", "3", "--k", "2", "--max-new-tokens", "16"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    n_all = {l.split(" | ")[0][2:]: int(l.split(" | ")[2]) for l in p.stdout.splitlines() if " | all | " in l}
    tiers = {r["difficulty"] for r in pool}
    assert n_all == {"greedy": 3 * len(tiers), "k=2, T=1.0": 6 * len(tiers)}, p.stdout
    assert f"Within the {3 * len(tiers)} groups" in p.stdout and "replaced by a wrong option" in p.stdout, p.stdout
