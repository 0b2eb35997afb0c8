"""eval.py: accuracy of any model on the paper's medical benchmarks, with one answer rule (common.extract_answer).

Reads each benchmark in its public format (loaders below), asks the model with common.build_messages (reason in
<think>, answer the letter in <answer>, as in Fleming-R1 (arXiv 2509.15279) Table 3), and writes to --out:
  predictions.jsonl  one row per item and sample: bench, id, sample, output, pred, answer, correct, well_formed
  rejects.jsonl      rows of the benchmark files that could not be read, with the reason
  results.json/.md   per-benchmark accuracy (mean over n samples, standard error over items), format rate,
                     per-difficulty breakdown, macro average, and the published numbers given with --paper
                     (a JSON file {"Fleming-R1-7B": {"medqa": 72.1, ...}, ...} keyed by the --bench names)
A killed run resumes: items already in predictions.jsonl (and HTTP calls in --cache-dir) are not redone;
setup.json records the model and sampling settings, and a run with other settings refuses to reuse the folder.

    python eval.py --model runs/grpo2/final --bench medqa=medqa/test.jsonl pubmedqa=pubmedqa/ori_pqal.json --out out/eval
    python eval.py --model http://localhost:8000/v1 --model-name Fleming-R1-7B --bench jmed=jmed.jsonl --out out/e
    python eval.py --model runs/sft/final runs/grpo2/best --bench jsonl=test.jsonl --out out/sft out/rl2
Unparsable answers are wrong; nothing is guessed (NOTES: flattering extraction is the classic eval bug).
"""
import argparse
import csv
import json
import math
import os
import re

from common import LETTERS, Progress, append_jsonl, atomic_write, build_messages, check_record, extract_answer, \
    is_well_formed, iter_jsonl, make_llm, make_local_llm, write_jsonl

# Published numbers are shown next to ours only when given with --paper FILE ({"model": {"bench": accuracy %}}).
# Table 3 of the paper could not be verified from here (its results are an image in the public README), so no
# numbers are hard-coded: copy them from the paper into a JSON file rather than trusting a remembered value.
PAPER_MODELS = ("Qwen2.5-7B-Instruct", "Fleming-R1-7B", "Fleming-R1-32B")

# ----------------------------------------------------------------------------------------------------------
# loaders: each yields (row_number, raw_row) and turns a raw row into a record or raises Reject(reason)

class Reject(Exception):
    pass


def _rec(source, id, question, options, answer, difficulty=None, **meta):
    """A unified record from parts; `options` is a list (lettered A, B, ...) or a dict letter -> text."""
    if isinstance(options, list):
        options = dict(zip(LETTERS, options))
    options = {k: (v.strip() if isinstance(v, str) else v) for k, v in options.items()}
    rec = {"id": f"{source}-{id}", "source": source, "question": question.strip() if isinstance(question, str)
           else question, "options": options, "answer": answer, "difficulty": difficulty,
           "meta": {k: v for k, v in meta.items() if v is not None}}
    problem = check_record(rec)
    if problem:
        raise Reject(problem)
    return rec


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
    stem, block, opts, pos = question[:at].strip(), question[at + len("Answer Choices:"):], [], 0
    marks = []
    for L in LETTERS:  # options in order: "(A) ", then "(B) " after it, ...
        j = block.find(f"({L}) ", pos)
        if j < 0:
            break
        marks.append(j)
        pos = j + 4
    for a, b in zip(marks, marks[1:] + [len(block)]):
        opts.append(block[a + 4:b].strip())
    return stem, opts


def _jsonl_rows(path):
    for i, row in iter_jsonl(path):
        yield i, Reject(str(row)) if isinstance(row, ValueError) else row


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
    if isinstance(r["options"], list):  # official eval-input layout: [{letter, content}], label ["X"]
        stem = r["question"][:r["question"].rfind("Answer Choices:")] if "Answer Choices:" in r["question"] \
            else r["question"]
        opts = {o["letter"]: o["content"] for o in r["options"]}
    else:
        stem, opts = r["question"], r["options"]
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


