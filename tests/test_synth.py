"""synth.py on a hand-made KG fixture (independent of kg.py): soundness of every item, split, rarity, CLI."""
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

import synth
from common import read_records, check_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_kg(d):
    """13 diseases over 20 overlapping symptoms, tests, drugs (with classes, mechanisms, contraindications),
    complications; D0-D2 and X0-X2 are 'common' (many inlinks). One edge is written tail-first on purpose."""
    ents, edges = [], []
    ent = lambda i, t, inl=1: ents.append({"id": i, "name": i.replace("_", " "), "type": t, "aliases": [],
                                           "inlinks": inl, "source": {"page": i, "revid": 1}})
    edge = lambda h, r, t: edges.append({"head": h, "relation": r, "tail": t,
                                         "source": {"page": h, "revid": 7, "field": r}})
    for i in range(13):
        ent(f"Disease_{i}", "disease", 100 if i < 3 else i % 3)
    for i in range(20):
        ent(f"Symptom_{i}", "symptom")
    for i in range(8):
        ent(f"Test_{i}", "test", 2)
    for i in range(15):
        ent(f"Drug_{i}", "drug", 50 if i < 3 else 1)
    for i in range(5):
        ent(f"Class_{i}", "drug_class"), ent(f"Mech_{i}", "mechanism")
    ent("Smoking", "other", 5)
    for i in range(12):
        D = f"Disease_{i}"
        for j in (i, i + 1, i + 3, i + 7):
            edge(D, "has_symptom", f"Symptom_{j % 20}")
        edge(D, "diagnosed_by", f"Test_{i % 8}")
        if i % 2:
            edge(D, "diagnosed_by", f"Test_{(i + 1) % 8}")
        edge(D, "treated_with", f"Drug_{i}")
        if i != 11:
            edge(D, "treated_with", f"Drug_{(i + 5) % 15}")
        edge(D, "has_complication", f"Disease_{(i + 4) % 12}")
        edge(f"Drug_{(i + 2) % 15}", "contraindicated_in", D)
    for j in (0, 1, 19):  # Disease_12 shares {Symptom_0, Symptom_1} with Disease_0: that pair is ambiguous
        edge("Disease_12", "has_symptom", f"Symptom_{j}")
    edge("Disease_12", "treated_with", "Drug_3")
    edge("Drug_14", "treated_by", "Disease_11")  # tail-first: must be read as Disease_11 treated_by Drug_14
    edge("Disease_0", "risk_factor", "Smoking")
    edge("Disease_5", "risk_factor", "Smoking")
    for j in range(15):
        edge(f"Drug_{j}", "drug_class", f"Class_{j % 5}")
        edge(f"Drug_{j}", "mechanism", f"Mech_{(j * 2) % 5}")
    os.makedirs(d, exist_ok=True)
    for name, rows in (("entities", ents), ("edges", edges)):
        with open(os.path.join(d, name + ".jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return ents, edges


def kg_truth(ents, edges):
    """What the KG says, computed here from the raw rows (by name), independently of synth.py."""
    name, etype = {e["id"]: e["name"] for e in ents}, {e["id"]: e["type"] for e in ents}
    rel = defaultdict(set)
    for e in edges:
        if e["head"] not in name or e["tail"] not in name:
            continue
        h, r, t = e["head"], e["relation"], e["tail"]
        if r in ("treated_by", "treated_with") and etype[t] == "disease" and etype[h] != "disease":
            h, t = t, h  # written tail-first
        rel[r].add((name[h], name[t]))
    adj = defaultdict(set)
    for r, pairs in rel.items():
        for h, t in pairs:
            adj[r, h].add(t)
    out = lambda r, h: adj[r, h]
    treats = lambda d: out("treated_with", d) | out("treated_by", d)
    correct = {
        "diagnosis": lambda d: {d},
        "test": lambda d: out("diagnosed_by", d),
        "treatment": treats,
        "complication": lambda d: out("has_complication", d) | {d},
        "contraindication": lambda d: {x for x, dd in rel["contraindicated_in"] if dd == d},
        "drug_class": lambda d: set().union(*[out("drug_class", x) for x in treats(d)]),
        "mechanism": lambda d: set().union(*[out("mechanism", x) for x in treats(d)]),
    }
    contra = lambda c: {x for x, dd in rel["contraindicated_in"] if dd == c}
    # comorbidity: the right answer treats d and is contraindicated in the stated condition c; no option may be
    # contraindicated in c or in d at all (that would be a second defensible answer)
    correct["comorbidity"] = lambda d, c: (treats(d) & contra(c), treats(d) & (contra(c) | contra(d)),
                                           contra(c) | contra(d))
    findings = lambda d: out("has_symptom", d) | out("risk_factor", d)
    return correct, findings, {e["name"]: e["type"] for e in ents}


@pytest.fixture(scope="module")
def kg(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("kg"))
    ents, edges = make_kg(d)
    return d, ents, edges


def check_items(items, ents, edges):
    """Every item is sound according to the raw KG rows; returns the family counts."""
    correct, findings, etype = kg_truth(ents, edges)
    diseases = [e["name"] for e in ents if e["type"] == "disease"]
    fsets = {x: findings(x) for x in diseases}
    strip = lambda name: re.sub(r"\s*\([^()]*\)$", "", name)  # "Anorexia (symptom)" is stated as "anorexia"
    named = lambda name, text: re.search(r"(?<!\w)" + re.escape(name.lower()) + r"(?!\w)", text.lower())
    fams = Counter()
    for q in items:
        assert check_record(q) is None, check_record(q)
        m, opts = q["meta"], list(q["options"].values())
        fams[m["family"]] += 1
        assert len(opts) == 4 and len({o.lower() for o in opts}) == 4  # distinct options
        assert q["options"][q["answer"]] == m["answer_name"]  # the answer is the masked entity
        disease = m["hidden"] or m["answer_name"]
        assert 2 <= len(m["given"]) <= 4 and set(m["given"]) <= findings(disease)
        # the given set identifies the disease: no other disease has all given findings
        assert [x for x in diseases if set(m["given"]) <= fsets[x]] == [disease]
        if m["family"] == "comorbidity":
            on_path, right_set, right = correct["comorbidity"](disease, m["comorbidity"])
            assert m["answer_name"] in on_path and strip(m["comorbidity"]).lower() in q["question"].lower()
            assert set(m["correct"]) == right_set
        else:
            right = correct[m["family"]](disease)
        assert m["answer_name"] in right and set(m["correct"]) <= right
        for k, o in q["options"].items():
            if k != q["answer"]:
                assert etype[o] == etype[m["answer_name"]], (o, m)  # same type as the answer
                assert o not in right, (o, m)  # never a second right answer
        assert m["hops"] == synth.FAMILIES[m["family"]] and len(m["path"]) == len(m["given"]) + m["hops"] - 1
        assert len(m["provenance"]) == len(m["path"])
        assert q["difficulty"] == "difficult" if m["hops"] == 3 else q["difficulty"] in (
            ("easy", "moderate") if m["hops"] == 1 else ("moderate", "difficult"))
        for g in m["given"]:  # every given finding is stated (without a "(disambiguation)" suffix)
            assert strip(g).lower() in q["question"].lower()
        assert not named(strip(m["answer_name"]), q["question"]) and not named(strip(disease), q["question"])
    return fams


def test_every_item_is_sound(kg):
    d, ents, edges = kg
    s, stats = synth.synthesize(d, 400, 150, seed=1)
    train, test = s["train"], s["test"]
    assert len(train) == 400 and len(test) == 150
    fams = check_items(train + test, ents, edges)
    assert all(p["revid"] == 7 for q in train for p in q["meta"]["provenance"])
    assert set(fams) == set(synth.FAMILIES), fams  # every family occurs
    # the tail-first edge was flipped: Drug_14 treats Disease_11
    _, out = synth.load_kg(d)
    assert "Drug_14" in out["treated_by"]["Disease_11"] and "Drug_14" not in out["treated_by"]


def test_distractors_say_why_they_were_chosen(kg):
    """meta.distractors: each wrong option once, with why it was a candidate; a rival disease's shared findings
    are findings the question gives."""
    s, _ = synth.synthesize(kg[0], 300, 0, seed=2)
    whys = Counter()
    for q in s["train"]:
        dis = q["meta"]["distractors"]
        assert sorted(x["name"] for x in dis) == sorted(v for k, v in q["options"].items() if k != q["answer"])
        for x in dis:
            m = re.search(r"rival disease (.+), which also has (.+?)( \(per the KG\))?$", x["why"])
            if m:
                assert all(f in q["meta"]["given"] for f in re.split(r", | and ", m.group(2))), x
            whys[x["why"].split(" ")[0] if not m else "rival"] += 1
    assert whys["rival"] > 0 and whys["same"] > 0, whys  # competing hypotheses first, random ones of the type


def test_split_disjoint_balanced_deterministic(kg):
    d = kg[0]
    s, stats = synth.synthesize(d, 400, 200, seed=3, val_n=60)
    train, test, val = s["train"], s["test"], s["val"]
    key = lambda q: (q["meta"]["family"], frozenset(q["meta"]["given"]))
    ktr, kte, kva = [key(q) for q in train], [key(q) for q in test], [key(q) for q in val]
    assert len(set(ktr + kte + kva)) == len(ktr) + len(kte) + len(kva) == 660  # no instance in two splits
    for split in (train, test, val):
        pos = Counter(q["answer"] for q in split)
        assert max(pos[x] for x in "ABCD") - min(pos[x] for x in "ABCD") <= 1, pos  # balanced over A..D
    assert synth.synthesize(d, 400, 200, seed=3, val_n=60)[0] == s
    other = synth.synthesize(d, 400, 200, seed=4, val_n=60)
    assert [q["id"] for q in test] != [q["id"] for q in other[0]["test"]]
    assert stats["supported_instances"]["total"] >= 600


def test_rarity_weighting_shifts_answers(kg):
    d = kg[0]
    uni = synth.synthesize(d, 300, 0, seed=0, alpha=0.0, hop_weight=1.0)[1]
    rare = synth.synthesize(d, 300, 0, seed=0, alpha=1.5, hop_weight=1.0)[1]
    u, r = uni["sampled"]["disease_inlinks_mean"], rare["sampled"]["disease_inlinks_mean"]
    assert r < 0.5 * u, (u, r)  # common diseases (100 inlinks) are drawn much less often
    hop = synth.synthesize(d, 300, 0, seed=0, alpha=0.0, hop_weight=4.0)[1]
    assert hop["sampled"]["hops"].get(3, 0) > uni["sampled"]["hops"].get(3, 0) + 0.1


def test_llm_rewrite_rejects_dropped_facts_and_leaks(kg, tmp_path):
    from fake_llm_server import FakeLLMServer
    train = synth.synthesize(kg[0], 3, 0, seed=0, families=["treatment"])[0]["train"]
    m = [q["meta"] for q in train]
    replies = ["A patient with " + m[0]["given"][0] + ". Which drug?",  # drops the other findings
               "Known " + m[1]["hidden"] + ": " + ", ".join(m[1]["given"]) + ". Which drug?",  # names the disease
               "Vignette: " + ", ".join(m[2]["given"]) + ". Which drug?"]  # keeps every finding, names nothing

    def reply(messages, n, temperature):
        return [next(r for q, r in zip(train, replies) if q["question"] in messages[-1]["content"])] * n
    before = [q["question"] for q in train]
    with FakeLLMServer(reply) as srv:
        assert synth.llm_rewrite(train, srv.url, cache_dir=str(tmp_path / "cache")) == 1
    assert [q["question"] for q in train[:2]] == before[:2]
    assert train[2]["question"] == replies[2] and train[2]["meta"]["template_question"] == before[2]


def test_bad_kg_row_names_file_row_and_field(tmp_path):
    make_kg(str(tmp_path))
    rows = (tmp_path / "entities.jsonl").read_text().splitlines()
    rows[4] = json.dumps(dict(json.loads(rows[4]), name=""))
    (tmp_path / "entities.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"entities.jsonl:5: field 'name' must be a non-empty string"):
        synth.synthesize(str(tmp_path), 10, 5)


def test_cli_writes_records_and_stats(kg, tmp_path):
    out = tmp_path / "synth"
    r = subprocess.run([sys.executable, "synth.py", "--kg", kg[0], "--out", str(out), "--n", "120",
                        "--test-n", "40", "--val-n", "20", "--seed", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(read_records(out / "train.jsonl")) == 120 and len(read_records(out / "test.jsonl")) == 40
    assert len(read_records(out / "val.jsonl")) == 20
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["sampled"]) >= {"family", "hops", "answer_inlinks_mean"} and "uniform" in stats


SAMPLE = os.path.join(ROOT, "data", "sample_wiki.xml")


@pytest.mark.skipif(not (os.path.exists(SAMPLE) and os.path.exists(os.path.join(ROOT, "kg.py"))),
                    reason="needs kg.py and the shipped sample dump")
def test_on_the_shipped_sample_kg(tmp_path):
    """The real thing: kg.py on data/sample_wiki.xml, then synth; every item sound; enough instances for the
    tiny pipeline (>= 1,000 held out); rarity weighting lowers the answers' mean inlinks vs uniform."""
    r = subprocess.run([sys.executable, "kg.py", "--dump", SAMPLE, "--out", str(tmp_path / "kg")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ents = [json.loads(x) for x in open(tmp_path / "kg" / "entities.jsonl")]
    edges = [json.loads(x) for x in open(tmp_path / "kg" / "edges.jsonl")]
    s, stats = synth.synthesize(str(tmp_path / "kg"), 1500, 1000, seed=0)
    train, test = s["train"], s["test"]
    assert len(test) == 1000 and len(train) == 1500 and stats["supported_instances"]["total"] >= 5000
    fams = check_items(train + test, ents, edges)
    assert len(fams) >= 6, fams
    uni = synth.synthesize(str(tmp_path / "kg"), 1500, 0, seed=0, alpha=0.0, hop_weight=1.0)[1]
    assert stats["sampled"]["disease_inlinks_mean"] < 0.9 * uni["sampled"]["disease_inlinks_mean"]
