"""filter.py: format filter reasons on hand-made broken rows, real benchmark files (MedQA train, CMExam),
dedup, decontamination, anonymisation (and what it must not touch), verification via a loopback server,
difficulty tiers and mixing."""
import csv
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

import filter as F
from common import read_jsonl, read_records
from fake_llm_server import FakeLLMServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.path.dirname(ROOT), "shared", "benchdata")
MEDQA_TRAIN = os.path.join(BENCH, "medqa", "medqa_train_small.jsonl")
MEDQA_TEST = os.path.join(BENCH, "medqa", "phrases_no_exclude_test.jsonl")
CMEXAM = os.path.join(BENCH, "cmexam", "val.csv")
needs_bench = pytest.mark.skipif(not os.path.isdir(BENCH), reason="../shared/benchdata is absent")  # as test_eval


def rec(i, q="Which drug treats condition %d?", opts=("alpha", "beta", "gamma", "delta"), ans="A", hops=None,
        inlinks=None, source="synthetic"):
    meta = {} if hops is None else {"hops": hops, "rarity": {"disease_inlinks": inlinks}}
    return {"id": f"r{i}", "source": source, "question": q % i if "%d" in q else q,
            "options": dict(zip("ABCDE", [f"{o} {i}" for o in opts])) if isinstance(opts, tuple) else opts,
            "answer": ans, "difficulty": None, "meta": meta}


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def test_each_defect_rejected_with_its_reason(tmp_path):
    bad = {
        "empty_option": rec(1, opts={"A": "x", "B": " ", "C": "z"}),
        "duplicate_options": rec(2, opts={"A": "Aspirin", "B": "aspirin ", "C": "Heparin"}),
        "answer_not_in_options": rec(3, ans="E"),
        "too_few_options": rec(4, opts={"A": "only"}),
        "multi_answer": rec(5, ans="AC"),
        "empty_question": rec(6, q="  "),
        "mojibake": rec(7, q="The patientâ€™s fever %d"),
        "control_chars": rec(8, q="Fever\x07 and rash %d"),
        "unbalanced_markup": rec(9, q="A <b>bold claim %d without close"),
    }
    good = [rec(10), rec(11, q="Serum Na <135 mmol/L and a <i>rash</i> %d: which?")]
    path = tmp_path / "in.jsonl"
    write(path, list(bad.values()) + good + ["{not json"])
    stats = F.run([("synthetic", str(path))], str(tmp_path / "out"), difficulty="heuristic")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    got = {r["id"]: r["reason"] for r in rejects if r["id"]}
    assert got == {r["id"]: reason for reason, r in bad.items()}
    assert any(r["reason"].startswith("bad_json") and r["where"].endswith(":12") for r in rejects)
    assert all(r["where"].startswith(str(path)) for r in rejects)  # source line of every reject
    assert [r["id"] for r in read_records(tmp_path / "out" / "train.jsonl")] == ["r10", "r11"]
    assert stats["pool"] == 2


