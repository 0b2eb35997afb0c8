"""Build the training pool: format filter, decontamination, anonymisation, dedup, label verification, difficulty
and mixing (Fleming-R1, arXiv 2509.15279, sec. 3.1 "Reasoning-Oriented Data Strategy"), in that order.

Reads  synth.py's train.jsonl (--synthetic) and public training sets (--public name=path: benchmarks.py's formats).
Writes OUT/train.jsonl (the RL pool, each record with a difficulty), OUT/cold_start.jsonl (--cold-start: the subset
       distill.py writes chains for, disjoint from train.jsonl), OUT/rejects.jsonl (what was dropped and why),
       OUT/review.jsonl (items no verifier trial answered right, with the trials), OUT/stats.json and stats.md.

Difficulty (--difficulty): llm (a judge model, JUDGE's definitions after the paper's), passrate (a model's pass rate
p over k samples: > 2/3 easy, > 1/3 moderate, else difficult) or heuristic (common.difficulty_heuristic). --mix:
fractions ("public=0.6,synthetic=0.4") or counts per source, stratified by tier within a group. Synthetic train and
test are disjoint by instance already (decontaminating one against the other flags ~37% on template wording alone).
With --public, --decontaminate (every benchmark eval.py will score) or an explicit --no-decontaminate is required:
public training sets are where evaluation items hide, and a forgotten flag must stop the run, not leak silently.

Deliberate departures from the paper:
  1. The heuristic tiers (hops x rarity) stand in for a judge model where no LLM runs: the tiny preset.
  2. An item that fails verification goes to review.jsonl instead of being dropped.
  3. The cold-start subset is drawn at random here (--cold-start); the paper curates it, and says no more.
"""
import argparse
import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict

from benchmarks import load_benchmark, name_path
from common import (DIFFICULTIES, Progress, atomic_write, build_messages, check_record, difficulty_heuristic,
                    extract_answer, item_keys, iter_jsonl, make_llm, norm_text, parse_with_preset, write_jsonl)

TINY = dict(difficulty="heuristic",  # --tiny: the tiny CPU run has no LLM judge: tiers from hops x rarity
            cold_start=2000)  # chains for 2,000 items; RL on the other ~5,000 (docs/tiny_runs.md#cold-start-subset)

# ------------------------------------------------------------------------------------------------------------ loading

def load_unified(path, source):
    """Unified-record JSONL (synth.py output); bad JSON and non-objects go to rejects instead of stopping the run."""
    recs, rejects = [], []
    for i, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            why = f"bad_json: {rec}" if isinstance(rec, ValueError) else "not_a_record"
            rejects.append({"source": source, "where": f"{path}:{i}", "reason": why})
            continue
        rec.setdefault("source", source)
        if not isinstance(rec.get("meta"), dict):
            rec["meta"] = {}
        rec["meta"]["origin"] = f"{path}:{i}"
        recs.append(rec)
    return recs, rejects


def load_source(name, path):
    """(records, rejects) of one source. Public formats go through benchmarks.load_benchmark, whose row-level
    rejects (e.g. CMExam multi-letter answers: not single-choice) are kept with their reason and row."""
    if name.startswith("synthetic"):
        return load_unified(path, name)
    bad = []
    recs = load_benchmark(name, path, rejects=bad)
    for r in recs:
        r["source"] = r["source"] if name == "jsonl" else name
        r.setdefault("meta", {})["origin"] = f"{path}:{r['id']}"
    return recs, [{"source": name, "where": f"{path}:{b['row']}", "reason": "load: " + b["reason"]} for b in bad]

# ------------------------------------------------------------------------------------------------------ format filter

MOJIBAKE = re.compile(r"Ã[\x80-\xbf]|â€|Â[\xa0-\xbf]|\ufffd|ï¿½")  # UTF-8 decoded as Latin-1 / cp1252
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)\b[^<>]*?(/?)>")
VOID = {"br", "hr", "img", "wbr", "input", "meta", "link"}


def unbalanced(text):
    depth = Counter()
    for close, tag, selfclose in TAG.findall(text):
        if not selfclose and tag.lower() not in VOID:
            depth[tag.lower()] += -1 if close else 1
    return any(depth.values()) or text.count("[[") != text.count("]]") or text.count("{{") != text.count("}}")


