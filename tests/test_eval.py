import csv
import json
import math
import os

import pytest

from common import LETTERS, build_messages, read_jsonl, write_jsonl
from benchmarks import load_benchmark
from eval import evaluate, main, summarize
from fake_llm_server import FakeLLMServer

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchdata")
needs_bench = pytest.mark.skipif(not os.path.isdir(BENCH), reason="../shared/benchdata is absent")


def B(*p):
    return os.path.join(BENCH, *p)


# ---------------------------------------------------------------------------------------------- real files

@needs_bench
@pytest.mark.parametrize("name,path,count,rejected", [
    ("medqa", ("medqa", "phrases_no_exclude_test.jsonl"), 1273, 0),
    ("pubmedqa", ("pubmedqa", "ori_pqal.json"), 1000, 0),
    ("pubmedqa500", ("pubmedqa", "ori_pqal.json"), 500, 0),
    ("mmlu_pro_biology", ("mmlu_pro", "mmlu-pro_biology.jsonl"), 717, 0),
    ("mmlu_pro_health", ("mmlu_pro", "mmlu-pro_health.jsonl"), 818, 0),
    ("medbullets", ("medbullets", "medbullets_op4.csv"), 308, 0),
    ("medbullets", ("medbullets", "medbullets_op5.csv"), 308, 0),
    ("medxpertqa", ("medxpertqa", "MedXpertQA_test.jsonl"), 1449, 0),
    ("medxpertqa", ("medxpertqa", "medxpertqa_sampled_text_input.jsonl"), 244, 0),
    ("careqa", ("careqa", "care_qa.jsonl"), 5621, 2),
    ("medmcqa", ("medmcqa", "medmcqa_input.jsonl"), 4183, 0)])
def test_loaders_on_real_files(name, path, count, rejected, capsys):
    rej = []
    recs = load_benchmark(name, B(*path), rej)
    assert len(recs) == count and len(rej) == rejected
    assert f"loaded {count} of {count + rejected} rows" in capsys.readouterr().out
    assert len({r["id"] for r in recs}) == count
    for r in recs:
        assert "Answer Choices" not in r["question"] and r["answer"] in r["options"]
        assert all(v.strip() and v != "N/A" for v in r["options"].values())
    if name == "careqa":
        assert [x["row"] for x in rej] == [1002, 1003] and all("NaN" in x["reason"] for x in rej)
    if name.startswith("pubmedqa"):
        assert all(r["options"] == {"A": "yes", "B": "no", "C": "maybe"} and "Question:" in r["question"]
                   for r in recs)


@needs_bench
def test_loaders_map_the_gold_answer_to_the_right_option_text():
    raw = [json.loads(l) for l in open(B("medqa", "phrases_no_exclude_test.jsonl"))]
    recs = load_benchmark("medqa", B("medqa", "phrases_no_exclude_test.jsonl"))
    assert all(rec["options"][rec["answer"]] == r["answer"].strip() for rec, r in zip(recs, raw))
    raw = [json.loads(l) for l in open(B("mmlu_pro", "mmlu-pro_health.jsonl"))]
    recs = load_benchmark("mmlu_pro_health", B("mmlu_pro", "mmlu-pro_health.jsonl"))
    assert all(rec["options"][rec["answer"]] == r["options"][r["answer_index"]].strip() for rec, r in zip(recs, raw))
    for f in ("medbullets_op4.csv", "medbullets_op5.csv"):
        raw = list(csv.DictReader(open(B("medbullets", f), encoding="utf-8")))
        recs = load_benchmark("medbullets", B("medbullets", f))
        assert all(rec["options"][rec["answer"]] == r["answer"].strip() for rec, r in zip(recs, raw))
        assert {len(r["options"]) for r in recs} == {4 if "op4" in f else 5}
    raw = [json.loads(l) for l in open(B("careqa", "care_qa.jsonl"))]  # json reads the bare NaN too
    recs = load_benchmark("careqa", B("careqa", "care_qa.jsonl"))
    good = [r for r in raw if isinstance(r["cop"], float) and not math.isnan(r["cop"])]
    assert all(rec["options"][rec["answer"]] == r[f"op{int(r['cop'])}"].strip() for rec, r in zip(recs, good))
    truth = json.load(open(B("pubmedqa", "test_ground_truth.json")))
    recs = load_benchmark("pubmedqa500", B("pubmedqa", "ori_pqal.json"))
    assert {r["id"][len("pubmedqa500-"):]: r["options"][r["answer"]] for r in recs} == truth
    recs = load_benchmark("medxpertqa", B("medxpertqa", "medxpertqa_sampled_text_input.jsonl"))
    raw = [json.loads(l) for l in open(B("medxpertqa", "medxpertqa_sampled_text_input.jsonl"))]
    assert all(rec["answer"] == r["label"][0] and len(rec["options"]) == len(r["options"]) for rec, r in zip(recs, raw))
    recs = load_benchmark("medmcqa", B("medmcqa", "medmcqa_input.jsonl"))
    raw = [json.loads(l) for l in open(B("medmcqa", "medmcqa_input.jsonl"))]
    assert {len(r["options"]) for r in recs} == {4}
    assert all(rec["answer"] == r["label"][0] and f"({rec['answer']}) {rec['options'][rec['answer']]}" in r["question"]
               for rec, r in zip(recs, raw))