def cmexam_slice(path, n=300):
    with open(CMEXAM, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[:n] + [r for r in rows if len(r["Answer"].strip()) > 1][:30]  # multi-answer rows come later
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


@needs_bench
def test_real_files_medqa_and_cmexam(tmp_path):
    rows = cmexam_slice(tmp_path / "cm.csv")
    multi = sum(len(r["Answer"].strip()) > 1 for r in rows)
    assert multi > 0
    stats = F.run([("medqa", MEDQA_TRAIN), ("cmexam", str(tmp_path / "cm.csv"))], str(tmp_path / "out"),
                  difficulty="heuristic")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    routed = [r for r in rejects if "multi-answer" in r["reason"]]
    assert len(routed) == multi and all(r["source"] == "cmexam" for r in routed)
    pool = read_records(tmp_path / "out" / "train.jsonl")
    assert Counter(r["source"] for r in pool)["medqa"] == 50
    assert all(r["difficulty"] in ("easy", "moderate", "difficult") for r in pool)
    assert stats["loaded"] == {"medqa": 50, "cmexam": len(rows) - sum(1 for r in rejects if r["reason"].startswith("load"))}
    assert "| cmexam |" in (tmp_path / "out" / "stats.md").read_text()


@needs_bench
def test_dedup_exact_and_near_on_real_items():
    import benchmarks as ev
    items = ev.load_benchmark("medqa", MEDQA_TRAIN)
    exact = json.loads(json.dumps(items[3]))
    exact["id"], exact["options"] = "copy", dict(reversed(list(exact["options"].items())))  # option order differs
    near = json.loads(json.dumps(items[7]))
    near["id"], near["question"] = "near", near["question"].replace("year-old", "yr-old", 1) + " Choose one."
    half = json.loads(json.dumps(items[9]))  # shares its first half with item 9 only: a different question
    half["id"] = "half"
    half["question"] = items[9]["question"][:len(items[9]["question"]) // 2] + items[10]["question"][len(items[10]["question"]) // 2:]
    half["options"] = items[10]["options"]
    kept, dropped = F.dedup(items + [exact, near, half])
    assert [r["id"] for r in kept] == [r["id"] for r in items] + ["half"]  # no false positives among 50 real items
    why = {r["id"]: reason for r, reason in dropped}
    assert why["copy"].startswith("duplicate of " + items[3]["id"])
    assert why["near"].startswith("near_duplicate of " + items[7]["id"])


@needs_bench
def test_decontamination_counts_per_benchmark():
    import benchmarks as ev
    train, test = ev.load_benchmark("medqa", MEDQA_TRAIN), ev.load_benchmark("medqa", MEDQA_TEST)[:200]
    leaked = []
    for i, t in enumerate(test[:5]):  # a benchmark item copied into training with light edits
        leaked.append(dict(t, id=f"leak{i}", question=t["question"].replace("Which", "What", 1) + " Explain."))
    kept, dropped, per = F.decontaminate(train + leaked, {"medqa": test, "pubmedqa": []})
    assert sorted(r["id"] for r, _ in dropped) == [f"leak{i}" for i in range(5)]
    assert per == {"medqa": 5, "pubmedqa": 0} and len(kept) == len(train)  # shared boilerplate is not a leak


def test_decontamination_always_drops_benchmark_items():
    """Whatever n and min_frac (here: off): an item of a benchmark goes, a copy under another id or its id with
    its options; the same id with other options (row-numbered ids) and a generic stem with other options stay."""
    bench = [rec(i, q="Indicate the correct answer about drug %d.", source="medqa") for i in range(5)]
    train = [dict(bench[0], id="copy", question="  INDICATE the correct\nanswer about drug 0. "),
             dict(bench[1], question="Indicate, edited, the answer about drug 1."),
             dict(bench[2], options={"A": "x", "B": "y"}), dict(bench[3], id="x", options={"A": "x", "B": "y"})]
    kept, dropped, per = F.decontaminate(train, {"medqa": bench}, min_frac=1.1)
    assert [r["id"] for r, _ in dropped] == ["copy", "r1"] and per == {"medqa": 2}
    assert [r["id"] for r in kept] == ["r2", "x"] and dropped[0][1] == "contaminated: an item of medqa"


def test_decontamination_sees_the_text_before_anonymisation(tmp_path):
    item = rec(1, q="Seen on March 3, 2021 with drug %d: which?")
    write(tmp_path / "eval.jsonl", [item])
    write(tmp_path / "pub.jsonl", [dict(item, id="copy"), rec(2)])
    stats = F.run([("jsonl", str(tmp_path / "pub.jsonl"))], str(tmp_path / "out"),
                  [("jsonl", str(tmp_path / "eval.jsonl"))], difficulty="heuristic", contam_frac=1.1)
    assert stats["decontaminated"] == {"jsonl": 1} and stats["pool"] == 1


@needs_bench
def test_cli_refuses_public_sets_without_decontamination(tmp_path):
    """Issue 35's leak: PubMedQA's 1,000 labelled items as training data while eval.py scores them. Without
    --decontaminate (or an explicit --no-decontaminate) filter.py stops; with the official 500-item test split
    named, exactly those 500 leave the pool."""
    pqal = os.path.join(BENCH, "pubmedqa", "ori_pqal.json")
    cmd = [sys.executable, "filter.py", "--public", f"pubmedqa={pqal}", "--out", str(tmp_path / "out"), "--tiny"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "name every benchmark you will evaluate on with --decontaminate" in r.stderr
    assert "--no-decontaminate" in r.stderr and not (tmp_path / "out").exists()
    r = subprocess.run(cmd + ["--decontaminate", f"pubmedqa500={pqal}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    test = set(json.load(open(os.path.join(BENCH, "pubmedqa", "test_ground_truth.json"))))
    rej = {x["id"].removeprefix("pubmedqa-"): x["reason"] for x in read_jsonl(tmp_path / "out" / "rejects.jsonl")}
    assert test <= set(rej) and [*rej.values()].count("contaminated: an item of pubmedqa500") == 497  # 3: markup
    assert not {r["id"].removeprefix("pubmedqa-") for r in read_records(tmp_path / "out" / "train.jsonl")} & test


@pytest.mark.parametrize("text,kinds", [
    ("Mr. John Smith, 45-year-old, was seen on March 3, 2021.", {"name": 1, "date": 1}),
    ("Contact jane.doe@example.org or (555) 123-4567.", {"email": 1, "phone": 1}),
    ("MRN: 483920 admitted 2020-11-04; Dr Chen reviewed it.", {"id": 1, "date": 1, "name": 1}),
    ("Record number 12345678901 and date 12/05/2019.", {"id": 1, "date": 1}),
    ("Born 3 January 1990, seen 01-02-2021 and 4/5/21.", {"date": 3}),
])
def test_anonymise_replaces_personal_data(text, kinds):
    out, found = F.anonymise(text)
    assert dict(found) == kinds, (out, found)
    assert "Smith" not in out and "@" not in out and "4567" not in out and "483920" not in out


@pytest.mark.parametrize("text", [
    "A 45-year-old man takes metformin 500 mg twice daily and aspirin 81 mg.",
    "BP 120/80 mmHg, pulse 88/min, Hb 9.8 g/dL, platelets 150,000/mm3, WBC 12500/mm3, Na 135 mEq/L.",
    "Give 0.5 mg/kg IV over 30 min; HbA1c 7.2%; pH 7.35; 2 x 10^9/L; creatinine 1.2 mg/dL for 3 months.",
    "In March she had fever for 3 days; a 6-month-old infant; dose 1-2 g/day; ratio 1:160; titrate 5-10-20 mg.",
    "Platelet count 250000 per microliter, leukocytes 12500, serum osmolality 290 mOsm/kg, vitamin B12 1500 pg/mL.",
])
def test_anonymise_leaves_clinical_numbers(text):
    out, found = F.anonymise(text)
    assert out == text and not found


def test_anonymisation_in_the_pipeline_touches_questions_only(tmp_path):
    rows = [rec(1, q="Mr. John Smith (MRN: 48392011) asks on 2020-11-04: which drug %d?"),
            rec(2, q="When was the declaration %d signed?", opts={"A": "May 11, 2011", "B": "June 2, 2012"})]
    write(tmp_path / "in.jsonl", rows)
    stats = F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "out"), difficulty="heuristic")
    pool = {r["id"]: r for r in read_records(tmp_path / "out" / "train.jsonl")}
    assert pool["r1"]["question"] == "[NAME] ([ID]) asks on [DATE]: which drug 1?"
    assert pool["r1"]["meta"]["anonymised"] == {"name": 1, "id": 1, "date": 1}
    assert pool["r2"]["options"] == rows[1]["options"] and "anonymised" not in pool["r2"]["meta"]
    assert stats["anonymised"] == {"name": 1, "id": 1, "date": 1, "items": 1}


def test_verification_sends_always_wrong_items_to_review(tmp_path):
    rows = [rec(i, ans="A") for i in range(3)] + [rec(i, ans="B") for i in range(3, 5)]
    write(tmp_path / "in.jsonl", rows)
    reply = lambda messages, n, temperature: ["<think>sure</think>\n<answer>A</answer>"] * n  # always "A"
    with FakeLLMServer(reply) as srv:
        F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "out"), verify_spec=srv.url,
              difficulty="passrate", k=5)
        first = srv.requests
        F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "out"), verify_spec=srv.url,
              difficulty="passrate", k=5)
        assert srv.requests == first  # resumed from the cache: no call paid twice
    review = read_jsonl(tmp_path / "out" / "review.jsonl")
    assert sorted(r["id"] for r in review) == ["r3", "r4"]
    assert all(len(r["trials"]) == 5 and r["picks"] == ["A"] * 5 for r in review)
    pool = read_records(tmp_path / "out" / "train.jsonl")
    assert sorted(r["id"] for r in pool) == ["r0", "r1", "r2"]
    assert all(r["meta"]["verify"] == {"k": 5, "correct": 5} and r["difficulty"] == "easy" for r in pool)