def check_format(rec):
    """The reason a record is unusable (a short name, or check_record's message after invalid_record), or None."""
    q, opts, ans = rec.get("question"), rec.get("options"), rec.get("answer")
    if not isinstance(q, str) or not q.strip():
        return "empty_question"
    if not isinstance(opts, dict) or len([v for v in opts.values() if v is not None]) < 2:
        return "too_few_options"
    if any(not isinstance(v, str) or not v.strip() for v in opts.values()):
        return "empty_option"
    if len({norm_text(v) for v in opts.values()}) < len(opts):
        return "duplicate_options"
    if isinstance(ans, list) and len(ans) == 1:
        ans = rec["answer"] = ans[0]
    if isinstance(ans, (str, list)) and len(ans) > 1 and all(a in opts for a in ans):
        return "multi_answer"
    if ans not in opts:
        return "answer_not_in_options"
    texts = [q] + list(opts.values())
    for reason, bad in (("mojibake", MOJIBAKE.search), ("control_chars", CONTROL.search), ("unbalanced_markup", unbalanced)):
        if any(bad(t) for t in texts):
            return reason
    problem = check_record(rec)
    return f"invalid_record: {problem}" if problem else None

# --------------- anonymisation: personal data only; numbers with units, ages, doses and lab values do not match these

_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|" \
         r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
ANON = [
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "[EMAIL]"),
    ("id", re.compile(r"\b(?:MRN|SSN|ID|patient (?:ID|number)|(?:medical )?record (?:no\.?|number))\s*[:#]?\s*"
                      r"(?=[\w-]*\d)[A-Z0-9][\w-]{3,}", re.I), "[ID]"),
    ("date", re.compile(rf"\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b|\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH},? "
                        r"\d{4}\b|\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/(?:\d{4}|\d{2})\b|\b\d{1,2}-\d{1,2}-\d{4}\b"),
     "[DATE]"),
    ("phone", re.compile(r"(?<![\w/.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}\b"), "[PHONE]"),
    ("id", re.compile(r"(?<![\w.,/])\d{8,}(?![\w.,/%])"), "[ID]"),  # long bare digit runs (record numbers)
    ("name", re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?"), "[NAME]"),
]


def anonymise(text):
    """(text with personal data replaced, Counter of kinds replaced)."""
    found = Counter()
    for kind, rx, repl in ANON:
        text, n = rx.subn(repl, text)
        found[kind] += n
    return text, +found

# --------------------------------------------------------------------------------------- duplicates and contamination

def tokens(text):
    """Words, and single CJK characters (Chinese has no spaces), of normalised text."""
    return re.findall(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+", norm_text(text))


def ngrams(toks, n):
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)} or ({" ".join(toks)} if toks else set())


def dedup(recs, threshold=0.8, n=5, cap=50):
    """(kept, [(rec, reason)]): exact duplicates (normalised question and option set) and near duplicates (Jaccard
    of token n-gram shingles >= threshold with a kept item), found through an inverted index of the shingles shared
    by at most `cap` items (template phrases only score): near-linear."""
    kept, dropped, exact, index, shingles = [], [], {}, defaultdict(list), []
    for rec in recs:
        key = "\x00".join([norm_text(rec["question"])] + sorted(map(norm_text, rec["options"].values())))
        key = hashlib.sha1(key.encode()).hexdigest()
        if key in exact:
            dropped.append((rec, f"duplicate of {exact[key]}"))
            continue
        sh = ngrams(tokens(rec["question"] + "\n" + "\n".join(rec["options"].values())), n)
        rare = [s for s in sh if len(index[s]) <= cap]
        hits, common = Counter(j for s in rare for j in index[s]), len(sh) - len(rare)
        best = (0, None)
        for j, h in hits.items():  # J = I / (|a| + |b| - I) <= I / max(|a|, |b|): exact only when it could pass
            if (h + common) >= threshold * max(len(sh), len(shingles[j])):
                inter = len(sh & shingles[j])
                best = max(best, (inter / (len(sh) + len(shingles[j]) - inter), j))
        if best[0] >= threshold:
            dropped.append((rec, f"near_duplicate of {kept[best[1]]['id']} (jaccard {best[0]:.2f})"))
            continue
        exact[key] = rec["id"]
        for s in sh:
            index[s].append(len(kept))
        shingles.append(sh)
        kept.append(rec)
    return kept, dropped


