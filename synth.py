"""KG-guided question synthesis (Fleming-R1, arXiv 2509.15279, sec. 3.1 "Reasoning-Oriented Data Strategy").

Reads  kg.py's KG_DIR/entities.jsonl + edges.jsonl.
Writes OUT/{train,test,val}.jsonl (unified records, source "synthetic", options = KG entity names; meta: family,
       hops, path, given, hidden, answer_name, correct (every answer the KG accepts), provenance, rarity,
       distractors: [{name, why}], why each wrong option was a candidate) and
       OUT/stats.json.

A question is a typed KG path with part of it masked: 2-4 findings of a disease (sometimes one risk factor) are
given; the disease is asked (diagnosis, 1 hop) or hidden while a fact one or two hops further is asked: its test,
treatment, complication or contraindicated drug (2 hops), a treating drug's class or mechanism, or the treating drug
contraindicated by a known condition (comorbidity, 3 hops). No other disease has all the given findings; no
distractor is in the item's correct set; distractors come first from competing hypotheses (the paper's
"relation-preserving perturbation"). Rare entities are favoured (the paper's "less common diseases and drugs"): a
family with probability hop_weight**(hops-1), then a candidate with weight prod 1/(1+inlinks)**alpha. Instances
(family, given set) are unique, so no two splits share one.

Deliberate departures from the paper:
  1. The questions are templates, not an LLM's vignettes; --llm rewrites them, keeping only rewrites that keep every
     finding and name neither the answer nor the hidden disease.
  2. Every split gets tiers from hops x rarity (common.difficulty_heuristic), with one cut for all splits.
  3. A validation split (--val-n), disjoint from train and test, for choosing RL checkpoints.
"""
import argparse
import bisect
import hashlib
import itertools
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict

from common import LETTERS, atomic_write, difficulty_heuristic, join, load_kg, parse_with_preset, plain, write_jsonl

TREATS = ("treated_with", "treated_by")
FAMILIES = {"diagnosis": 1, "test": 2, "treatment": 2, "complication": 2, "contraindication": 2,
            "drug_class": 3, "mechanism": 3, "comorbidity": 3}

# several phrasings per family; {f} = the given findings in plain words
STEMS = ["A patient presents with {f}.", "A patient is seen with {f}.", "A patient has {f}.",
         "On examination, a patient shows {f}.", "A clinician evaluates a patient who has {f}."]
ASKS = {
    "diagnosis": ["What is the most likely diagnosis?", "Which condition best explains these findings?",
                  "Which disease is the most likely cause?"],
    "test": ["Which test is used to diagnose the most likely condition?",
             "Which investigation helps confirm the most likely diagnosis?",
             "Which of the following is used in the diagnosis of this patient's condition?"],
    "treatment": ["Which of the following is used to treat the most likely condition?",
                  "Which treatment is appropriate for this patient's most likely diagnosis?",
                  "The most likely condition is treated with which of the following?"],
    "complication": ["Which of the following is a recognised complication of the most likely condition?",
                     "If untreated, the most likely condition can lead to which of the following?",
                     "Which complication is associated with this patient's most likely diagnosis?"],
    "contraindication": ["Which drug is contraindicated in a patient with the most likely condition?",
                         "Which of the following medications should be avoided given the most likely diagnosis?",
                         "In this patient's most likely condition, which drug is contraindicated?"],
    "drug_class": ["A drug used to treat the most likely condition belongs to which drug class?",
                   "Which drug class contains a medication used for the most likely diagnosis?",
                   "A medication for this patient's most likely condition is a member of which class?"],
    "comorbidity": ["Which drug used for the most likely condition is contraindicated given the patient's {c}?",
                    "Because of the known {c}, which medication for the most likely condition should be avoided?",
                    "Given the coexisting {c}, which treatment of the most likely diagnosis is contraindicated?"],
    "mechanism": ["A drug used to treat the most likely condition acts through which target or mechanism?",
                  "Which of the following is involved in the mechanism of action of a drug used for the most "
                  "likely diagnosis?",
                  "The mechanism of action of a medication for this patient's condition involves which of the "
                  "following?"],
}
RISK = [", with a history of {r}", "; a known risk factor is {r}", ", and the history includes {r}"]
TINY = dict(  # --tiny: the tiny CPU run (run_tiny.sh)
    n=7000, test_n=1200, val_n=1000,  # test: paired gains of ~1 point stand out (SE ~0.7); val: checkpoint choice
    hop_weight=0.5,  # each difficulty tier gets a sizeable share of the test split
    num_options=6,  # fewer lucky answers: 1 in 6 by chance (MedXpertQA has 10)
)