def load_jsonl(i, r, name):
    problem = check_record(r)
    if problem:
        raise Reject(problem)
    return r


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


LOADERS = {"medqa": (load_medqa, _jsonl_rows), "medmcqa": (load_medmcqa, _jsonl_rows),
           "medmcqa_hf": (lambda i, r, n: load_medmcqa(i, r, n, zero_based=True), _jsonl_rows),
           "medxpertqa": (load_medxpertqa, _jsonl_rows), "mmlu_pro_biology": (load_mmlu_pro, _jsonl_rows),
           "mmlu_pro_health": (load_mmlu_pro, _jsonl_rows), "medbullets": (load_medbullets, _csv_rows),
           "careqa": (load_careqa, _jsonl_rows), "jmed": (load_jmed, _jsonl_rows),
           "cmexam": (load_cmexam, _csv_rows), "jsonl": (load_jsonl, _jsonl_rows),
           "pubmedqa": (None, None), "pubmedqa500": (None, None)}


def load_benchmark(name, path, rejects=None):
    """Unified records of benchmark `name` read from `path`. Rows that cannot be read are skipped and, if
    `rejects` is a list, appended to it as {"bench", "file", "row", "reason"}. Prints loaded vs rows in file."""
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(LOADERS))}")
    convert, rows = LOADERS[name]
    items = _pubmedqa(path, name) if name.startswith("pubmedqa") else ((i, r) for i, r in rows(path))
    recs, bad, total, seen = [], [], 0, set()
    for i, r in items:
        total += 1
        try:
            if isinstance(r, Exception):
                raise r
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

# ----------------------------------------------------------------------------------------------------------
# evaluation

def _read_done(path):
    """(rows already written, clean): an unreadable line (the truncated last line of a killed run) is not a row,
    and the file is then not clean: the caller rewrites it, so that appended rows and later readers see JSONL."""
    if not (path and os.path.exists(path)):
        return [], True
    with open(path, encoding="utf-8") as f:
        text = f.read()
    rows, clean = [], not text or text.endswith("\n")
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            clean = False
    return rows, clean


def summarize(rows, n):
    """Accuracy = mean over items of the per-item mean over samples; its standard error is over items."""
    by_item, diff = {}, {}
    for r in rows:
        by_item.setdefault(r["id"], {})[r["sample"]] = r
    per_item = []
    for iid, samples in by_item.items():
        got = [samples[s] for s in sorted(samples)][:n]
        acc = sum(s["correct"] for s in got) / len(got)
        per_item.append((acc, sum(s["well_formed"] for s in got) / len(got)))
        diff.setdefault(got[0].get("difficulty"), []).append(acc)

    def stats(xs):  # None where undefined (no items; a single item has no standard error)
        m = sum(xs) / len(xs) if xs else None
        se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else None
        return {"n": len(xs), "accuracy": None if m is None else 100 * m, "se": None if se is None else 100 * se}

    out = stats([a for a, _ in per_item])
    out["format_rate"] = 100 * sum(f for _, f in per_item) / max(len(per_item), 1)
    out["samples"] = n
    if any(d is not None for d in diff):
        out["by_difficulty"] = {str(d): stats(xs) for d, xs in sorted(diff.items(), key=lambda kv: str(kv[0]))}
    return out