def test_llm_judge_and_passrate_difficulty(tmp_path):
    rows = [rec(i, ans="A", q="Common question %d?") for i in range(3)] + \
           [rec(i, ans="B", q="Rare zebra question %d?") for i in range(3, 6)]
    write(tmp_path / "in.jsonl", rows)
    judge = lambda m, n, t: ["Difficult." if "zebra" in m[-1]["content"] else "easy"] * n
    with FakeLLMServer(judge) as srv:
        F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "a"), difficulty="llm", judge_spec=srv.url)
    got = {r["id"]: r["difficulty"] for r in read_records(tmp_path / "a" / "train.jsonl")}
    assert got == {f"r{i}": "easy" if i < 3 else "difficult" for i in range(6)}
    assert "Rate the difficulty" in srv.payloads[0]["messages"][0]["content"]
    answers_a = lambda m, n, t: ["<think>.</think><answer>A</answer>"] * (n - 1) + ["<answer>B</answer>"]
    with FakeLLMServer(answers_a) as srv:  # pass rate over k=3 samples: 2/3 for answer A, 1/3 for B
        F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "b"), difficulty="passrate",
              judge_spec=srv.url, k=3)
    got = {r["id"]: r["difficulty"] for r in read_records(tmp_path / "b" / "train.jsonl")}
    assert got == {f"r{i}": "moderate" if i < 3 else "difficult" for i in range(6)}
    assert read_jsonl(tmp_path / "b" / "review.jsonl") == []  # the difficulty model does not verify labels
    with pytest.raises(SystemExit):
        F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "c"), difficulty="llm")