def rarity(ent, alpha):
    return 1.0 / (1.0 + ent.get("inlinks", 0)) ** alpha


def findings_of(d, out):
    """[(entity id, relation)] of disease d: symptoms, then risk factors."""
    return [(s, "has_symptom") for s in sorted(out["has_symptom"].get(d, {}))] + \
           [(s, "risk_factor") for s in sorted(out["risk_factor"].get(d, {})) if s not in out["has_symptom"].get(d, {})]


def unique_subsets(d, fset, has, rng, max_per_size=2000):
    """Given-sets of disease d (2-4 findings, at most one of them a risk factor) that no other disease also has in
    full (has: finding -> diseases): {size: [tuple of (id, rel)]}, large combinatorics subsampled."""
    res = {}
    for k in (2, 3, 4):
        picked = []
        for c in itertools.combinations(fset[d], k):
            if sum(r == "risk_factor" for _, r in c) > 1:
                continue
            if len(set.intersection(*[has[f] for f, _ in c])) > 1:
                continue  # another disease has every given finding: two right diagnoses
            picked.append(c)
            if len(picked) >= max_per_size * 4:
                break
        if len(picked) > max_per_size:
            picked = rng.sample(picked, max_per_size)
        if picked:
            res[k] = picked
    return res


def answers(family, d, out, ents):
    """[(answer id, path edges [(h, rel, t)], correct set)] of a family for hidden/asked disease d."""
    treats = sorted(set().union(*[out[r].get(d, {}) for r in TREATS]))
    drugs = [x for x in treats if ents[x]["type"] == "drug"]
    if family == "diagnosis":
        return [(d, [], {d})]
    if family == "test":
        c = set(out["diagnosed_by"].get(d, {}))
        return [(t, [(d, "diagnosed_by", t)], c) for t in sorted(c)]
    if family == "treatment":
        rel = {t: r for r in TREATS for t in out[r].get(d, {})}
        return [(t, [(d, rel[t], t)], set(treats)) for t in treats]
    if family == "complication":
        c = set(out["has_complication"].get(d, {})) | {d}
        return [(t, [(d, "has_complication", t)], c) for t in sorted(c - {d})]
    contra = lambda y: {x for x, tails in out["contraindicated_in"].items() if y in tails}
    if family == "contraindication":
        c = contra(d)
        return [(x, [(x, "contraindicated_in", d)], c) for x in sorted(c)]
    via = lambda x: "treated_with" if x in out["treated_with"].get(d, {}) else "treated_by"
    if family == "comorbidity":
        return [(x, [(d, via(x), x), (x, "contraindicated_in", C)], contra(C) | contra(d))
                for x in drugs for C in sorted(out["contraindicated_in"].get(x, {})) if C != d]
    # drug_class / mechanism: any class/mechanism of any drug that treats d is correct
    c = set().union(*[out[family].get(x, {}) for x in drugs])
    return [(t, [(d, via(x), x), (x, family, t)], c) for x in drugs for t in sorted(out[family].get(x, {}))]


def build_candidates(ents, out, families, alpha, hop_weight):
    """All (family, disease, answer, path, correct) candidates with their sampling weights."""
    fset = {d: findings_of(d, out) for d, e in ents.items() if e["type"] == "disease"}
    fset = {d: f for d, f in fset.items() if sum(r == "has_symptom" for _, r in f) >= 1 and len(f) >= 2}
    cands = []
    for fam in families:
        of_fam = [{"family": fam, "disease": d, "answer": a, "path": path, "correct": correct,
                   "inlinks": ents[a].get("inlinks", 0), "d_inlinks": ents[d].get("inlinks", 0),
                   "w": rarity(ents[a], alpha) * (rarity(ents[d], alpha) if a != d else 1.0)}
                  for d in sorted(fset) for a, path, correct in answers(fam, d, out, ents)]
        total = sum(c["w"] for c in of_fam)
        for c in of_fam:  # the family's total mass is hop_weight**(hops-1); rarity shares it out
            c["w"] *= hop_weight ** (FAMILIES[fam] - 1) / total
        cands += of_fam
    return fset, cands


# a distractor drawn from a rival disease along the question's path, in words (meta.distractors[i].why)
OF_RIVAL = {"test": "a test for", "treatment": "a treatment of", "complication": "a complication of",
            "contraindication": "a drug contraindicated in", "drug_class": "the class of a drug for",
            "mechanism": "the mechanism of a drug for", "comorbidity": "a drug for"}