def decontaminate(recs, benches, n=13, min_frac=0.2):
    """(kept, [(rec, reason)], per-benchmark counts): removed when >= min_frac of its question's token n-grams occur
    in one benchmark's questions. A fraction, not "any shared n-gram": MedQA boilerplate ("... oxygen saturation is
    98% on room air ...") shares 13-grams between unrelated items (<= 0.1 of them), a lightly edited copy > 0.5.
    A benchmark item itself (common.item_keys: its options with its question or id) goes whatever n and min_frac."""
    grams = {name: set().union(*[ngrams(tokens(b["question"]), n) for b in items]) for name, items in benches.items()}
    same = {k: name for name, items in benches.items() for b in items for k in item_keys(b)}
    kept, dropped, per = [], [], Counter({name: 0 for name in benches})
    for rec in recs:
        own = ngrams(tokens(rec["question"]), n)
        frac, hit = max(((len(own & g) / max(1, len(own)), name) for name, g in grams.items()), default=(0, None))
        copy = next((same[k] for k in item_keys(rec) if k in same), None)
        if copy or frac >= min_frac:
            per[copy or hit] += 1
            dropped.append((rec, f"contaminated: an item of {copy}" if copy else
                            f"contaminated: {frac:.0%} of its {n}-grams are in {hit}"))
        else:
            kept.append(rec)
    return kept, dropped, dict(per)

# ---------------------------------------------------------------------------------- label verification and difficulty

def verify(recs, llm, k=5, temperature=0.7, max_tokens=1024, chunk=256, key="verify"):
    """k independent trials per item; meta[key] = {"k", "correct"}. Returns (kept, review rows). The client
    caches every call, so a killed run resumes where it stopped."""
    kept, review, prog = [], [], Progress(len(recs), "verify")
    for s in range(0, len(recs), chunk):
        part = recs[s:s + chunk]
        outs = llm([build_messages(r) for r in part], n=k, temperature=temperature, max_tokens=max_tokens)
        for r, texts in zip(part, outs):
            picks = [extract_answer(t, r["options"]) for t in texts]
            r["meta"][key] = {"k": k, "correct": sum(p == r["answer"] for p in picks)}
            if r["meta"][key]["correct"]:
                kept.append(r)
            else:
                review.append({**r, "trials": texts, "picks": picks})
        prog.update(len(part), review=len(review))
    return kept, review


JUDGE = ("Rate the difficulty of this medical multiple-choice question for a well-trained physician.\n"
         "easy: answerable by recalling a single well-known fact; no integration of findings needed.\n"
         "moderate: requires combining several findings or one inferential step (e.g. identify the disease, "
         "then recall one fact about it), with common knowledge.\n"
         "difficult: requires multi-step reasoning over several findings, rare diseases or drugs, or telling "
         "apart close competing diagnoses.\nReply with one word: easy, moderate or difficult.\n\n")


def difficulty_llm(recs, llm):
    outs = llm([[{"role": "user", "content": JUDGE + build_messages(r)[1]["content"]}] for r in recs], n=1,
               temperature=0.0, max_tokens=8)
    for r, (text,) in zip(recs, outs):
        word = re.search(r"easy|moderate|difficult", text.lower())
        r["difficulty"] = word.group(0) if word else "moderate"
        r["meta"]["difficulty_source"] = "llm" if word else "llm_unparsed"

# ---------------------------------------------------------------------------------------------- mixing and the report

def parse_mix(spec):
    """'public=0.6,synthetic=0.4' (fractions) or 'medqa=2000,synthetic=5000' (counts) -> dict."""
    return {k.strip(): float(v) for k, _, v in (part.partition("=") for part in spec.split(",") if part)}


