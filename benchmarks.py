"""The public benchmark formats -> unified records (common.py), one loader per benchmark: what eval.py scores and
filter.py mixes into the training pool.

    load_benchmark("medqa", "medqa/test.jsonl", rejects) -> [{"id": "medqa-1", "source": "medqa", "question": ...,
        "options": {"A": ..., ...}, "answer": "C", "difficulty": None, "meta": {...}}, ...]
A row that cannot be read (a missing field, several gold letters, a duplicate id, ...) is skipped and appended to
`rejects` with its reason and row number: nothing is repaired by guessing.
"""
import argparse
import csv
import json
import math
import os
import re

from common import LETTERS, check_record, iter_jsonl

class Reject(Exception):
    """Raised with the reason by a loader, which turns one raw row (row number i, dict r) into a record."""


def _checked(rec):
    problem = check_record(rec)
    if problem:
        raise Reject(problem)
    return rec


def _rec(source, id, question, options, answer, **meta):
    """A unified record from parts; `options` is a list (lettered A, B, ...) or a dict letter -> text."""
    if isinstance(options, list):
        options = dict(zip(LETTERS, options))
    options = {k: (v.strip() if isinstance(v, str) else v) for k, v in options.items()}
    return _checked({"id": f"{source}-{id}", "source": source,
                     "question": question.strip() if isinstance(question, str) else question, "options": options,
                     "answer": answer, "difficulty": None, "meta": {k: v for k, v in meta.items() if v is not None}})


def _one_letter(label):
    """A gold answer given as "C" or ["C"]; anything else (several letters, empty) is rejected."""
    if isinstance(label, list) and len(label) == 1:
        label = label[0]
    if not isinstance(label, str) or label.strip().upper() not in LETTERS or len(label.strip()) != 1:
        raise Reject(f"answer must be one letter, got {label!r}")
    return label.strip().upper()


def _split_choices(question):
    """'stem\\nAnswer Choices: (A) x (B) y' -> ('stem', ['x', 'y']) (MedXpertQA eval input, converted MedMCQA)."""
    at = question.rfind("Answer Choices:")
    if at < 0:
        raise Reject("no 'Answer Choices:' block in question")
    block, marks = question[at + len("Answer Choices:"):], []
    for L in LETTERS:  # options in order: "(A) ", then "(B) " after it, ...
        j = block.find(f"({L}) ", marks[-1] + 4 if marks else 0)
        if j < 0:
            break
        marks.append(j)
    return question[:at].strip(), [block[a + 4:b].strip() for a, b in zip(marks, marks[1:] + [len(block)])]


def _csv_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        yield from enumerate(csv.DictReader(f), 2)  # row 1 is the header


def load_medqa(i, r, name):
    return _rec(name, i, r["question"], r["options"], _one_letter(r["answer_idx"]), step=r.get("meta_info"))


def load_medmcqa(i, r, name, zero_based=False):
    if "cop" not in r:  # the converted layout (MedXpertQA repo): options folded into the question, label ["A"]
        stem, opts = _split_choices(r["question"])
        return _rec(name, r.get("id", i), stem, opts, _one_letter(r["label"]), subject=r.get("subject_name"))
    lo = 0 if zero_based else 1  # original release: cop 1..4; HF export: cop 0..3 (name medmcqa_hf)
    if not isinstance(r["cop"], int) or not lo <= r["cop"] <= lo + 3:
        raise Reject(f"cop {r['cop']!r} outside {lo}..{lo + 3} ({'HF 0-based' if zero_based else 'original 1-based'}"
                     f"; use {'medmcqa' if zero_based else 'medmcqa_hf'} for the other release)")
    opts = [r["opa"], r["opb"], r["opc"], r["opd"]]
    return _rec(name, r.get("id", i), r["question"], opts, LETTERS[r["cop"] - lo], subject=r.get("subject_name"))


def load_medxpertqa(i, r, name):
    opts = r["options"]  # HF Text/test.jsonl: {A: ..}, label "X"; eval input: [{letter, content}], label ["X"]
    opts = opts if isinstance(opts, dict) else {o["letter"]: o["content"] for o in opts}
    stem = r["question"]
    if "Answer Choices:" in stem:  # either layout may end the question with the options again: keep the stem
        stem, listed = _split_choices(stem)
        if listed != [v.strip() for v in opts.values()]:
            raise Reject("the question's 'Answer Choices' block differs from its options")
    return _rec(name, r.get("id", i), stem, opts, _one_letter(r["label"]), task=r.get("medical_task"),
                body_system=r.get("body_system"), question_type=r.get("question_type"))


def load_mmlu_pro(i, r, name):
    category = name.split("_")[-1]  # mmlu_pro_biology -> biology
    if r.get("category") != category:
        return None  # another category: filtered, not rejected
    keep = [k for k, o in enumerate(r["options"]) if o.strip() != "N/A"]  # MMLU-Pro pads options with "N/A"
    if r["answer_index"] not in keep or LETTERS[r["answer_index"]] != r["answer"]:
        raise Reject(f"answer {r['answer']!r} / answer_index {r['answer_index']!r} inconsistent or N/A")
    return _rec(name, r.get("question_id", i), r["question"], [r["options"][k] for k in keep],
                LETTERS[keep.index(r["answer_index"])], src=r.get("src"))


def load_medbullets(i, r, name):
    opts = [r[k] for k in ("opa", "opb", "opc", "opd", "ope") if k in r]
    return _rec(name, i, r["question"], opts, _one_letter(r["answer_idx"]), link=r.get("link"))