def distractors(c, given, idx, out, ents, k, rng):
    """k names of the answer's type, not correct per the KG: competing hypotheses first, then any of the type.
    -> (names, whys): whys[i] says why names[i] was a candidate (recorded only; it changes no choice)."""
    atype, fam, d = ents[c["answer"]]["type"], c["family"], c["disease"]
    shared = Counter(dd for f, _ in given for dd in idx["has"][f] if dd != d)
    rivals = sorted(shared, key=lambda dd: (-shared[dd], dd))  # most shared findings first
    pool = []
    if fam in ("contraindication", "comorbidity"):  # drugs that treat this very disease: the closest lures
        pool = [a for a, _, _ in answers("treatment", d, out, ents)]
    why = {a: f"a treatment of {ents[d]['name']}, the disease itself" for a in pool}  # first source wins, as below
    for dd in rivals:  # the rival disease itself, or what the KG says about it along the same path
        if (fam, dd) not in idx["answers"]:  # memo: rivals recur across items
            idx["answers"][fam, dd] = [a for a, _, _ in answers(fam, dd, out, ents)]
        alts = list(idx["answers"][fam, dd])
        rng.shuffle(alts)
        pool += alts
        both = [ents[f]["name"] for f, _ in given if dd in idx["has"][f]]  # for report.py: why this lure
        rival = f"rival disease {ents[dd]['name']}, which also has {join(both)}"
        for a in alts:
            why.setdefault(a, rival if fam == "diagnosis" else f"{OF_RIVAL[fam]} the {rival} (per the KG)")
    typed = idx["bytype"][atype]
    rest = rng.sample(typed, min(len(typed), 8 * k + 32))  # enough almost always; the full list if not
    names, whys, seen = [], [], {ents[x]["name"].strip().lower() for x in list(c["correct"]) + [f for f, _ in given]}
    def everything():  # only shuffled if the cheaper sources run dry
        yield from rng.sample(typed, len(typed))
    for x in itertools.chain(pool, rest, everything()):
        nm = ents[x]["name"]
        if x in c["correct"] or ents[x]["type"] != atype or nm.strip().lower() in seen:
            continue
        seen.add(nm.strip().lower())
        names.append(nm)
        whys.append(why.get(x, f"same type as the answer ({atype}), drawn at random"))
        if len(names) == k:
            return names, whys
    return None, None  # not enough same-type entities: the candidate is skipped


def render(fam, given, ents, rng, comorbid=None):
    syms = [plain(ents[f]["name"]) for f, r in given if r == "has_symptom"]
    risks = [plain(ents[f]["name"]) for f, r in given if r == "risk_factor"]
    f = join(syms) + (rng.choice(RISK).format(r=risks[0]) if risks else "")
    return rng.choice(STEMS).format(f=f) + " " + rng.choice(ASKS[fam]).format(c=comorbid and plain(comorbid))


def mentions(text, name):
    return re.search(r"(?<!\w)" + re.escape(name.lower()) + r"(?!\w)", text.lower()) is not None


def make_item(c, given, ents, idx, out, num_options, rng):
    """(record, None) or (None, why not)."""
    a, d, fam = c["answer"], c["disease"], c["family"]
    comorbid = ents[c["path"][-1][2]]["name"] if fam == "comorbidity" else None
    question = render(fam, given, ents, rng, comorbid)
    if any(mentions(question, plain(ents[x]["name"])) for x in {a, d}):
        return None, "answer_or_hidden_named_in_findings"  # e.g. complication "anemia" given as a symptom
    dis, whys = distractors(c, given, idx, out, ents, num_options - 1, rng)
    if dis is None:
        return None, "too_few_distractors"
    edges = [(d, r, f) for f, r in given] + c["path"]  # the given findings are edges of the disease too
    right = c["correct"]  # for comorbidity that set is what no option may be; the right ones also treat d
    if fam == "comorbidity":
        right = right & set().union(*[out[r].get(d, {}) for r in TREATS])
    # the id names the instance, family + given set (phrasing and option order do not make a new one)
    key = fam + "|" + "|".join(sorted(f for f, _ in given))
    return {"id": "syn-" + hashlib.sha1(key.encode()).hexdigest()[:12], "source": "synthetic",
            "question": question, "options": None, "answer": None, "difficulty": None,
            "meta": {"family": fam, "hops": FAMILIES[fam],
                     "path": [{"head": ents[h]["name"], "relation": r, "tail": ents[t]["name"]} for h, r, t in edges],
                     "given": [ents[f]["name"] for f, _ in given],
                     "hidden": None if fam == "diagnosis" else ents[d]["name"], "comorbidity": comorbid,
                     "answer_name": ents[a]["name"], "answer_type": ents[a]["type"],
                     "correct": sorted(ents[x]["name"] for x in right),
                     "provenance": [dict(out[r][h][t], head=ents[h]["name"], relation=r, tail=ents[t]["name"])
                                    for h, r, t in edges],
                     "rarity": {"answer_inlinks": ents[a].get("inlinks", 0),
                                "disease_inlinks": ents[d].get("inlinks", 0), "weight": c["w"]},
                     "distractors": [{"name": n, "why": w} for n, w in zip(dis, whys)]},
            "_opts": [ents[a]["name"]] + dis}, None


