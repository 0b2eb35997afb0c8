"""distill.py: the KG-path teacher's chains pass every check; a bad LLM teacher (wrong answers, broken format,
hint restatements, overlong chains, a missing intermediate entity) behind a loopback OpenAI-compatible server is
caught, refined with the right strategy prompts in order, or rejected with the right reasons; runs resume."""
import json

import distill
from common import extract_answer, is_well_formed, read_jsonl
from fake_llm_server import FakeLLMServer


def rec(i, family, options, answer, path, given, hidden, question="A patient presents with findings. Which?"):
    return {"id": f"syn-{i}", "source": "synthetic", "question": question, "options": dict(zip("ABCDE", options)),
            "answer": answer, "difficulty": None,
            "meta": {"family": family, "hops": 1 + (hidden is not None), "path": path, "given": given,
                     "hidden": hidden}}


def E(h, r, t):
    return {"head": h, "relation": r, "tail": t}


FINDINGS = [E("Dengue", "has_symptom", "Fever"), E("Dengue", "has_symptom", "Rash"),
            E("Dengue", "risk_factor", "Mosquito bite")]
GIVEN = ["Fever", "Rash", "Mosquito bite"]
RECORDS = [
    rec(0, "diagnosis", ["Malaria", "Dengue", "Typhoid", "Measles"], "B", FINDINGS, GIVEN, None),
    rec(1, "treatment", ["Heparin", "Insulin", "Aspirin", "Paracetamol"], "D",
        FINDINGS + [E("Dengue", "treated_with", "Paracetamol")], GIVEN, "Dengue"),
    rec(2, "test", ["NS1 antigen test", "Blood smear", "Widal test"], "A",
        FINDINGS[:2] + [E("Dengue", "diagnosed_by", "NS1 antigen test")], GIVEN[:2], "Dengue"),
    rec(3, "contraindication", ["Paracetamol", "Aspirin", "Fluids", "Rest", "Vitamin C"], "B",
        FINDINGS + [E("Aspirin", "contraindicated_in", "Dengue")], GIVEN, "Dengue"),
    rec(4, "drug_class", ["Antibiotic", "Analgesic", "Anticoagulant", "Statin"], "B",
        FINDINGS[:2] + [E("Dengue", "treated_with", "Paracetamol"), E("Paracetamol", "drug_class", "Analgesic")],
        GIVEN[:2], "Dengue"),
]


def write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


KG = {"disease": ["Dengue", "Malaria", "Typhoid", "Measles"], "symptom": ["Fever", "Rash", "Mosquito bite"],
      "drug": ["Paracetamol", "Aspirin", "Heparin", "Insulin"], "test": ["NS1 antigen test"], "class": ["Analgesic"]}
EDGES = [("Dengue", "has_symptom", "Fever"), ("Dengue", "has_symptom", "Rash"), ("Dengue", "risk_factor", "Mosquito bite"),
         ("Dengue", "treated_with", "Paracetamol"), ("Dengue", "diagnosed_by", "NS1 antigen test"),
         ("Dengue", "contraindicated_in", "Aspirin"),  # written tail-first, as kg.py may: load_kg turns it round
         ("Paracetamol", "drug_class", "Analgesic"), ("Malaria", "has_symptom", "Fever"),
         ("Typhoid", "has_symptom", "Fever"), ("Typhoid", "has_symptom", "Rash"), ("Measles", "has_symptom", "Rash")]


def write_kg(d):
    d.mkdir()
    write(d / "entities.jsonl", [{"id": n, "name": n, "type": t} for t, ns in KG.items() for n in ns])
    write(d / "edges.jsonl", [{"head": h, "relation": r, "tail": t} for h, r, t in EDGES])
    return str(d)


