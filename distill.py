"""Teacher trajectories for the CoT cold start (Fleming-R1, arXiv 2509.15279, sec. 3.2).

Reads  --data unified records (filter.py's pool).
Writes --out sft.jsonl ({"id", "messages": [system, user, assistant "<think>...</think>\n<answer>X</answer>"],
       "meta"}, appended: a killed run resumes) and sft.rejects.jsonl beside it ({"id", "round", "reasons", ...}).

The teacher sees the question and its gold answer and writes k chains that bridge them (pass@k). Each is checked:
the gold letter, the format common.reward calls well-formed, no restated hint, the length budget, and for synthetic
items the KG path's hidden entity named. The shortest passing chain is kept; items with none go through refinement
rounds (backtracking, path exploration, self-correction, in that order) that show the teacher its failed chain and
the reasons. Teachers: `kg` (offline), an OpenAI-compatible URL (key from $OPENAI_API_KEY), or a local HF folder.

Deliberate departures from the paper:
  1. The tiny run's teacher is `kg` (--kg needed): kg_chain's checking chain, deterministic, so no refinement rounds;
     its answer block holds the option's text (docs/tiny_runs.md#checking-chains).
  2. The check that a chain names the hidden entity (alignment with the KG) is ours.

    python distill.py --data cold_start.jsonl --teacher kg --kg KG_DIR --out sft.jsonl
    python distill.py --data train.jsonl --teacher http://localhost:8000/v1 --model-name gpt-oss-120b --out sft.jsonl
"""
import argparse
import os
import re

from common import (Progress, append_jsonl, build_messages, check_line, extract_answer, is_well_formed, join,
                    kg_facts, make_llm, options_text, parse_with_preset, plain, read_appended, read_records, sentence)

TINY = dict(max_chars=800)  # --tiny: a checking chain of six options fits in 800 characters

# --------------------------------------------------------------------------------------------------------- the checks

HINT_PHRASES = re.compile(r"\b(as given|given answer|answer (?:provided|given|key)|(?:provided|stated|correct) answer"
                          r" is given|the answer provided|(?:we are|we're|i am|i was|we were) told|"
                          r"(?:already|we are|we were) given the answer|as stated in the (?:prompt|hint))\b", re.I)


def check(text, record, max_chars):
    """Reasons the candidate fails (empty list = it passes). Order: format, answer, hint, length, alignment."""
    letters, reasons = record["options"], []
    if not is_well_formed(text, letters):
        reasons.append("malformed: expected <think>...</think> then <answer>LETTER or option text</answer>, nothing else")
    got = extract_answer(text, letters)
    if got != record["answer"]:
        reasons.append(f"wrong answer: {got or 'none'} instead of {record['answer']}")
    m = HINT_PHRASES.search(text)
    if m:
        reasons.append(f"restates the hint: '{m.group(0)}'")
    if len(text) > max_chars:
        reasons.append(f"too long: {len(text)} > {max_chars} characters")
    hidden = (record.get("meta") or {}).get("hidden")
    if hidden and hidden.casefold() not in text.split("</think>")[0].casefold():
        reasons.append(f"does not name the intermediate entity '{hidden}'")
    return reasons


CHECKS = ["format", "answer", "no_hint", "length", "names_hidden"]  # what a passing row has passed

# -------------- the KG teacher: a chain that checks the options against the KG's facts and concludes with one of them


def kg_chain(record, facts):
    """The checking chain of a synthetic record, or None without meta.path: the findings as given, then a diagnosis
    checks each option against them up to the first it lacks (a differential); other families name the disease the
    findings point to, the hops to the asked relation, and check every option on it. The answer is the option's text:

      <think>Findings: fever and rash. They point to Dengue. Dengue is treated with: A. Aspirin no, B. Paracetamol
      yes, C. Heparin no. So the answer is Paracetamol.</think>
      <answer> Paracetamol</answer>
    """
    meta, opts = record.get("meta") or {}, record["options"]
    path = meta.get("path")
    if not path:
        return None
    given = meta.get("given") or []
    findings = [plain(g) for g in given]
    name = opts[record["answer"]]
    sents = [f"Findings: {join(findings)}."]
    if meta.get("family") == "diagnosis":  # why a differential: docs/tiny_runs.md#checking-chains
        for L, x in opts.items():
            has, checks = facts.get((x, "has_symptom"), set()) | facts.get((x, "risk_factor"), set()), []
            for f in findings:
                checks.append(f"{f} {'yes' if f in has else 'no'}")
                if f not in has:
                    break
            sents.append(f"{L}. {x}: {', '.join(checks)}.")
    else:
        gset = {g.casefold() for g in given}
        hops = [e for e in path if e["tail"].casefold() not in gset]  # the edges after the findings
        sents.append(f"They point to {meta['hidden']}.")
        sents += [sentence(e["head"], e["relation"], e["tail"]) + "." for e in hops[:-1] if e["tail"] != name]
        last, correct = hops[-1], set(meta.get("correct") or [name])
        # the asked side of the last edge is the answer's: the tail (a treatment), or the head (a drug contraindicated)
        ask = (sentence(last["head"], last["relation"], "") if last["tail"] == name
               else sentence("", last["relation"], last["tail"], reverse=True)).strip()
        sents.append(f"{ask}: {check_line(opts, correct)}.")
    sents.append(f"So the answer is {name}.")
    return f"<think>{' '.join(sents)}</think>\n<answer> {name}</answer>"  # " Name": one token in tiny.py's vocab


def kg_teacher(facts):
    return lambda records, k, feedback: [[c] if c else [] for c in (kg_chain(r, facts) for r in records)]

# ------------------------------ the LLM teacher: shown the question and its gold answer, asked for the bridging chain