def evaluate(llm_or_model, records, n=1, temperature=0.0, max_new_tokens=2048, seed=0, bench="bench",
             predictions=None, chunk=256, batch_size=64):
    """Score `records` and return summarize()'s dict. `llm_or_model` is an LLM callable (common.make_llm) or a
    (model, tokenizer) pair already loaded in this process (sampled with sampler.generate in batches of
    `batch_size`). With `predictions` (a JSONL path), rows are appended as they come and items already there are
    skipped: a killed run resumes. Items go to the model in chunks of `chunk` so progress is saved often."""
    llm = make_local_llm(*llm_or_model, batch_size=batch_size) if isinstance(llm_or_model, tuple) else llm_or_model
    done, clean = _read_done(predictions)
    rows = [r for r in done if r.get("bench") == bench]
    counts = {}
    for r in rows:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    todo = [rec for rec in records if counts.get(rec["id"], 0) < n]
    redo = {rec["id"] for rec in todo if rec["id"] in counts}  # items a killed run left with fewer than n samples
    if redo or not clean:  # a torn line and the rows of items asked again (all n samples) leave the file
        write_jsonl(predictions, [r for r in done if not (r.get("bench") == bench and r["id"] in redo)])
    wanted = {rec["id"] for rec in records}
    rows = [r for r in rows if r["id"] in wanted and counts[r["id"]] >= n]
    prog = Progress(len(todo), f"eval {bench}")
    for c in range(0, len(todo), chunk):
        part = todo[c:c + chunk]
        outs = llm([build_messages(rec) for rec in part], n=n, temperature=temperature,
                   max_tokens=max_new_tokens, seed=seed)
        for rec, texts in zip(part, outs):
            letters = rec["options"]  # the option texts too: "C. S. aureus" names one option
            for s, text in enumerate(texts):
                pred = extract_answer(text, letters)
                row = {"bench": bench, "id": rec["id"], "sample": s, "output": text, "pred": pred,
                       "answer": rec["answer"], "correct": pred == rec["answer"],
                       "well_formed": is_well_formed(text, letters), "difficulty": rec.get("difficulty")}
                rows.append(row)
                if predictions:
                    append_jsonl(predictions, row)
        prog.update(len(part), acc=100 * sum(r["correct"] for r in rows) / max(len(rows), 1))
    return summarize(rows, n)

# ----------------------------------------------------------------------------------------------------------
# report

def report(results, paper=None):
    """Markdown: one row per benchmark with accuracy ± SE and format rate, published numbers alongside."""
    paper = paper or {}
    models = [m for m in PAPER_MODELS if m in paper] + [m for m in paper if m not in PAPER_MODELS]
    head = "| benchmark | n | accuracy (%) | format (%) |" + "".join(f" {m} |" for m in models)
    lines = [head, "|" + "---|" * (4 + len(models))]
    for b, r in results.items():
        pub = "".join(f" {paper[m].get(b, '')} |" for m in models)
        lines.append(f"| {b} | {r['n']} | {_pm(r)} | {r['format_rate']:.1f} |{pub}")
    if results:
        pub = "".join(f" {_macro(paper[m], results)} |" for m in models)
        lines.append(f"| **macro average** | {len(results)} benchmarks | {_pm({'accuracy': macro(results)})} | |{pub}")
    for b, r in results.items():
        if "by_difficulty" in r:
            lines += ["", f"{b} by difficulty:", "", "| difficulty | n | accuracy (%) |", "|---|---|---|"]
            lines += [f"| {d} | {s['n']} | {_pm(s)} |" for d, s in r["by_difficulty"].items()]
    if not paper:
        lines += ["", "Published numbers (Table 3 of arXiv 2509.15279) are not bundled: pass them with --paper FILE."]
    return "\n".join(lines) + "\n"


def _pm(s):
    if s.get("accuracy") is None:
        return "-"
    return f"{s['accuracy']:.1f} ± {s['se']:.1f}" if s.get("se") is not None else f"{s['accuracy']:.1f}"


def macro(results):
    """Macro average: the unweighted mean of the per-benchmark accuracies (benchmarks with no items skipped)."""
    accs = [r["accuracy"] for r in results.values() if r["accuracy"] is not None]
    return sum(accs) / len(accs) if accs else None