def mix_pool(recs, mix, seed=0):
    """Sample each mix group to its share; within a group, tiers keep their proportions (stratified)."""
    rng = random.Random(seed)
    groups = defaultdict(list)
    for r in recs:  # a source named in the mix is its own group, else "synthetic" or "public"
        g = r["source"] if r["source"] in mix else "synthetic" if r["source"].startswith("synthetic") else "public"
        if g in mix:
            groups[g].append(r)
    if all(v <= 1 for v in mix.values()):  # fractions
        total = min((len(groups[g]) / f for g, f in mix.items() if f > 0), default=0)
        want = {g: int(f * total) for g, f in mix.items()}
    else:
        want = {g: min(int(c), len(groups[g])) for g, c in mix.items()}
    pool = []
    for g, items in sorted(groups.items()):
        by_tier = defaultdict(list)
        for r in items:
            by_tier[r["difficulty"]].append(r)
        share = {t: want[g] * len(v) / len(items) for t, v in by_tier.items()}
        take = {t: int(s) for t, s in share.items()}
        for t in sorted(share, key=lambda t: take[t] - share[t])[:want[g] - sum(take.values())]:
            take[t] += 1  # largest remainder: the group gets exactly want[g]
        for t in sorted(by_tier):
            pool += rng.sample(by_tier[t], take[t])
    rng.shuffle(pool)
    return pool


def table(recs):
    cnt = Counter((r["source"], r["difficulty"]) for r in recs)
    rows = ["| source | " + " | ".join(DIFFICULTIES) + " | total |", "|---" * (len(DIFFICULTIES) + 2) + "|"]
    for s in sorted({s for s, _ in cnt}) + ["total"]:
        vals = [sum(v for (ss, t), v in cnt.items() if t == d and s in (ss, "total")) for d in DIFFICULTIES]
        rows.append(f"| {s} | " + " | ".join(map(str, vals)) + f" | {sum(vals)} |")
    return "\n".join(rows)