def place_answers(items, rng):
    """Options shuffled with the answer position balanced over A..: position i%k for a shuffled i."""
    k = len(items[0]["_opts"]) if items else 0
    pos = [i % k for i in range(len(items))]
    rng.shuffle(pos)
    for it, p in zip(items, pos):
        ans, *dis = it.pop("_opts")
        rng.shuffle(dis)
        dis.insert(p, ans)
        it["options"] = {LETTERS[i]: o for i, o in enumerate(dis)}
        it["answer"] = LETTERS[p]
    return items


def synthesize(kg_dir, n, test_n, seed=0, alpha=1.0, hop_weight=2.0, num_options=4, families=None, val_n=0):
    """-> ({"train": [...], "test": [...], "val": [...]}, stats): val (val_n items, for checkpoint selection) and
    test are disjoint from each other and from train. Deterministic for (KG, arguments)."""
    rng = random.Random(seed)
    ents, out = load_kg(kg_dir)
    families = families or list(FAMILIES)
    fset, cands = build_candidates(ents, out, families, alpha, hop_weight)
    idx = {"has": defaultdict(set), "bytype": defaultdict(list), "answers": {}}
    for d in sorted(fset):
        for f, _ in fset[d]:
            idx["has"][f].add(d)
    for e in sorted(ents):
        idx["bytype"][ents[e]["type"]].append(e)
    subsets = {d: unique_subsets(d, fset, idx["has"], random.Random(seed)) for d in sorted(fset)}
    left, supported = {}, Counter()  # the remaining given-sets of each (family, disease); a draw pops one
    for fam, d in dict.fromkeys((c["family"], c["disease"]) for c in cands):
        left[fam, d] = {k: list(v) for k, v in subsets[d].items()}
        for v in left[fam, d].values():
            rng.shuffle(v)
        supported[fam] += sum(map(len, left[fam, d].values()))
    cands = [c for c in cands if left[(c["family"], c["disease"])]]
    items, skipped = [], Counter()
    weights = [c["w"] for c in cands]
    group = defaultdict(list)  # (family, disease) -> candidate indices sharing its given-sets
    for j, c in enumerate(cands):
        group[(c["family"], c["disease"])].append(j)
    cum, dead = list(itertools.accumulate(weights)) or [0.0], 0.0
    while len(items) < n + test_n + val_n and cum[-1] > 0:
        if dead > 0.5 * cum[-1]:  # lazy deletion: rebuild the cumulative weights when half the mass is dead
            cum, dead = list(itertools.accumulate(weights)), 0.0
            continue  # back to the loop test: it stops if no mass is left, else the draw goes ahead (dead is 0 now)
        i = min(bisect.bisect(cum, rng.random() * cum[-1]), len(cum) - 1)
        if weights[i] == 0:
            continue
        c = cands[i]
        by_size = left[(c["family"], c["disease"])]
        sizes = [k for k, v in by_size.items() if v]
        if not sizes:  # this (family, disease) has no given-set left: stop drawing its candidates
            for j in group[(c["family"], c["disease"])]:
                dead, weights[j] = dead + weights[j], 0.0
            continue
        given = by_size[rng.choice(sizes)].pop()
        it, why = make_item(c, given, ents, idx, out, num_options, rng)
        if it is None:
            skipped[why] += 1
            if why == "too_few_distractors":
                dead, weights[i] = dead + weights[i], 0.0
            continue
        items.append(it)
    rng.shuffle(items)
    difficulty_heuristic(items)  # one hops x rarity cut for all splits, so every split has tiers
    test, val = place_answers(items[:test_n], rng), place_answers(items[test_n:test_n + val_n], rng)
    train = place_answers(items[test_n + val_n:], rng)
    if len(items) < n + test_n + val_n:
        print(f"synth: the KG gave only {len(items)} instances (asked {n}+{test_n}+{val_n}); the test and "
              f"validation splits are filled first", file=sys.stderr)
    stats = report(train, test, cands, supported, skipped, dict(seed=seed, alpha=alpha, hop_weight=hop_weight))
    stats["n_val"] = len(val)
    stats["difficulty"] = {name: dict(Counter(q["difficulty"] for q in split))
                           for name, split in (("train", train), ("test", test), ("val", val))}
    return {"train": train, "test": test, "val": val}, stats


