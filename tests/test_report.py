"""report.py: escaping, the fixed/broken counts against predictions.jsonl, a revision link per provenance edge, the
--eval CLI."""
import json, os, re

import report
from common import read_jsonl

EVIL = "<script>window.pwned = 1</script> & <b>bold</b> </script><!--<script>"


def blob(path):
    """The page's item data, as the browser's JSON.parse reads it."""
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', open(path).read(), re.S)
    return json.loads(m.group(1))


def fake_eval(d, verdicts, outputs=None):
    """An eval.py folder answering items q0..: verdict 1 right, 0 wrong, 2 unparsable, None not evaluated."""
    os.makedirs(d)
    with open(os.path.join(d, "predictions.jsonl"), "w") as f:
        for i, v in enumerate(verdicts):
            if v is not None:
                pred = {1: "A", 0: "B", 2: None}[v]
                out = (outputs or {}).get(i, f"<think>t{i}</think>\n<answer>{pred or 'A or B'}</answer>")
                f.write(json.dumps({"bench": "jsonl", "id": f"q{i}", "sample": 0, "output": out, "pred": pred,
                                    "answer": "A", "correct": v == 1, "well_formed": True, "difficulty": None}) + "\n")
    json.dump({"model": d + "/ckpt", "n": 1, "temperature": 0.0, "max_new_tokens": 8, "seed": 0},
              open(os.path.join(d, "setup.json"), "w"))
    return d


def test_model_and_benchmark_text_is_escaped(tmp_path):
    bench = tmp_path / "b.jsonl"  # a benchmark question and options with markup too
    bench.write_text(json.dumps({"id": "q0", "source": "x", "question": "Is " + EVIL,
                                 "options": {"A": "<i>x</i> &amp;", "B": "y"}, "answer": "A"}) + "\n")
    d = fake_eval(str(tmp_path / "a<b>&c"), [1, 2], outputs={0: EVIL + "<answer>A</answer>"})
    out = report.main(["--eval", d, "--bench", f"jsonl={bench}", "--out", str(tmp_path / "r.html")])
    text = open(out).read()
    assert text.count("</script>") == 2 and "<!--" not in text  # ours only: the data cannot end its tag early
    assert "window.pwned" in text and "<b>bold" not in text.split("id=\"data\"")[0]
    assert "a&lt;b&gt;&amp;c" in text and "a<b>&c" not in text.split("id=\"data\"")[0]  # a folder name in the summary
    items = blob(out)["items"]
    assert items[0]["out"][0] == EVIL + "<answer>A</answer>" and items[0]["q"] == "Is " + EVIL  # intact as data


def test_fixed_and_broken_counts_match_predictions(tmp_path):
    run = tmp_path / "run"
    v = {"base": [0, 1, 0, 2, 1, 0], "sft": [0, 1, 1, 0, 2, 1], "rl1": [1, 0, 2, 1, 1, 1], "rl2": [1, 1, 0, 2, 1, None]}
    fake_eval(str(run / "eval_base"), v["base"])
    for st in ("sft", "rl1", "rl2"):
        fake_eval(str(run / "seed0" / "eval" / st), v[st])
    os.makedirs(run / "synth")
    (run / "synth" / "test.jsonl").write_text("")
    data = blob(report.main(["--run", str(run)]))
    assert [m["label"] for m in data["models"]] == ["Base", "cold start s0", "RL 1 s0", "RL 2 s0"]
    got = {t["name"].split(" (")[0]: (t["fixed"], t["broken"]) for t in data["trans"]}
    right = lambda st: {r["id"]: r["correct"] for r in read_jsonl(run / f"seed0/eval/{st}/predictions.jsonl")}
    for after, before in (("rl1", "sft"), ("rl2", "rl1")):  # computed directly from the files
        a, b = right(after), right(before)
        want = (sum(a[i] and not b[i] for i in a if i in b), sum(b[i] and not a[i] for i in a if i in b))
        assert got[report.STAGES[after] + " s0"] == want
    assert got == {"RL 1 s0": (3, 2), "RL 2 s0": (1, 1)}  # q5: no RL 2 answer


def test_a_revision_link_per_provenance_edge(tmp_path):
    prov = [{"page": "Gout", "revid": 123, "field": "infobox:symptoms", "head": "Gout", "relation": "has_symptom",
             "tail": "Pain"}, {"page": "X", "revid": "bad\"", "field": "f", "head": "a", "relation": "r", "tail": "b"}]
    rec = {"id": "q0", "source": "synthetic", "question": "Q?", "options": {"A": "Gout", "B": "Flu"}, "answer": "A",
           "meta": {"family": "diagnosis", "provenance": prov, "given": ["Pain"], "hidden": None,
                    "answer_name": "Gout", "correct": ["Gout"], "distractors": [{"name": "Flu", "why": "same type"}]}}
    bench = tmp_path / "t.jsonl"
    bench.write_text(json.dumps(rec) + "\n")
    d = fake_eval(str(tmp_path / "e"), [1])
    item = blob(report.main(["--eval", d, "--bench", f"jsonl={bench}", "--out", str(tmp_path / "r.html")]))["items"][0]
    assert [e["url"] for e in item["prov"]["edges"]] == ["https://en.wikipedia.org/w/index.php?oldid=123", None]
    assert item["prov"]["distractors"] == [{"name": "Flu", "why": "same type"}] and item["fam"] == "diagnosis"