def _macro(published, results):
    """The published macro average over the same benchmarks, only if all of them are published."""
    vals = [published.get(b) for b in results]
    return f"{sum(vals) / len(vals):.1f}" if vals and all(isinstance(v, (int, float)) for v in vals) else ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True,
                   help="HF-format folder(s), or http(s) base URL of an OpenAI-compatible API; several models are "
                   "evaluated one after the other in this process, each into its --out")
    p.add_argument("--model-name", default=None, help="model name sent to the API")
    p.add_argument("--bench", nargs="+", required=True, metavar="NAME=PATH", help=f"names: {', '.join(LOADERS)}")
    p.add_argument("--out", nargs="+", required=True, help="one output folder per --model")
    p.add_argument("--n", type=int, default=1, help="samples per item (1 = greedy)")
    p.add_argument("--temperature", type=float, default=None, help="default 0 for n=1, else 0.6")
    p.add_argument("--limit", type=int, default=None, help="first N items of each benchmark")
    p.add_argument("--max-new-tokens", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=16, help="parallel HTTP requests")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per sampler.generate call (local model)")
    p.add_argument("--cache-dir", default=None, help="HTTP response cache (default OUT/cache)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    p.add_argument("--paper", default=None, help='JSON {"model": {"bench": accuracy %%}} shown alongside')
    p.add_argument("--tiny", action="store_true", help="smoke preset: --limit 8 --max-new-tokens 64")
    a, _ = p.parse_known_args(argv)
    if a.tiny:  # the preset changes defaults only: explicit flags still win
        p.set_defaults(limit=8, max_new_tokens=64)
    a = p.parse_args(argv)
    if len(a.model) != len(a.out):
        p.error(f"{len(a.model)} --model but {len(a.out)} --out: give one output folder per model")
    temperature = a.temperature if a.temperature is not None else (0.0 if a.n == 1 else 0.6)
    benches = [spec.partition("=")[::2] for spec in a.bench]
    for spec, (_, path) in zip(a.bench, benches):
        if not path:
            p.error(f"--bench {spec!r}: expected NAME=PATH")
    paper = json.load(open(a.paper, encoding="utf-8")) if a.paper else {}
    return [run(a, model, out, benches, temperature, paper) for model, out in zip(a.model, a.out)]


def run(a, model, out, benches, temperature, paper):
    """One model on every --bench: writes OUT/{setup.json, predictions.jsonl, rejects.jsonl, results.json/.md}."""
    os.makedirs(out, exist_ok=True)
    # resume only the same evaluation: predictions of another model or other sampling settings are never reused
    setup = {"model": model, "model_name": a.model_name, "n": a.n, "temperature": temperature,
             "max_new_tokens": a.max_new_tokens, "seed": a.seed}
    setup_path = os.path.join(out, "setup.json")
    if os.path.exists(setup_path):
        old = json.load(open(setup_path, encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in setup.items() if old.get(k) != v}
        if diff and os.path.exists(os.path.join(out, "predictions.jsonl")):
            raise SystemExit(f"{out}: holds predictions made with other settings (" + ", ".join(
                f"{k} {o!r}, now {v!r}" for k, (o, v) in diff.items()) + "): use another --out, or delete it")
    atomic_write(setup_path, json.dumps(setup, indent=2))
    llm = make_llm(model, model_name=a.model_name, cache_dir=a.cache_dir or os.path.join(out, "cache"),
                   concurrency=a.concurrency, api_key_env=a.api_key_env, batch_size=a.batch_size)
    results, rejects = {}, []
    for name, path in benches:
        key = name if name not in results else f"{name}:{os.path.splitext(os.path.basename(path))[0]}"
        recs = load_benchmark(name, path, rejects)[:a.limit]
        results[key] = evaluate(llm, recs, n=a.n, temperature=temperature, max_new_tokens=a.max_new_tokens,
                                seed=a.seed, bench=key, predictions=os.path.join(out, "predictions.jsonl"))
        print(f"{key}: accuracy {_pm(results[key])} (n={results[key]['n']}, "
              f"format {results[key]['format_rate']:.1f}%)", flush=True)
    write_jsonl(os.path.join(out, "rejects.jsonl"), rejects)
    summary = {"model": model, "model_name": a.model_name, "n": a.n, "temperature": temperature,
               "max_new_tokens": a.max_new_tokens, "benchmarks": results,
               "macro_average": macro(results), "paper": paper}
    atomic_write(os.path.join(out, "results.json"), json.dumps(summary, indent=2))
    md = report(results, paper)
    atomic_write(os.path.join(out, "results.md"), md)
    print(md)
    return summary


if __name__ == "__main__":
    main()