@needs_bench
def test_medxpertqa_hf_layout_drops_the_answer_choices_block(tmp_path):
    """HF Text/test.jsonl: options a dict, label "X", the question still ending with "Answer Choices: (A) ...".
    That file is not here: rebuilt from the official eval-input rows (the same text), its items must load exactly as
    the copies whose block was already stripped (MedReason's MedXpertQA_test.jsonl): the options listed once."""
    raw = [json.loads(l) for l in open(B("medxpertqa", "medxpertqa_sampled_text_input.jsonl"))]
    hf = [{**r, "options": {o["letter"]: o["content"] for o in r["options"]}, "label": r["label"][0]} for r in raw]
    bad = {**hf[0], "id": "x", "options": {**hf[0]["options"], "A": "something else"}}
    write_jsonl(str(tmp_path / "test.jsonl"), hf + [bad])
    rej = []
    recs = load_benchmark("medxpertqa", str(tmp_path / "test.jsonl"), rej)
    assert len(recs) == 244 and [x["reason"] for x in rej] == [
        "the question's 'Answer Choices' block differs from its options"]
    stripped = {r["id"]: r for r in load_benchmark("medxpertqa", B("medxpertqa", "MedXpertQA_test.jsonl"))}
    same = [r for r in recs if r["id"] in stripped]
    assert len(same) == 133 and all(r == stripped[r["id"]] for r in same)
    assert all("Answer Choices" not in r["question"] for r in recs)


@needs_bench
def test_cmexam_rejects_multi_answer_rows_with_a_reason():
    rows = list(csv.DictReader(open(B("cmexam", "val.csv"), encoding="utf-8")))
    rej = []
    recs = load_benchmark("cmexam", B("cmexam", "val.csv"), rej)
    assert len(recs) + len(rej) == len(rows) == 6811
    multi = [x for x in rej if "single letter" in x["reason"]]
    assert len(multi) == sum(len(r["Answer"].strip()) != 1 for r in rows) > 0
    assert all(x["reason"] for x in rej) and len(recs) > 6500


# ---------------------------------------------------------------------------------------------- synthetic rows

def test_medmcqa_base_must_be_named_not_guessed(tmp_path):
    p = str(tmp_path / "dev.jsonl")
    row = {"id": "x", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}
    write_jsonl(p, [{**row, "id": "one", "cop": 1}, {**row, "id": "zero", "cop": 0}, {**row, "id": "four", "cop": 4}])
    rej = []
    orig = load_benchmark("medmcqa", p, rej)
    assert [(r["id"], r["answer"]) for r in orig] == [("medmcqa-one", "A"), ("medmcqa-four", "D")] and len(rej) == 1
    assert "cop 0" in rej[0]["reason"] and "medmcqa_hf" in rej[0]["reason"]
    rej = []
    hf = load_benchmark("medmcqa_hf", p, rej)
    assert [(r["id"], r["answer"]) for r in hf] == [("medmcqa-one", "B"), ("medmcqa-zero", "A")]
    assert len(rej) == 1 and "cop 4" in rej[0]["reason"]