TEACHER_PROMPT = """Question:
{question}

Options:
{options}

The correct answer is {L} ({answer}). Write the reasoning that reaches this answer from the question alone: a few
short, logically ordered steps from the findings to the key intermediate conclusion (name it), then to the answer;
say in a few words why each other option is wrong; end with "So the answer is <answer text>, option {L}."
Never mention that you were told the answer. Reply in exactly this form and nothing else:
<think>your reasoning</think>
<answer>{L}</answer>"""

STRATEGIES = [  # the paper's refinement loop, one per round in this order
    ("backtracking", "Backtrack: re-examine each assumption in your chain, find the step where it went wrong, and "
                     "rebuild the chain from that point."),
    ("path exploration", "Explore alternative paths: treat each option as a hypothesis, test it against the "
                         "findings, and keep the one path that leads to the correct answer."),
    ("self-correction", "Self-correct: fix every logical and format error listed above in a new, shorter chain."),
]


def llm_teacher(llm, temperature=0.8, max_tokens=1024, seed=0):
    def teacher(records, k, feedback):
        convs = []
        for rec, fb in zip(records, feedback):
            msgs = [{"role": "user", "content": TEACHER_PROMPT.format(
                question=rec["question"].strip(), options=options_text(rec["options"]), L=rec["answer"],
                answer=rec["options"][rec["answer"]])}]
            if fb:  # fb = (failed text, reasons, round)
                text, reasons, rnd = fb
                msgs += [{"role": "assistant", "content": text},
                         {"role": "user", "content": "That chain failed these checks: " + "; ".join(reasons) +
                          ". " + STRATEGIES[(rnd - 1) % len(STRATEGIES)][1] + " Reply in the same format."}]
            convs.append(msgs)
        return llm(convs, n=k, temperature=temperature if k > 1 else 0.0, max_tokens=max_tokens, seed=seed)
    return teacher

# ------------------------------------------------------------------------------------------- selection and refinement


def distill(records, teacher, k, rounds, max_chars, name):
    """Yields ("ok", sft_row) or ("reject", reject_row) for each record, round by round over the batch."""
    pending, feedback = list(records), [None] * len(records)
    for rnd in range(rounds + 1):
        if not pending:
            break
        cands = teacher(pending, k, feedback)
        still, fb_next = [], []
        for rec, texts in zip(pending, cands):
            texts = [t.strip() for t in texts]
            scored = [(check(t, rec, max_chars), t) for t in texts]
            passing = sorted((t for r, t in scored if not r), key=len)
            if passing:
                yield "ok", {"id": rec["id"], "messages": build_messages(rec) + [
                    {"role": "assistant", "content": passing[0]}],
                    "meta": {"teacher": name, "k": k, "round": rnd, "pass": len(passing), "checks": CHECKS,
                             "source": rec["source"], "difficulty": rec.get("difficulty")}}
                continue
            if not scored:
                reasons, text = ["teacher produced no candidate (no meta.path for the KG teacher?)"], ""
            else:  # refine the closest miss: fewest failed checks, then shortest
                reasons, text = min(scored, key=lambda s: (len(s[0]), len(s[1])))
            if rnd == rounds or not scored:
                yield "reject", {"id": rec["id"], "teacher": name, "round": rnd, "reasons": reasons, "text": text}
            else:
                still.append(rec)
                fb_next.append((text, reasons, rnd + 1))
        pending, feedback = still, fb_next


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="unified records (JSONL)")
    p.add_argument("--teacher", required=True, help="kg | http(s)://BASE_URL | local HF folder")
    p.add_argument("--out", required=True, help="sft.jsonl (appended; rejects go to sft.rejects.jsonl beside it)")
    p.add_argument("--kg", help="kg.py's KG_DIR (with --teacher kg)")
    p.add_argument("--k", type=int, default=4, help="candidates per item (pass@k)")
    p.add_argument("--rounds", type=int, default=3, help="refinement rounds for items with no passing candidate")
    p.add_argument("--max-chars", type=int, default=3000, help="length budget of a chain")
    p.add_argument("--model-name", default=None, help="model name sent to the OpenAI-compatible server")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    a = parse_with_preset(p, argv, TINY)
    records = read_records(a.data)
    rejects = os.path.splitext(a.out)[0] + ".rejects.jsonl"
    done = {r["id"] for path in (a.out, rejects) for r in read_appended(path)}  # resume
    todo = [r for r in records if r["id"] not in done]
    if a.teacher == "kg":
        if not a.kg:
            p.error("--teacher kg needs --kg KG_DIR (the facts its chains check the options against)")
        teacher, name, rounds = kg_teacher(kg_facts(a.kg)), "kg", 0  # deterministic: a retry writes the same chain
    else:
        llm = make_llm(a.teacher, model_name=a.model_name, concurrency=16)
        teacher, rounds = llm_teacher(llm, a.temperature, a.max_tokens, a.seed), a.rounds
        name = a.model_name or os.path.basename(a.teacher.rstrip("/"))
    print(f"distill: {len(records)} records, {len(records) - len(todo)} already done, teacher {name}, k={a.k}, "
          f"rounds={rounds}", flush=True)
    prog, n_ok, n_rej = Progress(len(todo), "distill"), 0, 0
    for b in range(0, len(todo), 64):  # 64 items in flight: what a kill can lose
        for kind, row in distill(todo[b:b + 64], teacher, a.k, rounds, a.max_chars, name):
            append_jsonl(a.out if kind == "ok" else rejects, row)
            n_ok, n_rej = n_ok + (kind == "ok"), n_rej + (kind == "reject")
            prog.update(1, ok=n_ok, rejected=n_rej)
    print(f"distill: wrote {n_ok} rows to {a.out}, {n_rej} rejects to {rejects}", flush=True)


if __name__ == "__main__":
    main()
