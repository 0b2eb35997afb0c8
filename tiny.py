"""tiny.py: what only the tiny (CPU) run needs around the stage scripts (run_tiny.sh); not a stage of the paper.

1. `base`: the stand-in for the pretrained instruct model the recipe starts from. Reads the KG and the pool; writes
   OUT/tokenizer (byte-level BPE, ChatML, every KG entity name one token), OUT/init (a random Qwen2-shaped model)
   and OUT/pretrain.jsonl for `sft.py --tiny base`: every fact of the KG in both directions, 32 passes (a
   pretrained model's knowledge), option-check drills and format practice with no medicine in it. Base has the facts
   and the format, not the reasoning the cold start adds (sec. 3.2).
2. `probe`: the Base's one-hop recall, forward and reverse (RUN/base_probe.json).
3. `report`: Table 4 in miniature: Base, + CoT cold start, + RL stage 1, + RL stage 2 on the held-out test set, by
   difficulty, mean over seeds, each gain a mean of paired per-question differences ± SE (Markdown and JSON; report.py
   draws the RL curves), and the controls beside it.

  python tiny.py base --kg RUN/kg --pool RUN/pool/train.jsonl --out RUN/base_init
  python tiny.py probe --model RUN/base/final --kg RUN/kg --out RUN/base_probe.json
  python tiny.py report --run RUN --seeds 0 1 2
"""
import argparse, json, os, random

from common import (DIFFICULTIES, HEAD_TYPE, atomic_write, build_messages, check_line, kg_facts, mean_se,
                    options_text, pad_id, plain, read_jsonl, sentence, write_jsonl)


def fact_texts(facts, passes, rng, per_row=2):
    """Every edge of the relations questions use (common.HEAD_TYPE) in both directions (a model that only read "A
    can present with fever" does not learn the way back: the "reversal curse"), `passes` shuffled passes, `per_row`
    facts a row. Each fact opens with a space, so its first name is the same one token as mid-sentence."""
    sents = [" " + sentence(h, rel, t, reverse) + "." for (h, rel), tails in facts.items() if rel in HEAD_TYPE
             for t in sorted(tails) for reverse in (False, True)]
    rows = []
    for _ in range(passes):
        rng.shuffle(sents)
        rows += ["".join(sents[i:i + per_row]) for i in range(0, len(sents), per_row)]
    return rows


def format_practice(pool, n, rng):
    """Chat rows that teach the answer format, and nothing about medicine: the question asks which option reads a
    quoted name; the answer checks the options, concludes, and puts the option's text in the answer block."""
    rows = []
    for i in range(n):
        opts = rng.choice(pool)["options"]
        name = opts[rng.choice(list(opts))]
        q = {"question": f"Which of the following options reads \"{name}\"?", "options": opts}
        think = f"Looking for {name}: {check_line(opts, {name})}. So the answer is {name}."
        rows.append({"id": f"format-{i}", "messages": build_messages(q) + [
            {"role": "assistant", "content": f"<think>{think}</think>\n<answer> {name}</answer>"}]})
    return rows


def scan_drills(pool, n, rng):
    """Plain-text rows that drill the in-context step every chain ends with: an option list, then two checks
    for names drawn with replacement ("Looking for Heparin: A. Aspirin no, B. Heparin yes, C. Warfarin no.")."""
    rows = []
    for i in range(n):
        opts = rng.choice(pool)["options"]
        names = [opts[rng.choice(list(opts))] for _ in range(2)]
        checks = [f"Looking for {x}: {check_line(opts, {x})}." for x in names]
        rows.append({"id": f"drill-{i}", "text": "\n".join([options_text(opts)] + checks)})
    return rows