def test_kg_teacher_chains_check_the_options_and_answer_with_the_text(tmp_path):
    nopath = dict(RECORDS[0], id="real-1", source="medqa", meta={})
    write(tmp_path / "train.jsonl", RECORDS + [nopath])
    out, kg = tmp_path / "sft.jsonl", write_kg(tmp_path / "kg")
    argv = ["--data", str(tmp_path / "train.jsonl"), "--teacher", "kg", "--kg", kg, "--out", str(out), "--tiny"]
    distill.main(argv)
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert sorted(rows) == [r["id"] for r in RECORDS]
    chain = {i: r["messages"][2]["content"] for i, r in rows.items()}
    for r in RECORDS:
        assert [m["role"] for m in rows[r["id"]]["messages"]] == ["system", "user", "assistant"]
        text, name = chain[r["id"]], r["options"][r["answer"]]
        assert distill.check(text, r, 800) == [] and is_well_formed(text, r["options"])
        # the answer block holds the option's text, read as its letter; the chain concludes with that name
        assert text.endswith(f"So the answer is {name}.</think>\n<answer> {name}</answer>"), text
        assert extract_answer(text, r["options"]) == r["answer"] and extract_answer(text, "ABCDE") is None
        assert text.startswith("<think>Findings: fever") and rows[r["id"]]["meta"]["teacher"] == "kg"
    # a diagnosis: a differential, each option checked against the findings up to the first it lacks
    assert ("A. Malaria: fever yes, rash no. B. Dengue: fever yes, rash yes, mosquito bite yes. C. Typhoid: fever "
            "yes, rash yes, mosquito bite no. D. Measles: fever no.") in chain["syn-0"]
    # later hops: the disease the findings point to, the hops, then every option on the asked relation
    assert ("They point to Dengue. Dengue is treated with: A. Heparin no, B. Insulin no, C. Aspirin no, "
            "D. Paracetamol yes.") in chain["syn-1"]
    assert "Dengue is diagnosed with: A. NS1 antigen test yes, B. Blood smear no, C. Widal test no." in chain["syn-2"]
    assert "Dengue contraindicates: A. Paracetamol no, B. Aspirin yes, C. Fluids no" in chain["syn-3"]
    assert "Dengue is treated with Paracetamol. Paracetamol is a: A. Antibiotic no, B. Analgesic yes" in chain["syn-4"]
    rej = read_jsonl(tmp_path / "sft.rejects.jsonl")
    assert [r["id"] for r in rej] == ["real-1"] and "no candidate" in rej[0]["reasons"][0]
    # resume: a torn last line (a kill mid-write) is dropped, done ids are skipped, the missing one redone
    lines = open(out).read().splitlines(True)
    open(out, "w").writelines(lines[:3] + [lines[3][:40]])
    distill.main(argv)
    again = read_jsonl(out)
    assert sorted(r["id"] for r in again) == sorted(rows) and len(again) == len(RECORDS)
    assert len(read_jsonl(tmp_path / "sft.rejects.jsonl")) == 1


def test_check_reasons():
    r = RECORDS[1]
    good = "<think>Fever and rash point to Dengue, treated with Paracetamol, option D.</think>\n<answer>D</answer>"
    assert distill.check(good, r, 500) == []
    cases = {
        good.replace("<answer>D", "<answer>A"): "wrong answer: A instead of D",
        good.replace("</think>\n", ""): "malformed",
        good.replace("Fever", "As given, the answer is D. Fever"): "restates the hint: 'As given'",
        good.replace("Fever", "We are told the answer is D. Fever"): "restates the hint",
        good.replace("Fever", "x" * 500): "too long",
        good.replace("Dengue", "the disease"): "does not name the intermediate entity 'Dengue'",
    }
    for text, reason in cases.items():
        got = distill.check(text, r, 500)
        assert any(g.startswith(reason) for g in got), (reason, got)


# ------------------------------------------------------------------------------------------------------------
# a bad teacher behind a loopback OpenAI-compatible server

BAD = "<think>{t}</think>\n<answer>{L}</answer>"


def fake_reply(messages, n):
    """Depends on the item (a tag in the question) and the refinement round (the conversation length)."""
    user = messages[0]["content"]
    rnd = (len(messages) - 1) // 2
    if "TAG-wrong" in user:  # wrong answers at first; fixed once told why (round 1: backtracking)
        L = "A" if rnd == 0 else "D"
        return [BAD.format(t="Fever and rash suggest Dengue, treated with Paracetamol.", L=L)] * n
    if "TAG-broken" in user:  # never well-formed
        return ["The answer is D because Dengue is treated with Paracetamol."] * n
    if "TAG-hint" in user:  # always leans on the hint
        return [BAD.format(t="As given, the answer provided is Paracetamol for Dengue.", L="D")] * n
    if "TAG-mixed" in user:  # one overlong, one long and one short correct candidate: the short one is kept
        return [BAD.format(t="Dengue. " + "Paracetamol is used. " * 80, L="D"),
                BAD.format(t="Fever and rash point to Dengue; Dengue is treated with Paracetamol, option D.", L="D"),
                BAD.format(t="Dengue is treated with Paracetamol.", L="D")][:n]
    if "TAG-nohidden" in user:  # never names the hidden disease
        return [BAD.format(t="Paracetamol treats the fever, option D.", L="D")] * n
    raise AssertionError(user)