def load_careqa(i, r, name):
    if all(isinstance(v, float) and math.isnan(v) for v in r.values()):
        raise Reject("all fields are NaN (empty row of a pandas export)")
    cop = r.get("cop")
    if not isinstance(cop, (int, float)) or cop != cop or cop != int(cop) or not 1 <= cop <= 4:
        raise Reject(f"cop {cop!r} is not an option number 1..4")
    opts = [r[f"op{k}"] for k in range(1, 5)]
    return _rec(name, r.get("unique_id") or i, r["question"], opts, LETTERS[int(cop) - 1],
                category=r.get("category"), year=r.get("year"))


def load_jmed(i, r, name):  # JMED's public format is unverified: accept the plausible variants, reject the rest
    opts = r.get("options", r.get("choices"))
    ans = r.get("answer", r.get("answer_idx", r.get("label")))
    if isinstance(ans, list) and len(ans) == 1:
        ans = ans[0]
    if isinstance(ans, int) and not isinstance(ans, bool) and isinstance(opts, list) and 0 <= ans < len(opts):
        ans = LETTERS[ans]
    return _rec(name, r.get("id", i), r.get("question", ""), opts if opts is not None else {}, _one_letter(ans))


def load_cmexam(i, r, name):
    lines = [ln.strip() for ln in (r.get("Options") or "").strip().split("\n") if ln.strip()]
    opts = {}
    for ln in lines:
        m = re.match(r"([A-Z])[\s.、:：]\s*(.*)", ln)
        if not m:
            raise Reject(f"field 'Options': line {ln[:30]!r} does not start with a letter")
        opts[m.group(1)] = m.group(2)
    ans = (r.get("Answer") or "").strip()
    if len(ans) != 1:
        raise Reject(f"field 'Answer' {ans!r} is not a single letter (multi-answer items are not single-choice)")
    return _rec(name, i, r.get("Question") or "", opts, ans)


def _pubmedqa(path, name):
    """ori_pqal.json (PMID -> record) as yes/no/maybe questions A/B/C with the abstract's contexts in the
    question. `pubmedqa`: all 1000 items (as the paper); `pubmedqa500`: the official test split, taken from
    test_ground_truth.json beside it."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    keep = None
    if name == "pubmedqa500":
        with open(os.path.join(os.path.dirname(path), "test_ground_truth.json"), encoding="utf-8") as f:
            keep = json.load(f)
    for n, (pmid, r) in enumerate(data.items(), 1):
        if keep is not None and pmid not in keep:
            continue
        label = keep[pmid] if keep is not None else r.get("final_decision")
        if label not in ("yes", "no", "maybe"):
            yield n, Reject(f"final_decision {label!r} is not yes/no/maybe")
            continue
        ctx = "\n".join(f"{lab}: {c}" if lab else c
                        for c, lab in zip(r["CONTEXTS"], list(r.get("LABELS") or []) + [None] * len(r["CONTEXTS"])))
        yield n, _rec(name, pmid, f"Context:\n{ctx}\n\nQuestion: {r['QUESTION']}", ["yes", "no", "maybe"],
                      "ABC"["yes no maybe".split().index(label)], year=r.get("YEAR"))


LOADERS = {"medqa": (load_medqa, iter_jsonl), "medmcqa": (load_medmcqa, iter_jsonl),
           "medmcqa_hf": (lambda i, r, n: load_medmcqa(i, r, n, zero_based=True), iter_jsonl),
           "medxpertqa": (load_medxpertqa, iter_jsonl), "mmlu_pro_biology": (load_mmlu_pro, iter_jsonl),
           "mmlu_pro_health": (load_mmlu_pro, iter_jsonl), "medbullets": (load_medbullets, _csv_rows),
           "careqa": (load_careqa, iter_jsonl), "jmed": (load_jmed, iter_jsonl),
           "cmexam": (load_cmexam, _csv_rows), "jsonl": (lambda i, r, n: _checked(r), iter_jsonl),
           "pubmedqa": (None, None), "pubmedqa500": (None, None)}


def name_path(spec):
    """'medqa=medqa/test.jsonl' -> ("medqa", "medqa/test.jsonl"): the argparse type of eval.py's --bench and
    filter.py's --public and --decontaminate, so a bad item is named in the usage error."""
    name, _, path = spec.partition("=")
    if not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {spec!r}")
    return name, path


def load_benchmark(name, path, rejects=None):
    """Unified records of benchmark `name` read from `path`. Rows that cannot be read are skipped and, if
    `rejects` is a list, appended to it as {"bench", "file", "row", "reason"}. Prints loaded vs rows in file."""
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(LOADERS))}")
    convert, rows = LOADERS[name]
    items = _pubmedqa(path, name) if name.startswith("pubmedqa") else rows(path)
    recs, bad, total, seen = [], [], 0, set()
    for i, r in items:
        total += 1
        try:
            if isinstance(r, Exception):  # a line that is not JSON (iter_jsonl), a PubMedQA label
                raise Reject(str(r))
            rec = r if convert is None else convert(i, r, name.replace("_hf", ""))
            if rec is None:
                continue
            if rec["id"] in seen:
                raise Reject(f"duplicate id {rec['id']!r}")
        except (Reject, KeyError, TypeError, AttributeError) as e:
            why = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            bad.append({"bench": name, "file": path, "row": i, "reason": why})
            continue
        seen.add(rec["id"])
        recs.append(rec)
    if rejects is not None:
        rejects.extend(bad)
    print(f"{name}: loaded {len(recs)} of {total} rows in {path} ({len(bad)} rejected)", flush=True)
    return recs
