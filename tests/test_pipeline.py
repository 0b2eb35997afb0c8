"""The whole tiny pipeline in its smoke size (a few steps per stage): every stage runs through the real scripts
and leaves well-formed artifacts. The numbers are not checked here (a few steps learn nothing); README's table
comes from the full `bash run_tiny.sh`."""
import json

from common import read_jsonl, read_records



def test_run_tiny_smoke(smoke_run):  # conftest.py runs it, once for this test and test_report's browser test
    run = smoke_run
    # knowledge graph, questions, pool, cold-start data
    stats = json.load(open(run / "kg" / "stats.json"))
    assert stats["entities"] > 500 and stats["edges"] > 1000
    train, test = read_records(run / "synth" / "train.jsonl"), read_records(run / "synth" / "test.jsonl")
    assert len(train) == 600 and len(test) == 100
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    pool, cold = read_records(run / "pool" / "train.jsonl"), read_records(run / "pool" / "cold_start.jsonl")
    assert pool and all(r["difficulty"] in ("easy", "moderate", "difficult") for r in pool)
    assert len(cold) == 180 and not {r["id"] for r in cold} & {r["id"] for r in pool}  # --cold-start 0.3 of 600
    sft = read_jsonl(run / "sft.jsonl")  # chains for the cold-start subset only, every one checked
    assert sorted(r["id"] for r in sft) == sorted(r["id"] for r in cold)
    assert all(r["messages"][-1]["content"].endswith("</answer>") for r in sft)
    probe = json.load(open(run / "base_probe.json"))
    assert probe["forward"]["n"] == probe["reverse"]["n"] == 400 and 0 <= probe["reverse"]["recall"] <= 100
    # checkpoints are HF folders that reload
    s = run / "seed0"
    for ckpt in (run / "base" / "final", s / "sft" / "final", s / "rl1" / "best", s / "rl2" / "best"):
        assert (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists(), ckpt
    assert read_jsonl(s / "mine" / "pass_rates.jsonl")
    for stage in ("rl1", "rl2"):
        rows = [r for r in read_jsonl(s / stage / "metrics.jsonl") if "reward" in r]
        assert rows and all(-0.5 <= r["reward"] <= 1.0 for r in rows)
    # evaluation: one prediction per test item per stage, and the ablation table
    for d in (run / "eval_base", s / "eval" / "sft", s / "eval" / "rl1", s / "eval" / "rl2", s / "eval" / "sft_more",
              s / "eval" / "rl1_shuffled"):  # CONTROLS=1: the matched-compute and the shuffled-reward controls
        preds = read_jsonl(d / "predictions.jsonl")
        assert sorted(r["id"] for r in preds) == sorted(r["id"] for r in test), d
    table = json.load(open(run / "ablation.json"))
    assert list(table["stages"]) == ["base", "sft", "rl1", "rl2"] and table["n_test"] == len(test)
    assert list(table["controls"]) == ["sft_more", "rl1_shuffled"] and set(table["controls"]["sft_more"]) >= {
        "vs_sft", "vs_rl1"}
    md = open(run / "ablation.md").read()
    assert "| + RL stage 2 |" in md and "shuffled-reward control" in md and "one-hop recall" in md
    assert json.load(open(run / "eval_formats" / "results.json"))["benchmarks"]["medqa"]["n"] == 5
    assert (run / "report.html").stat().st_size > 10000  # report.py's audit page (its browser test: test_report.py)