def base(a):
    from model import init_model, train_tokenizer
    rng = random.Random(a.seed)
    facts, pool = kg_facts(a.kg), read_jsonl(a.pool)
    texts = fact_texts(facts, a.passes, rng)
    chats = format_practice(pool, a.format_items, rng)
    drills = scan_drills(pool, a.drills, rng)
    # the chats as the template renders them (role names included) and the training questions' wording
    tok_corpus = texts[:len(texts) // a.passes] + [r["text"] for r in drills[:2000]] + [
        "\n".join(f"{m['role']}\n{m['content']}" for m in r["messages"]) for r in chats] + [
        r["question"] + "\n" + options_text(r["options"]) for r in pool]
    # every KG entity name (leading space; as options, chains and questions spell it) and "A." .. "F." are one
    # token each: a tiny model recalls and copies one symbol far sooner than a span
    names = {e["name"] for e in read_jsonl(os.path.join(a.kg, "entities.jsonl")) if len(e["name"]) >= 4}
    words = [f"{x}." for x in "ABCDEF"] + sorted({" " + v for n in names for v in (n, plain(n))})
    # the system prompt stays text: the model copies its tags from it (docs/old_design.md#the-system-prompt-stays-text)
    tok = train_tokenizer(tok_corpus, os.path.join(a.out, "tokenizer"), vocab_size=a.vocab, words=words)
    # RoPE base 1e4, not Qwen's 1e6: 32-dim heads over short contexts need fast-rotating frequencies to copy
    init_model(os.path.join(a.out, "init"), len(tok), seed=a.seed, tokenizer=tok, hidden_size=a.dim,
               intermediate_size=a.dim * 3, num_hidden_layers=a.layers, num_attention_heads=a.heads,
               num_key_value_heads=max(1, a.heads // 2), rope_theta=10000.0)
    rows = [{"id": f"fact-{i}", "text": t} for i, t in enumerate(texts)] + chats + drills
    rng.shuffle(rows)
    write_jsonl(os.path.join(a.out, "pretrain.jsonl"), rows)
    print(f"tiny base: {len(texts)} fact rows ({a.passes} passes), {len(chats)} format-practice chats, "
          f"{len(drills)} drills, vocab {len(tok)} -> {a.out}")


def probe(a):
    """The Base's one-hop recall (docs/tiny_runs.md#g1-knowledge-first): greedy completion of "Dengue is treated
    with" (forward) and "Paracetamol is used to treat" (reverse) on `a.n` random facts each; right when the name it
    writes is one the KG accepts. Writes --out (JSON)."""
    from transformers import AutoTokenizer
    import model as M
    import sampler
    facts, rng = kg_facts(a.kg), random.Random(a.seed)
    tok, net = AutoTokenizer.from_pretrained(a.model), M.load_model(a.model)
    res = {}
    for reverse in (False, True):
        keys = sorted(k for k in facts if k[1].lstrip("~") in HEAD_TYPE and k[1].startswith("~") == reverse)
        keys = rng.sample(keys, min(a.n, len(keys)))
        prompts = [" " + (sentence("", r[1:], x, True) if reverse else sentence(x, r, "")).strip() for x, r in keys]
        outs = sampler.generate(net, [tok.encode(p) for p in prompts], 8, pad_id=pad_id(tok))
        said = [tok.decode(o).split(".")[0].strip() for o in outs]
        right = [s in facts[k] for s, k in zip(said, keys)]
        res["reverse" if reverse else "forward"] = {"n": len(keys), "recall": round(100 * sum(right) / len(keys), 1),
                                                    "examples": [list(x) for x in zip(prompts, said, right)][:5]}
    atomic_write(a.out, json.dumps(res, indent=2))
    print(f"tiny probe: one-hop recall forward {res['forward']['recall']}%, reverse {res['reverse']['recall']}% "
          f"({a.n} facts each) -> {a.out}")


# ----------------------------------------------------------------------------------------------- the ablation table

STAGES = [("base", "Base (pretrained tiny model)"), ("sft", "+ CoT cold start"), ("rl1", "+ RL stage 1"),
          ("rl2", "+ RL stage 2")]


def greedy(path):
    """{id: row} of an eval.py predictions.jsonl, sample 0 (the greedy answer) only."""
    return {r["id"]: r for r in read_jsonl(path) if r["sample"] == 0}


def load_predictions(run, seeds):
    """{(seed, stage): {id: greedy prediction row}} from RUN's eval folders; one Base for all seeds (it precedes
    the recipe)."""
    base = greedy(os.path.join(run, "eval_base", "predictions.jsonl"))
    return {(s, st): base if st == "base" else greedy(os.path.join(run, f"seed{s}", "eval", st, "predictions.jsonl"))
            for s in seeds for st, _ in STAGES}


def ablation(rows, seeds):
    """Accuracy per stage (mean over seeds) and each stage's gain over the previous one as the mean of paired
    per-question differences, pooled over seeds (each (seed, question) pair is one difference), with its SE.
    rows: load_predictions(...)."""
    preds = {key: {i: (float(r["correct"]), r.get("difficulty")) for i, r in v.items()} for key, v in rows.items()}
    ids = sorted(preds[(seeds[0], "base")])
    found = {v[1] for v in preds[(seeds[0], "base")].values()}
    tiers = [t for t in DIFFICULTIES if t in found]
    out = {"seeds": seeds, "n_test": len(ids), "stages": {}}
    prev = None
    for st, label in STAGES:
        row = {"label": label}
        for tier in [None] + tiers:
            sel = [i for i in ids if tier is None or preds[(seeds[0], "base")][i][1] == tier]
            accs = [100 * sum(preds[(s, st)][i][0] for i in sel) / len(sel) for s in seeds]
            cell = {"n": len(sel), "accuracy": sum(accs) / len(accs), "per_seed": accs}
            if prev:
                m, se = mean_se([preds[(s, st)][i][0] - preds[(s, prev)][i][0] for s in seeds for i in sel])
                cell["gain"], cell["gain_se"] = 100 * m, float("nan") if se is None else 100 * se
            row[tier or "all"] = cell
        out["stages"][st] = row
        prev = st
    return out


def table_md(res):
    tiers = [k for k in res["stages"]["base"] if k not in ("label", "all")]
    head = "| stage | accuracy (all) | gain vs previous (paired, ± SE) |" + "".join(f" {t} |" for t in tiers)
    lines = [f"Held-out synthetic test set: {res['n_test']} questions, seeds {res['seeds']} "
             f"(accuracy = mean over seeds; gain = mean paired per-question difference, pooled over seeds).", "",
             head, "|" + "---|" * (3 + len(tiers))]
    for st, row in res["stages"].items():
        a = row["all"]
        gain = f"{a['gain']:+.1f} ± {a['gain_se']:.1f}" if "gain" in a else ""
        per_tier = "".join(f" {row[t]['accuracy']:.1f}" + (f" ({row[t]['gain']:+.1f} ± {row[t]['gain_se']:.1f})"
                                                            if "gain" in row[t] else "") + " |" for t in tiers)
        lines.append(f"| {row['label']} | {a['accuracy']:.1f} | {gain} |{per_tier}")
    lines += ["", "Tier columns: accuracy (gain ± SE) on the items of that tier, n = "
              + ", ".join(f"{t} {res['stages']['base'][t]['n']}" for t in tiers) + ".",
              "For reference, the paper's Table 4 reports the same four rows for Fleming-R1-7B on real benchmarks;"
              " this table reproduces only their shape at toy scale."]
    return "\n".join(lines) + "\n"


# the controls (docs/tiny_runs.md#controls): beside the table, never tuned on

CONTROLS = [("sft_more", "matched-compute SFT control: the cold start trained on for RL stage 1's time", "sft"),
            ("rl1_shuffled", "shuffled-reward control: RL stage 1 with each batch's rewards permuted", "sft")]


def controls(run, seeds, rows):
    """Each control found in RUN (eval/<name> of some seeds) against its reference, paired on the same seeds; the
    matched-compute control also against RL stage 1, the comparison the target names."""
    out = {}
    for name, label, ref in CONTROLS:
        have = [s for s in seeds if os.path.exists(os.path.join(run, f"seed{s}", "eval", name, "predictions.jsonl"))]
        if not have:
            continue
        ctl = {s: {i: r["correct"] for i, r in greedy(os.path.join(run, f"seed{s}", "eval", name,
                                                                    "predictions.jsonl")).items()} for s in have}
        res = {"label": label, "seeds": have,
               "accuracy": sum(100 * sum(ctl[s].values()) / len(ctl[s]) for s in have) / len(have)}
        for other in (ref, "rl1") if name == "sft_more" else (ref,):
            m, se = mean_se([float(ctl[s][i]) - float(rows[(s, other)][i]["correct"]) for s in have for i in ctl[s]])
            res[f"vs_{other}"] = [round(100 * m, 2), round(100 * se, 2)]
        out[name] = res
    return out


def report(a):
    rows = load_predictions(a.run, a.seeds)
    res = ablation(rows, a.seeds)
    res["controls"] = controls(a.run, a.seeds, rows)
    md = table_md(res)
    for name, c in res["controls"].items():
        md += (f"\n{c['label']} (seeds {c['seeds']}): {c['accuracy']:.1f}%; paired "
               + ", ".join(f"{v[0]:+.1f} ± {v[1]:.1f} vs {k[3:]}" for k, v in c.items() if k.startswith("vs_")))
    probe = os.path.join(a.run, "base_probe.json")
    if os.path.exists(probe):
        p = json.load(open(probe))
        md += (f"\n\nBase one-hop recall (tiny.py probe): forward {p['forward']['recall']}%, reverse "
               f"{p['reverse']['recall']}%.")
    atomic_write(os.path.join(a.run, "ablation.json"), json.dumps(res, indent=2))
    atomic_write(os.path.join(a.run, "ablation.md"), md + "\n")
    print(md)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="tokenizer + random model + pretraining corpus for the tiny Base")
    b.add_argument("--kg", required=True)
    b.add_argument("--pool", required=True, help="filter.py's train.jsonl (options for the drills and format chats)")
    b.add_argument("--out", required=True)
    b.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary before the entity-name tokens "
                   "(small: the lm_head is half of every step)")
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--heads", type=int, default=4)
    # 32 passes: one-hop recall 97% both ways (docs/tiny_runs.md#g1-knowledge-first)
    b.add_argument("--passes", type=int, default=32, help="shuffled passes over the KG's facts")
    b.add_argument("--drills", type=int, default=15000, help="option-check drills (plain text)")
    b.add_argument("--format-items", type=int, default=1500, help="format-practice chats")
    b.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("probe", help="the Base's one-hop recall, forward and reverse -> JSON")
    q.add_argument("--model", required=True)
    q.add_argument("--kg", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--n", type=int, default=400, help="facts probed in each direction")
    q.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="the ablation table from RUN/seed*/eval/*/predictions.jsonl")
    r.add_argument("--run", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args(argv)
    dict(base=base, probe=probe, report=report)[a.cmd](a)


if __name__ == "__main__":
    main()