@pytest.mark.slow
def test_verification_with_a_local_model_folder(tmp_path):
    import torch
    from model import init_model, train_tokenizer
    torch.manual_seed(0)
    rows = [rec(i) for i in range(4)]
    write(tmp_path / "in.jsonl", rows)
    folder = str(tmp_path / "tiny")
    texts = [json.dumps(r) for r in rows] + ["<think> x </think> <answer>A</answer>"]
    tok = train_tokenizer(texts * 3, folder, vocab_size=300)
    init_model(folder, vocab_size=len(tok), tokenizer=tok, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
    F.run([("synthetic", str(tmp_path / "in.jsonl"))], str(tmp_path / "out"), verify_spec=folder, k=2,
          difficulty="passrate", max_tokens=6)
    pool, review = read_records(tmp_path / "out" / "train.jsonl"), read_jsonl(tmp_path / "out" / "review.jsonl")
    assert len(pool) + len(review) == 4 and all(len(r["trials"]) == 2 for r in review)
    assert all(r["difficulty"] in ("easy", "moderate", "difficult") for r in pool)


def test_heuristic_difficulty_and_mix(tmp_path):
    syn = [rec(i, hops=1 + i % 3, inlinks=(i * 7) % 40) for i in range(60)]
    pub = [rec(100 + i, source="medqa", q="Public question number %d about a drug?") for i in range(40)]
    F.difficulty_heuristic(syn + pub)
    vals = [r["meta"]["rarity"]["disease_inlinks"] for r in syn]
    cut = max(v for v in vals if sum(x <= v for x in vals) <= 30)  # the rarest half, ties together
    assert 20 <= sum(v <= cut for v in vals) <= 30
    for r in syn:
        h, rare = r["meta"]["hops"], r["meta"]["rarity"]["disease_inlinks"] <= cut
        assert r["difficulty"] == {(1, False): "easy", (1, True): "moderate", (2, False): "moderate"}.get(
            (h, rare), "difficult")
    assert {r["difficulty"] for r in pub} == {"moderate"} and pub[0]["meta"]["difficulty_source"] == "default"
    pool = F.mix_pool(syn + pub, {"public": 0.6, "synthetic": 0.4}, seed=0)
    src = Counter(r["source"] for r in pool)
    assert src == {"medqa": 40, "synthetic": 26}  # public limits: 40 / 0.6 = 66 in total
    tiers, want = Counter(r["difficulty"] for r in pool if r["source"] == "synthetic"), \
        Counter(r["difficulty"] for r in syn)
    assert all(abs(tiers[t] - want[t] * 26 / 60) < 1 for t in want)  # stratified by tier
    assert F.mix_pool(syn + pub, {"medqa": 10, "synthetic": 5}) and \
        Counter(r["source"] for r in F.mix_pool(syn + pub, {"medqa": 10, "synthetic": 5})) == {"medqa": 10, "synthetic": 5}


def test_cold_start_subset_is_disjoint_from_the_rl_pool(tmp_path):
    write(tmp_path / "syn.jsonl", [rec(i, hops=1 + i % 3, inlinks=i) for i in range(40)])
    stats = F.run([("synthetic", str(tmp_path / "syn.jsonl"))], str(tmp_path / "out"), cold_start=0.25)
    pool, cold = read_records(tmp_path / "out" / "train.jsonl"), read_records(tmp_path / "out" / "cold_start.jsonl")
    assert (stats["pool"], stats["cold_start"], len(pool), len(cold)) == (30, 10, 30, 10)
    assert sorted(r["id"] for r in pool + cold) == sorted(f"r{i}" for i in range(40))
    F.run([("synthetic", str(tmp_path / "syn.jsonl"))], str(tmp_path / "again"), cold_start=0.25)
    assert read_records(tmp_path / "again" / "cold_start.jsonl") == cold  # seeded: the same subset


@needs_bench
def test_cli_tiny(tmp_path):
    rows = [rec(i, hops=1 + i % 3, inlinks=i) for i in range(30)] + [rec(0)]  # the last one is an exact duplicate
    rows[-1]["id"] = "dup"
    write(tmp_path / "syn.jsonl", rows)
    r = subprocess.run([sys.executable, "filter.py", "--synthetic", str(tmp_path / "syn.jsonl"), "--public",
                        f"medqa={MEDQA_TRAIN}", "--no-decontaminate", "--out", str(tmp_path / "out"), "--tiny",
                        "--mix", "public=0.5,synthetic=0.5", "--cold-start", "10"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pool, cold = read_records(tmp_path / "out" / "train.jsonl"), read_records(tmp_path / "out" / "cold_start.jsonl")
    assert len(cold) == 10 and len(pool) == 50 and not {p["id"] for p in pool} & {p["id"] for p in cold}
    assert Counter(p["source"] for p in pool + cold) == {"medqa": 30, "synthetic": 30}
    assert "| synthetic |" in r.stdout and (tmp_path / "out" / "stats.md").exists()
    assert any(x["id"] == "dup" and x["reason"].startswith("duplicate") for x in read_jsonl(tmp_path / "out" / "rejects.jsonl"))


@needs_bench
@pytest.mark.parametrize("name,path", [("medmcqa", os.path.join(BENCH, "medmcqa", "medmcqa_input.jsonl")),
                                       ("pubmedqa", os.path.join(BENCH, "pubmedqa", "ori_pqal.json"))])
def test_public_loaders_through_eval(name, path):
    recs, rejects = F.load_source(name, path)
    assert len(recs) >= 1000 and all(r["source"] == name and r["meta"]["origin"].startswith(path) for r in recs)
    bad = Counter(F.check_format(r) for r in recs)
    assert bad[None] >= 0.98 * len(recs), bad  # real files are mostly clean; the rest has a named reason
    assert all(isinstance(k, str) for k in bad if k is not None)
