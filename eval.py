"""eval.py: accuracy of any model on the paper's medical benchmarks (Fleming-R1, arXiv 2509.15279, sec. 4, Table 3).

Reads  --bench NAME=PATH (public formats: benchmarks.py); --model HF folder(s) or an OpenAI-compatible base URL.
Writes --out: predictions.jsonl (a row per item and sample: output, pred, answer, correct, well_formed, ...),
       rejects.jsonl (unreadable benchmark rows, with the reason), results.json / results.md (accuracy ± SE over
       items, format rate, by difficulty, macro average, published numbers from --paper), setup.json.
Prompts come from common.build_messages. A killed run resumes (predictions.jsonl, HTTP replies cached in OUT/cache);
a run with other settings than setup.json's refuses to reuse the folder.

Deliberate departures from the paper:
  1. One deterministic answer rule (common.extract_answer: the last <answer> block, one letter); an unparsable
     answer is wrong, never guessed or re-extracted (flattering extraction is the classic evaluation bug).
  2. No published number is bundled: Table 3 could not be verified from here (pass --paper FILE).

    python eval.py --model runs/grpo2/final --bench medqa=medqa/test.jsonl pubmedqa=pubmedqa/ori_pqal.json --out out/eval
    python eval.py --model runs/sft/final runs/grpo2/best --bench jsonl=test.jsonl --out out/sft out/rl2
"""
import argparse
import json
import os
from collections import Counter

from benchmarks import LOADERS, load_benchmark, name_path
from common import Progress, append_jsonl, atomic_write, build_messages, extract_answer, is_well_formed, make_llm, \
    make_local_llm, mean_se, parse_with_preset, read_appended, write_jsonl

# --paper rows shown first, in this order (copy Table 3 into the file rather than trusting a remembered number)
PAPER_MODELS = ("Qwen2.5-7B-Instruct", "Fleming-R1-7B", "Fleming-R1-32B")
TINY = dict(max_new_tokens=112,  # --tiny: the tiny run's chains end within 112 tokens, as its rollouts do
            batch_size=256)  # prompts per generate call: the 1,200 test items in 5 calls

# --------------------------------------------------------------------------------------------------------- evaluation

def summarize(rows, n):
    """Accuracy = mean over items of the per-item mean over samples; its standard error is over items."""
    by_item, diff = {}, {}
    for r in rows:
        by_item.setdefault(r["id"], {})[r["sample"]] = r
    per_item = []
    for samples in by_item.values():
        got = [samples[s] for s in sorted(samples)][:n]
        acc = sum(s["correct"] for s in got) / len(got)
        per_item.append((acc, sum(s["well_formed"] for s in got) / len(got)))
        diff.setdefault(got[0].get("difficulty"), []).append(acc)

    def stats(xs):  # None where undefined (no items; a single item has no standard error)
        m, se = mean_se(xs)
        return {"n": len(xs), "accuracy": None if m is None else 100 * m, "se": None if se is None else 100 * se}

    out = {**stats([a for a, _ in per_item]), "format_rate": 100 * sum(f for _, f in per_item) / max(len(per_item), 1),
           "samples": n}
    if any(d is not None for d in diff):
        out["by_difficulty"] = {str(d): stats(xs) for d, xs in sorted(diff.items(), key=lambda kv: str(kv[0]))}
    return out


def evaluate(llm_or_model, records, predictions, n=1, temperature=0.0, max_new_tokens=2048, seed=0, bench="bench",
             chunk=256, batch_size=64):
    """Score `records` -> summarize()'s dict. `llm_or_model`: an LLM callable (common.make_llm) or a loaded (model,
    tokenizer) pair. Rows are appended to `predictions` (JSONL) chunk by chunk; items already there are skipped."""
    llm = make_local_llm(*llm_or_model, batch_size=batch_size) if isinstance(llm_or_model, tuple) else llm_or_model
    done = read_appended(predictions)  # a killed run's rows (its torn last line dropped)
    rows = [r for r in done if r.get("bench") == bench]
    counts = Counter(r["id"] for r in rows)
    todo = [rec for rec in records if counts[rec["id"]] < n]
    redo = {rec["id"] for rec in todo if rec["id"] in counts}  # items a killed run left with fewer than n samples
    if redo:  # the rows of items asked again (all n samples) leave the file
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
                append_jsonl(predictions, row)
        prog.update(len(part), acc=100 * sum(r["correct"] for r in rows) / max(len(rows), 1))
    return summarize(rows, n)

# ------------------------------------------------------------------------------------------------------------- report

def report(results, paper):
    """Markdown: one row per benchmark with accuracy ± SE and format rate, published numbers alongside."""
    models = [m for m in PAPER_MODELS if m in paper] + [m for m in paper if m not in PAPER_MODELS]
    head = "| benchmark | n | accuracy (%) | format (%) |" + "".join(f" {m} |" for m in models)
    lines = [head, "|" + "---|" * (4 + len(models))]
    for b, r in results.items():
        pub = "".join(f" {paper[m].get(b, '')} |" for m in models)
        lines.append(f"| {b} | {r['n']} | {_pm(r)} | {r['format_rate']:.1f} |{pub}")
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
    p.add_argument("--bench", nargs="+", required=True, type=name_path, metavar="NAME=PATH",
                   help=f"names: {', '.join(LOADERS)}")
    p.add_argument("--out", nargs="+", required=True, help="one output folder per --model")
    p.add_argument("--n", type=int, default=1, help="samples per item (1 = greedy)")
    p.add_argument("--temperature", type=float, default=None, help="default 0 for n=1, else 0.6")
    p.add_argument("--limit", type=int, default=None, help="first N items of each benchmark")
    p.add_argument("--max-new-tokens", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=16, help="parallel HTTP requests")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per sampler.generate call (local model)")
    p.add_argument("--paper", default=None, help='JSON {"model": {"bench": accuracy %%}} shown alongside')
    a = parse_with_preset(p, argv, TINY)
    if len(a.model) != len(a.out):
        p.error(f"{len(a.model)} --model but {len(a.out)} --out: give one output folder per model")
    temperature = a.temperature if a.temperature is not None else (0.0 if a.n == 1 else 0.6)
    paper = json.load(open(a.paper, encoding="utf-8")) if a.paper else {}
    return [run(a, model, out, a.bench, temperature, paper) for model, out in zip(a.model, a.out)]


def run(a, model, out, benches, temperature, paper):
    """One model on every --bench: writes OUT/{setup.json, predictions.jsonl, rejects.jsonl, results.json/.md}."""
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
    llm = make_llm(model, model_name=a.model_name, cache_dir=os.path.join(out, "cache"), concurrency=a.concurrency,
                   batch_size=a.batch_size)
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