def run(sources, out, benches=(), verify_spec=None, difficulty="heuristic", mix=None, k=5, seed=0, llm_model=None,
        contam_frac=0.2, judge_spec=None, max_tokens=1024, cold_start=0):
    """The whole filter; `sources`/`benches` are [(name, path)]. Returns the stats dict."""
    judge = judge_spec or verify_spec
    if difficulty in ("passrate", "llm") and not judge:
        raise SystemExit(f"--difficulty {difficulty} needs a model: --judge (or --verify) URL_OR_FOLDER")
    stats, rejects, recs = {"loaded": {}, "rejects": Counter()}, [], []

    def reject(dropped):  # [(record, reason)] -> rows of rejects.jsonl
        rejects.extend({"source": r["source"], "where": r["meta"]["origin"], "id": r.get("id"), "reason": why,
                        "record": r} for r, why in dropped)

    for name, path in sources:
        got, bad = load_source(name, path)
        stats["loaded"][name] = len(got)
        rejects.extend(dict(b, id=None, record=None) for b in bad)
        checked = [(r, check_format(r)) for r in got]
        reject((r, why) for r, why in checked if why)
        recs += [r for r, why in checked if not why]
    # before anonymisation, which would hide a verbatim copy of a benchmark item from the exact match
    bench_recs = {name: load_source(name, path)[0] for name, path in benches}
    recs, dropped, stats["decontaminated"] = decontaminate(recs, bench_recs, min_frac=contam_frac)
    reject(dropped)
    anon = Counter()
    for r in recs:  # the question only: an option that is a date or a name is the answer, not personal data
        r["question"], found = anonymise(r["question"])
        if found:
            r["meta"]["anonymised"] = dict(found)
            anon.update(found)
            anon["items"] += 1
    stats["anonymised"] = dict(anon)
    recs, dropped = dedup(recs)
    reject(dropped)
    review = []
    mk = lambda spec: make_llm(spec, model_name=llm_model, cache_dir=os.path.join(out, "llm_cache"))
    if verify_spec:
        recs, review = verify(recs, mk(verify_spec), k=k, max_tokens=max_tokens)
    if difficulty == "heuristic":
        stats["rare_inlinks_cut"] = difficulty_heuristic(recs)
    elif difficulty == "passrate":
        key = "verify" if judge == verify_spec else "passrate"  # reuse the verifier's k trials when it is the judge
        if key == "passrate":
            verify(recs, mk(judge), k=k, key=key, max_tokens=max_tokens)
        for r in recs:
            p = r["meta"][key]["correct"] / r["meta"][key]["k"]
            r["difficulty"] = "easy" if p > 2 / 3 else "moderate" if p > 1 / 3 else "difficult"
            r["meta"]["difficulty_source"] = "passrate"
    else:
        difficulty_llm(recs, mk(judge))
    stats["before_mix"] = len(recs)
    pool = mix_pool(recs, mix, seed) if mix else recs
    # the cold start's own subset: RL needs prompts it never saw (sec. 3.2-3.3, docs/tiny_runs.md#cold-start-subset)
    n_cold = int(cold_start * len(pool)) if cold_start < 1 else min(int(cold_start), len(pool))
    cold_ids = {r["id"] for r in random.Random(seed).sample(pool, n_cold)}
    cold, pool = [r for r in pool if r["id"] in cold_ids], [r for r in pool if r["id"] not in cold_ids]
    stats["rejects"].update(r["reason"].split(":")[0].split(" of ")[0] for r in rejects)
    stats.update(rejects=dict(stats["rejects"]), review=len(review), pool=len(pool), cold_start=len(cold),
                 table={f"{s}|{d}": v for (s, d), v in Counter((r["source"], r["difficulty"]) for r in pool).items()})
    write_jsonl(os.path.join(out, "train.jsonl"), pool)
    write_jsonl(os.path.join(out, "cold_start.jsonl"), cold)
    write_jsonl(os.path.join(out, "rejects.jsonl"), rejects)
    write_jsonl(os.path.join(out, "review.jsonl"), review)
    atomic_write(os.path.join(out, "stats.json"), json.dumps(stats, indent=1))
    md = (f"# filter.py report\n\nloaded: {stats['loaded']}\n\nrejects by reason: {stats['rejects']}\n\n"
          f"decontaminated per benchmark: {stats['decontaminated']}\n\nanonymised: {stats['anonymised']}\n\n"
          f"sent to review (no verifier trial right): {len(review)}\n\npool: {len(pool)} (+ cold start: {len(cold)})"
          f"\n\n{table(pool)}\n")
    atomic_write(os.path.join(out, "stats.md"), md)
    print(md)
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--synthetic", action="append", default=[], help="synth.py train.jsonl (repeatable)")
    p.add_argument("--public", nargs="*", default=[], type=name_path,
                   help="name=path, name as in eval.py (medqa, cmexam, ...)")
    p.add_argument("--decontaminate", nargs="*", default=[], type=name_path,
                   help="name=path of every evaluation benchmark")
    p.add_argument("--no-decontaminate", action="store_true", help="allow --public without --decontaminate")
    p.add_argument("--out", required=True)
    p.add_argument("--verify", default=None, help="verifier: OpenAI-compatible base URL or model folder")
    p.add_argument("--judge", default=None, help="difficulty model (llm judge or pass-rate); default: --verify")
    p.add_argument("--llm-model", default=None, help="model name sent to the HTTP endpoint")
    p.add_argument("--k", type=int, default=5, help="verification trials per item")
    p.add_argument("--max-tokens", type=int, default=1024, help="tokens per verifier trial")
    p.add_argument("--difficulty", choices=["heuristic", "passrate", "llm"], default="llm")
    p.add_argument("--mix", default=None, help="public=0.6,synthetic=0.4 (fractions) or counts per source")
    p.add_argument("--cold-start", type=float, default=0.1, help="the cold-start subset, OUT/cold_start.jsonl: a "
                   "fraction of the pool, or a count (>= 1); the RL pool train.jsonl keeps the rest")
    p.add_argument("--seed", type=int, default=0)
    a = parse_with_preset(p, argv, TINY)
    sources = [("synthetic", s) for s in a.synthetic] + a.public
    if not sources:
        p.error("give --synthetic and/or --public")
    if a.public and not a.decontaminate and not a.no_decontaminate:
        p.error("--public training sets can hold the very items eval.py scores (PubMedQA's 1,000 labelled ones are "
                "both): name every benchmark you will evaluate on with --decontaminate name=path (as for eval.py "
                "--bench), or pass --no-decontaminate to keep them unchecked")
    run(sources, a.out, a.decontaminate, a.verify, a.difficulty, parse_mix(a.mix) if a.mix else None, a.k, a.seed,
        a.llm_model, judge_spec=a.judge, max_tokens=a.max_tokens, cold_start=a.cold_start)


if __name__ == "__main__":
    main()