def report(train, test, cands, supported, skipped, args):
    """Sampled distributions vs uniform sampling over the same candidates."""
    allq = train + test
    mean = lambda xs: round(sum(xs) / max(1, len(xs)), 3)
    frac = lambda cnt: {k: round(v / max(1, sum(cnt.values())), 3) for k, v in sorted(cnt.items())}
    fams = dict.fromkeys(c["family"] for c in cands)  # uniform: alpha=0, hop_weight=1, each family equally likely
    uniform = lambda key: mean([mean([c[key] for c in cands if c["family"] == f]) for f in fams])
    return {"args": args, "n_train": len(train), "n_test": len(test),
            "supported_instances": dict(supported, total=sum(supported.values())),
            "candidates": len(cands), "skipped": dict(skipped),
            "sampled": {"family": frac(Counter(q["meta"]["family"] for q in allq)),
                        "hops": frac(Counter(q["meta"]["hops"] for q in allq)),
                        "answer_inlinks_mean": mean([q["meta"]["rarity"]["answer_inlinks"] for q in allq]),
                        "disease_inlinks_mean": mean([q["meta"]["rarity"]["disease_inlinks"] for q in allq])},
            "uniform": {"family": frac(Counter({f: 1 for f in fams})),
                        "hops": frac(Counter(FAMILIES[f] for f in fams)),
                        "answer_inlinks_mean": uniform("inlinks"), "disease_inlinks_mean": uniform("d_inlinks")},
            "answer_position": dict(sorted(Counter(q["answer"] for q in allq).items()))}


def llm_rewrite(items, spec, model_name=None, cache_dir=None):
    """Optional vignette rewrite; a rewrite is rejected (template kept) if it drops a given finding or names
    the answer or the hidden disease. Returns the number accepted."""
    from common import make_llm
    llm = make_llm(spec, model_name=model_name, cache_dir=cache_dir)
    ask = ("Rewrite this exam question as a short clinical vignette (2-4 sentences). Keep every finding, "
           "do not name the diagnosis or the answer, keep the final question. Reply with the vignette only.\n\n")
    convs = [[{"role": "user", "content": ask + it["question"]}] for it in items]
    ok = 0
    for it, (text,) in zip(items, llm(convs, n=1, temperature=0.0, max_tokens=256)):
        low = text.lower()
        bad = [plain(it["meta"]["answer_name"])] + ([plain(it["meta"]["hidden"])] if it["meta"]["hidden"] else [])
        keep = it["meta"]["given"] + [x for x in [it["meta"].get("comorbidity")] if x]
        if text.strip() and all(plain(g).lower() in low for g in keep) and \
                not any(mentions(text, b) for b in bad):
            it["meta"]["template_question"], it["question"] = it["question"], text.strip()
            ok += 1
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kg", required=True, help="kg.py output folder")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=100000, help="train questions")
    p.add_argument("--test-n", type=int, default=2000, help="held-out test questions")
    p.add_argument("--val-n", type=int, default=0, help="validation questions (val.jsonl), for checkpoint choice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=1.0, help="rarity weight 1/(1+inlinks)**alpha; 0 = uniform")
    p.add_argument("--hop-weight", type=float, default=2.0, help="weight factor per extra hop")
    p.add_argument("--num-options", type=int, default=4)
    p.add_argument("--llm", default=None, help="URL or model folder for the optional vignette rewrite")
    p.add_argument("--llm-model", default=None)
    a = parse_with_preset(p, argv, TINY)
    splits, stats = synthesize(a.kg, a.n, a.test_n, a.seed, a.alpha, a.hop_weight, a.num_options, val_n=a.val_n)
    if a.llm:
        stats["llm_rewrites_accepted"] = llm_rewrite(sum(splits.values(), []), a.llm, a.llm_model,
                                                     os.path.join(a.out, "llm_cache"))
    for name, items in splits.items():
        if items or name != "val":  # no val.jsonl without --val-n
            write_jsonl(os.path.join(a.out, f"{name}.jsonl"), items)
    atomic_write(os.path.join(a.out, "stats.json"), json.dumps(stats, indent=1))
    shown = ("n_train", "n_test", "n_val", "supported_instances", "sampled", "uniform")
    print(json.dumps({k: stats[k] for k in shown}))


if __name__ == "__main__":
    main()