def test_jmed_tolerant_and_unified_jsonl(tmp_path):
    p = str(tmp_path / "jmed.jsonl")
    opts21 = {L: f"option {L}" for L in LETTERS}
    write_jsonl(p, [{"id": 1, "question": "Q1", "options": opts21, "answer": "U"},
                    {"id": 2, "question": "Q2", "options": opts21, "answer": ["I"]},
                    {"id": 3, "question": "Q3", "options": ["x", "y", "z"], "answer": 2},
                    {"id": 4, "question": "Q4", "options": opts21, "answer": ["A", "B"]},
                    {"id": 5, "question": "Q5", "options": opts21, "answer": "V"}])
    rej = []
    recs = load_benchmark("jmed", p, rej)
    assert [r["answer"] for r in recs] == ["U", "I", "C"] and len(recs[0]["options"]) == 21
    assert [x["row"] for x in rej] == [4, 5]
    u = str(tmp_path / "u.jsonl")
    good = {"id": "s1", "source": "synthetic", "question": "Q", "options": {"A": "a", "B": "b"}, "answer": "B",
            "difficulty": "easy", "meta": {}}
    with open(u, "w") as f:
        f.write(json.dumps(good) + "\n" + json.dumps({**good, "id": "s2", "answer": "C"}) + "\n{bad json\n")
    rej = []
    assert load_benchmark("jsonl", u, rej) == [good]
    assert [x["row"] for x in rej] == [2, 3] and "'answer'" in rej[0]["reason"] and "JSON" in rej[1]["reason"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("medqa_v9", u)


def test_mmlu_pro_drops_na_and_reletters(tmp_path):
    p = str(tmp_path / "m.jsonl")
    write_jsonl(p, [{"question_id": 1, "question": "Q", "options": ["a", "N/A", "c", "d"], "answer": "D",
                     "answer_index": 3, "category": "health"},
                    {"question_id": 2, "question": "Q", "options": ["a", "b"], "answer": "A", "answer_index": 0,
                     "category": "law"}])
    recs = load_benchmark("mmlu_pro_health", p)
    assert len(recs) == 1 and recs[0]["options"] == {"A": "a", "B": "c", "C": "d"} and recs[0]["answer"] == "C"


# ---------------------------------------------------------------------------------------------- evaluate

def records(k=6, difficulty=True):
    return [{"id": f"r{i}", "source": "t", "question": f"Question {i}?", "options": {"A": "x", "B": "y", "C": "z"},
             "answer": "ABC"[i % 3], "difficulty": ["easy", "difficult"][i % 2] if difficulty else None, "meta": {}}
            for i in range(k)]


def test_evaluate_scores_samples_and_resumes(tmp_path):
    calls = []

    def llm(convs, n=1, temperature=0.0, max_tokens=512, seed=0):  # answers A for every question
        calls.append(len(convs))
        return [["<think>t</think><answer>A</answer>" if s == 0 else "<answer>B" for s in range(n)] for _ in convs]

    recs, pred = records(), str(tmp_path / "pred.jsonl")
    res = evaluate(llm, recs, n=2, bench="t", predictions=pred, chunk=4)
    assert calls == [4, 2]
    # items r0, r3 have answer A: per-item accuracy 0.5 (sample 1 is unparsable), the other items 0
    assert res["n"] == 6 and res["accuracy"] == pytest.approx(100 * 1 / 6)
    xs = [0.5, 0, 0, 0.5, 0, 0]
    se = math.sqrt(sum((x - 1 / 6) ** 2 for x in xs) / 5 / 6)
    assert res["se"] == pytest.approx(100 * se) and res["format_rate"] == pytest.approx(50)
    by = res["by_difficulty"]  # r0 (easy) and r3 (difficult) are half right
    assert by["easy"]["n"] == by["difficult"]["n"] == 3 and by["easy"]["accuracy"] == pytest.approx(100 * 0.5 / 3)
    rows = read_jsonl(pred)
    assert len(rows) == 12 and rows[1]["pred"] is None and rows[0]["output"].endswith("</answer>")
    # resume: a run killed mid-write leaves a truncated line; finished items are not asked again
    lines = open(pred).read().splitlines(True)
    with open(pred, "w") as f:
        f.writelines(lines[:9] + [lines[9][:20]])  # r4 lost its second sample, r5 both
    calls.clear()
    res2 = evaluate(llm, recs, n=2, bench="t", predictions=pred, chunk=4)
    assert calls == [2] and res2 == res
    assert len(read_jsonl(pred)) == 12  # the torn line is gone from the file: strict readers can read it
    calls.clear()
    assert evaluate(llm, recs, n=2, bench="t", predictions=pred) == res and calls == []  # the redone rows were kept
    calls.clear()
    assert evaluate(llm, recs, n=2, bench="other", predictions=pred)["n"] == 6 and calls == [6]


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--bench" in capsys.readouterr().out


def test_summarize_greedy_standard_error():
    rows = [{"id": f"i{k}", "sample": 0, "correct": k < 3, "well_formed": True} for k in range(10)]
    s = summarize(rows, 1)
    assert s["accuracy"] == pytest.approx(30) and s["se"] == pytest.approx(100 * math.sqrt(0.3 * 0.7 / 9))
    assert "by_difficulty" not in s
    one = summarize(rows[:1], 1)
    assert one["accuracy"] == 100 and one["se"] is None and summarize([], 1)["accuracy"] is None


# ---------------------------------------------------------------------------------------------- end to end

def test_cli_http_backend_retry_cache_and_resume(tmp_path):
    data = str(tmp_path / "syn.jsonl")
    write_jsonl(data, records(5, difficulty=True))

    def reply(messages, n, temperature):  # "knows" the answer of even-numbered questions only
        i = int(messages[-1]["content"].split("?")[0].split()[-1])
        return [f"<think>q{i}</think>\n<answer>{'ABC'[i % 3] if i % 2 == 0 else 'C'}</answer>"] * n

    out = str(tmp_path / "out")
    with FakeLLMServer(reply, fail=[500]) as srv:
        args = ["--model", srv.url, "--model-name", "fake", "--bench", f"jsonl={data}", "--out", out,
                "--concurrency", "2", "--max-new-tokens", "64"]
        s, = main(args)
        assert srv.requests == 6  # 5 items + the retried 500
        r = s["benchmarks"]["jsonl"]
        assert r["n"] == 5 and r["accuracy"] == pytest.approx(60) and r["format_rate"] == 100  # items 0, 2, 4 right
        md = open(os.path.join(out, "results.md")).read()
        assert "| jsonl | 5 | 60.0" in md and "by difficulty" in md
        assert len(read_jsonl(os.path.join(out, "predictions.jsonl"))) == 5
        main(args)  # resume: everything is in predictions.jsonl
        assert srv.requests == 6
        os.remove(os.path.join(out, "predictions.jsonl"))
        assert main(args)[0]["benchmarks"]["jsonl"] == r  # the response cache answers without a request
        assert srv.requests == 6 and srv.payloads[-1]["model"] == "fake" and srv.payloads[-1]["temperature"] == 0.0


@needs_bench
def test_cli_http_on_real_benchmarks_limit(tmp_path):
    with FakeLLMServer(lambda m, n, t: ["<think>x</think><answer>A</answer>"] * n) as srv:
        s, = main(["--model", srv.url, "--bench", f"medqa={B('medqa', 'medqa_train_small.jsonl')}",
                  f"medbullets={B('medbullets', 'medbullets_op4.csv')}",
                  f"medbullets={B('medbullets', 'medbullets_op5.csv')}", "--out", str(tmp_path), "--limit", "7"])
    assert list(s["benchmarks"]) == ["medqa", "medbullets", "medbullets:medbullets_op5"]
    assert all(r["n"] == 7 and r["format_rate"] == 100 for r in s["benchmarks"].values())
    assert srv.requests == 21


def test_local_tiny_model_end_to_end(tmp_path):
    pytest.importorskip("model")
    pytest.importorskip("sampler")
    import torch
    from model import init_model, load_model, train_tokenizer
    from transformers import AutoTokenizer
    torch.manual_seed(0)
    recs = records(4)
    texts = [m["content"] for r in recs for m in build_messages(r)] + ["<think> reasoning </think> <answer>A</answer>"]
    folder = str(tmp_path / "tiny")
    tok = train_tokenizer(texts * 3, folder, vocab_size=300)
    init_model(folder, vocab_size=len(tok), tokenizer=tok, hidden_size=32, intermediate_size=64,
               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192)
    model, tok = load_model(folder), AutoTokenizer.from_pretrained(folder)
    # in-process evaluation with a loaded model (how mine.py and the tiny pipeline call it)
    res = evaluate((model, tok), recs, max_new_tokens=6, batch_size=3, predictions=str(tmp_path / "p.jsonl"))
    rows = read_jsonl(str(tmp_path / "p.jsonl"))
    assert res["n"] == 4 and 0 <= res["accuracy"] <= 100 and len(rows) == 4
    assert all(isinstance(r["output"], str) and r["output"] for r in rows)
    # batching and length-sorting do not change greedy outputs: one prompt at a time gives the same text
    res1 = evaluate((model, tok), recs, max_new_tokens=6, batch_size=1, predictions=str(tmp_path / "p1.jsonl"))
    assert [r["output"] for r in read_jsonl(str(tmp_path / "p1.jsonl"))] == [r["output"] for r in rows]
    assert res1 == res
    # the CLI loads the folder itself
    data = str(tmp_path / "syn.jsonl")
    write_jsonl(data, recs)
    s, = main(["--model", folder, "--bench", f"jsonl={data}", "--out", str(tmp_path / "o"), "--tiny"])
    assert s["benchmarks"]["jsonl"]["n"] == 4 and os.path.exists(str(tmp_path / "o" / "results.json"))
    # --tiny changes defaults only: an explicit --limit / --max-new-tokens wins
    s, = main(["--model", folder, "--bench", f"jsonl={data}", "--out", str(tmp_path / "o2"), "--tiny", "--limit", "2",
              "--max-new-tokens", "5"])
    assert s["benchmarks"]["jsonl"]["n"] == 2 and s["max_new_tokens"] == 5
    # several models in one process, each into its own folder, each as if evaluated alone
    torch.manual_seed(1)
    other = str(tmp_path / "tiny2")
    init_model(other, vocab_size=len(tok), tokenizer=tok, hidden_size=32, intermediate_size=64,
               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192)
    alone, = main(["--model", other, "--bench", f"jsonl={data}", "--out", str(tmp_path / "o3"), "--tiny"])
    both = main(["--model", other, folder, "--bench", f"jsonl={data}", "--out", str(tmp_path / "m1"),
                 str(tmp_path / "m2"), "--tiny"])
    assert [b["model"] for b in both] == [other, folder] and both[0] == alone and both[1]["benchmarks"] == \
        main(["--model", folder, "--bench", f"jsonl={data}", "--out", str(tmp_path / "o4"), "--tiny"])[0]["benchmarks"]
    preds = [read_jsonl(str(tmp_path / d / "predictions.jsonl")) for d in ("m1", "o3")]
    assert preds[0] == preds[1]
    assert json.load(open(tmp_path / "m2" / "setup.json"))["model"] == folder
    with pytest.raises(SystemExit):  # one --out per --model
        main(["--model", other, folder, "--bench", f"jsonl={data}", "--out", str(tmp_path / "m3"), "--tiny"])
    # the same folder with other sampling settings is refused, not resumed with the old predictions
    with pytest.raises(SystemExit, match="max_new_tokens 5, now 112"):
        main(["--model", folder, "--bench", f"jsonl={data}", "--out", str(tmp_path / "o2"), "--tiny"])
    if os.path.isdir(BENCH):  # one real item of each benchmark through the local model (long prompts, 10 options)
        real = []
        for name, path in [("medqa", ("medqa", "medqa_train_small.jsonl")), ("pubmedqa", ("pubmedqa", "ori_pqal.json")),
                           ("mmlu_pro_biology", ("mmlu_pro", "mmlu-pro_biology.jsonl")),
                           ("medbullets", ("medbullets", "medbullets_op5.csv")),
                           ("medxpertqa", ("medxpertqa", "MedXpertQA_test.jsonl")),
                           ("careqa", ("careqa", "care_qa.jsonl")), ("medmcqa", ("medmcqa", "medmcqa_input.jsonl"))]:
            real += load_benchmark(name, B(*path))[:1]
        res = evaluate((model, tok), real, max_new_tokens=3, batch_size=16, predictions=str(tmp_path / "r.jsonl"))
        rows = read_jsonl(str(tmp_path / "r.jsonl"))
        assert res["n"] == 7 and {r["id"] for r in rows} == {r["id"] for r in real}