def test_bad_llm_teacher_is_refined_or_rejected(tmp_path):
    srv = FakeLLMServer(lambda messages, n, temperature: fake_reply(messages, n)).start()
    tags = ["wrong", "broken", "hint", "mixed", "nohidden"]
    recs = [dict(RECORDS[1], id=t, question=f"TAG-{t} A patient has fever and rash. Which drug?") for t in tags]
    write(tmp_path / "train.jsonl", recs)
    out = tmp_path / "sft.jsonl"
    args = ["--data", str(tmp_path / "train.jsonl"), "--teacher", srv.url, "--out", str(out), "--k", "3",
            "--rounds", "3", "--max-chars", "700", "--model-name", "fake-teacher"]
    distill.main(args)
    rows = {r["id"]: r for r in read_jsonl(out)}
    rej = {r["id"]: r for r in read_jsonl(tmp_path / "sft.rejects.jsonl")}
    assert sorted(rows) == ["mixed", "wrong"] and sorted(rej) == ["broken", "hint", "nohidden"]
    assert rows["wrong"]["meta"]["round"] == 1 and rows["mixed"]["meta"]["round"] == 0
    assert rows["mixed"]["meta"]["pass"] == 2 and "Dengue is treated with Paracetamol.</think>" in \
        rows["mixed"]["messages"][2]["content"]  # the shortest passing candidate
    assert rows["wrong"]["meta"]["teacher"] == "fake-teacher"
    assert all(r["messages"][2]["content"].endswith("<answer>D</answer>") for r in rows.values())
    assert any(x.startswith("malformed") for x in rej["broken"]["reasons"])
    assert any(x.startswith("restates the hint") for x in rej["hint"]["reasons"])
    assert rej["nohidden"]["reasons"] == ["does not name the intermediate entity 'Dengue'"]
    assert all(r["round"] == 3 for r in rej.values())
    log = [p["messages"] for p in srv.payloads]
    # the teacher saw the question with its gold answer, then its failed chain, the reasons and one strategy per
    # round in the paper's order
    first = next(m for m in log if "TAG-broken" in m[0]["content"] and len(m) == 1)
    assert "The correct answer is D (Paracetamol)" in first[0]["content"]
    convs = sorted((m for m in log if "TAG-broken" in m[0]["content"]), key=len)
    assert [len(m) for m in convs] == [1, 3, 3, 3]
    strategies = [m[2]["content"] for m in convs[1:]]
    for s, word in zip(strategies, ["Backtrack", "Explore alternative paths", "Self-correct"]):
        assert "malformed" in s and word in s
    wrong_fb = next(m for m in log if "TAG-wrong" in m[0]["content"] and len(m) == 3)
    assert "wrong answer: A instead of D" in wrong_fb[2]["content"] and wrong_fb[1]["role"] == "assistant"
    # resumable: a second run asks the teacher nothing
    n = srv.requests
    distill.main(args)
    srv.stop()
    assert srv.requests == n and len(read_jsonl(out)) == 2


def test_local_folder_teacher(tmp_path):
    """A local HF-format folder as the teacher (sampled with sampler.py): a random tiny model writes nothing
    usable, so every item goes through the refinement round and is rejected with its reasons."""
    import model as M
    tok = M.train_tokenizer([json.dumps(r) for r in RECORDS], str(tmp_path / "m"), vocab_size=300)
    M.init_model(str(tmp_path / "m"), len(tok), tokenizer=tok, hidden_size=32, intermediate_size=64,
                 num_attention_heads=2, num_key_value_heads=1)
    write(tmp_path / "train.jsonl", RECORDS[:2])
    distill.main(["--data", str(tmp_path / "train.jsonl"), "--teacher", str(tmp_path / "m"), "--out",
                  str(tmp_path / "sft.jsonl"), "--k", "2", "--rounds", "1", "--max-tokens", "8"])
    assert not (tmp_path / "sft.jsonl").exists()
    rej = read_jsonl(tmp_path / "sft.rejects.jsonl")
    assert [r["id"] for r in rej] == ["syn-0", "syn-1"] and all(r["round"] == 1 for r in rej)
    assert all(any(x.startswith("malformed") for x in r["reasons"]) for r in rej)
