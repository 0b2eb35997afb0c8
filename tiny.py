"""tiny.py: what only the tiny (CPU) run needs around the stage scripts (run_tiny.sh); not a stage of the paper.

1. `base`: the stand-in for the pretrained instruct model the recipe starts from. Reads the sample dump, the KG and
   the pool; writes OUT/tokenizer (byte-level BPE, ChatML, every KG entity name one token), OUT/init (a random
   Qwen2-shaped model) and OUT/pretrain.jsonl for `sft.py --tiny base`: the articles and every KG edge as text (a
   pretrained model's knowledge), option-scan drills ("So the answer is Heparin. A. Aspirin no. B. Heparin yes.")
   and format practice with no medicine in it. Base has the facts and the format, not the reasoning the cold start
   adds (sec. 3.2).
2. `report`: Table 4 in miniature: Base, + CoT cold start, + RL stage 1, + RL stage 2 on the held-out test set, by
   difficulty, mean over seeds, each gain a mean of paired per-question differences ± SE (Markdown, JSON, a PNG of
   the RL curves), and where the errors are: the chain's conclusion against the letter, the scan's verdicts.

  python tiny.py base --dump data/sample_wiki.xml --kg RUN/kg --pool RUN/pool/train.jsonl --out RUN/base_init
  python tiny.py report --run RUN --seeds 0 1 2
"""
import argparse, json, os, random, re

import mwparserfromhell as mwp

from common import (DIFFICULTIES, RELATION_SENTENCES, answer_scan, atomic_write, build_messages, fill, iter_dump,
                    mean_se, options_text, plain, read_jsonl, read_records, write_jsonl)


def article_texts(dump, chunk=600):
    """The articles as plain text, in pieces of about `chunk` characters, each headed by its title: short rows of
    similar length batch with little padding."""
    for title, ns, _, redirect, text in iter_dump(dump):
        if ns == 0 and not redirect and text.strip():
            piece = title
            for line in mwp.parse(text).strip_code(normalize=True, collapse=True).splitlines():
                if len(piece) > chunk:
                    yield piece
                    piece = title + ":"
                piece += "\n" + line.strip() if line.strip() else ""
            yield piece


def fact_texts(kg_dir):
    """Every KG edge as a sentence, in short paragraphs: one per head entity (an encyclopedic entry), and one per
    tail entity listing what points to it ("Fever is linked to: A (has symptom), B (has symptom)."), because a
    model that only read "A can present with fever" does not learn the way back (the "reversal curse")."""
    names = {e["id"]: e["name"] for e in read_jsonl(os.path.join(kg_dir, "entities.jsonl"))}
    by_head, by_tail = {}, {}
    for e in read_jsonl(os.path.join(kg_dir, "edges.jsonl")):
        h, t = names[e["head"]], names[e["tail"]]
        s = fill(RELATION_SENTENCES[e["relation"]], 1, h=h, t=t) + "."  # the wording of distill.py's chains
        by_head.setdefault(h, []).append(s[0].upper() + s[1:])
        by_tail.setdefault(t, []).append(f"{h} ({e['relation'].replace('_', ' ')})")
    return ([" ".join(facts) for facts in by_head.values()] +
            [f"{t} is linked to: {', '.join(heads)}." for t, heads in by_tail.items()])


def format_practice(pool, n, rng):
    """Chat rows that teach the answer format and letter mapping, and nothing about medicine: the question asks
    which option reads a quoted name, so the right letter is found by reading the options, not by reasoning."""
    rows = []
    for i in range(n):
        rec = rng.choice(pool)
        L = rng.choice(list(rec["options"]))
        name = rec["options"][L]
        q = {"question": f"Which of the following options reads \"{name}\"?", "options": rec["options"]}
        think = answer_scan(rec["options"], L)  # as distill.kg_chains ends
        rows.append({"id": f"format-{i}", "messages": build_messages(q) + [
            {"role": "assistant", "content": f"<think>{think}</think>\n<answer>{L}</answer>"}]})
    return rows


def scan_drills(pool, n, rng, per_row=2):
    """Short plain-text rows that drill the one in-context skill the chains need: an option list, then `per_row`
    scans for names drawn with replacement ("So the answer is Heparin. A. Aspirin no. B. Warfarin no. C. Heparin
    yes."), so no scan can be answered by elimination from the ones before it."""
    rows = []
    for i in range(n):
        opts = rng.choice(pool)["options"]
        scans = [answer_scan(opts, rng.choice(list(opts))) for _ in range(per_row)]
        rows.append({"id": f"drill-{i}", "text": "\n".join([options_text(opts)] + scans)})
    return rows


def base(a):
    from model import init_model, train_tokenizer
    rng = random.Random(a.seed)
    articles, facts = list(article_texts(a.dump)), fact_texts(a.kg)
    texts = articles + facts
    pool = read_jsonl(a.pool)
    chats = format_practice(pool, a.format_items, rng)
    # the chats as the template renders them (role names included) and the training questions' wording
    tok_corpus = texts + ["\n".join(f"{m['role']}\n{m['content']}" for m in r["messages"]) for r in chats] + [
        r["question"] + "\n" + options_text(r["options"]) for r in pool]
    # every KG entity name (leading space; capitalised and as the chains spell it mid-sentence) and "A." .. "E." are
    # one token each: a tiny model finds one symbol among the options far sooner than a span
    names = {e["name"] for e in read_jsonl(os.path.join(a.kg, "entities.jsonl")) if len(e["name"]) >= 4}
    words = [f"{x}." for x in "ABCDE"] + sorted({" " + v for n in names for v in (n, plain(n, keep_suffix=True))})
    # the system prompt stays text: the model copies its tags from it (docs/tiny_runs.md#the-system-prompt-stays-text)
    tok = train_tokenizer(tok_corpus, os.path.join(a.out, "tokenizer"), vocab_size=a.vocab, words=words)
    # RoPE base 1e4, not Qwen's 1e6: 32-dim heads over short contexts need fast-rotating frequencies to copy
    init_model(os.path.join(a.out, "init"), len(tok), seed=a.seed, tokenizer=tok, hidden_size=a.dim,
               intermediate_size=a.dim * 3, num_hidden_layers=a.layers, num_attention_heads=a.heads,
               num_key_value_heads=max(1, a.heads // 2), rope_theta=10000.0)
    rows = ([{"id": f"article-{i}", "text": t} for i, t in enumerate(articles)]
            + [{"id": f"fact-{i}", "text": t} for i, t in enumerate(facts)] * a.fact_repeat
            + chats + scan_drills(pool, a.drills, rng))
    rng.shuffle(rows)
    write_jsonl(os.path.join(a.out, "pretrain.jsonl"), rows)
    print(f"tiny base: {len(articles)} article pieces, {len(facts)} fact paragraphs x{a.fact_repeat}, {len(chats)} "
          f"format-practice chats, {a.drills} drills, vocab {len(tok)} -> {a.out}")

# ----------------------------------------------------------------------------------------------------------
# the ablation table (Table 4 in miniature)

STAGES = [("base", "Base (pretrained tiny model)"), ("sft", "+ CoT cold start"), ("rl1", "+ RL stage 1"),
          ("rl2", "+ RL stage 2")]


def load_predictions(run, seeds):
    """{(seed, stage): {id: greedy prediction row}} from RUN's eval folders; one Base for all seeds (it precedes
    the recipe)."""
    greedy = lambda path: {r["id"]: r for r in read_jsonl(path) if r["sample"] == 0}
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
    tiers = [t for t in ("easy", "moderate", "difficult") if t in found]
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


def plot(run, seeds, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the RL curves plot (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for s in seeds:
        x0 = 0
        for stage, style in (("rl1", "-"), ("rl2", "--")):
            f = os.path.join(run, f"seed{s}", stage, "metrics.jsonl")
            rows = [r for r in read_jsonl(f) if "reward" in r] if os.path.exists(f) else []
            xs = [x0 + r["step"] for r in rows]
            axes[0].plot(xs, [r["reward"] for r in rows], style, label=f"seed {s} {stage}")
            vals = [r for r in read_jsonl(f) if "val_acc" in r] if os.path.exists(f) else []
            axes[1].plot([x0 + r["step"] for r in vals], [100 * r["val_acc"] for r in vals], style + "o",
                         label=f"seed {s} {stage}")
            x0 = max(xs, default=x0)
    axes[0].set(title="GRPO mean reward per step", xlabel="step (stage 2 after stage 1)")
    axes[1].set(title="validation accuracy (%)", xlabel="step")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------------------------------------
# where the errors are: what the chain concluded against the letter the scan then gave

CONCLUSION = re.compile(r"So the answer is (.+?)\. (?=[A-U]\. )")  # the scan starts where the match ends


def chain_right(output, record):
    """Did the chain conclude the gold option's name ("So the answer is <name>. A. ...")? No conclusion: False."""
    m = CONCLUSION.search(output)
    return m is not None and m.group(1) == record["options"][record["answer"]]


def chain_breakdown(rows):
    """rows of (tier, chain reached the gold name, letter right) -> {tier and "all": {n, chain, letter_if_chain,
    letter_if_not, right_with_wrong_chain}} in % (None: no row). The answer-only reward (eq. 1) teaches reasoning
    only where the letter follows the chain; a right letter after a wrong chain is a guess."""
    pct = lambda xs: round(100 * sum(xs) / len(xs), 1) if xs else None
    out = {}
    tiers = {t for t, _, _ in rows}
    for tier in [t for t in DIFFICULTIES if t in tiers] + sorted(tiers - set(DIFFICULTIES), key=str) + ["all"]:
        sel = [(c, l) for t, c, l in rows if tier in (t, "all")]
        out[tier] = dict(n=len(sel), chain=pct([c for c, _ in sel]), letter=pct([l for _, l in sel]),
                         letter_if_chain=pct([l for c, l in sel if c]), letter_if_not=pct([l for c, l in sel if not c]),
                         right_with_wrong_chain=pct([not c for c, l in sel if l]))
    return out


def scan_verdicts(rows):
    """rows of (model output, the question's options) -> the scan's lines ("B. Heparin no.") by letter: {letter:
    {"misnamed": [n lines, % whose name is not that letter's option], "match": [n, % yes], "other": [n, % yes]}}.
    Verdicts count on rightly named lines only, by whether the option is the conclusion. A working scan: 0 misnamed,
    yes on every match, no elsewhere; a positional one says yes at A 1/4, B 1/3, C 1/2, D 1 of its lines."""
    tally = {}
    for text, options in rows:
        for m in CONCLUSION.finditer(text):  # a model may conclude and scan more than once
            scan = text[m.end():].split("</think>")[0].split("So the answer is")[0]  # this conclusion's scan
            for L, name, verdict in re.findall(r"([A-U])\. (.+?) (yes|no)\.", scan):
                t, own = tally.setdefault(L, {"misnamed": [], "match": [], "other": []}), options.get(L)
                t["misnamed"].append(name != own)
                if name == own:
                    t["match" if name == m.group(1) else "other"].append(verdict == "yes")
    return {L: {k: [len(v), round(100 * sum(v) / len(v), 1) if v else None] for k, v in t.items()}
            for L, t in sorted(tally.items())}


def breakdown_md(named, right="accuracy"):
    """{label: chain_breakdown(...)} -> a Markdown table; `right` names what counts as a right answer."""
    lines = [f"| model | tier | n | chain reached the gold name | {right} | {right}, chain right | {right}, chain "
             f"wrong | of the right answers, chain wrong |", "|---|---|---|---|---|---|---|---|"]
    for label, b in named.items():
        for tier, c in b.items():
            f = lambda v: "—" if v is None else f"{v:.1f}"
            lines.append(f"| {label} | {tier} | {c['n']} | {f(c['chain'])} | {f(c['letter'])} | "
                         f"{f(c['letter_if_chain'])} | {f(c['letter_if_not'])} | {f(c['right_with_wrong_chain'])} |")
    return "\n".join(lines) + "\n"


def verdicts_md(named):
    """{label: scan_verdicts(...)} -> a Markdown table by letter: % of lines misnamed, then on the rightly named
    lines % yes where the option is the conclusion / elsewhere."""
    pct = lambda v: "—" if v[1] is None else f"{v[1]:.0f}"
    lines = ["| model | " + " | ".join("ABCD") + " |", "|---|---|---|---|---|"]
    for label, v in named.items():
        lines.append(f"| {label} | " + " | ".join(f"{pct(v[L]['misnamed'])} · {pct(v[L]['match'])} / "
                                                   f"{pct(v[L]['other'])}" if L in v else "—" for L in "ABCD") + " |")
    return "\n".join(lines) + "\n"


def report(a):
    rows = load_predictions(a.run, a.seeds)
    res = ablation(rows, a.seeds)
    test = {r["id"]: r for r in read_records(os.path.join(a.run, "synth", "test.jsonl"))}
    res["chains"], res["verdicts"] = {}, {}
    for st, _ in STAGES:  # Base scans the options too, after a conclusion it did not reason to
        seeds = a.seeds[:1] if st == "base" else a.seeds  # one Base for all seeds: counted once
        preds = [p for s in seeds for p in rows[(s, st)].values()]
        res["chains"][st] = chain_breakdown([(p.get("difficulty"), chain_right(p["output"], test[p["id"]]),
                                              p["correct"]) for p in preds])
        res["verdicts"][st] = scan_verdicts((p["output"], test[p["id"]]["options"]) for p in preds)
    named = lambda key: {label.split(" (")[0]: res[key][st] for st, label in STAGES}
    md = (table_md(res) + "\nWhere the errors are (greedy; the trained stages pooled over seeds):\n\n"
          + breakdown_md(named("chains"))
          + "\nThe scan, by letter: % of its lines that misname the option · on the rightly named lines, % yes where"
            " the option is the chain's conclusion / elsewhere:\n\n"
          + verdicts_md(named("verdicts")))
    atomic_write(os.path.join(a.run, "ablation.json"), json.dumps(res, indent=2))
    atomic_write(os.path.join(a.run, "ablation.md"), md)
    png = plot(a.run, a.seeds, os.path.join(a.run, "rl_curves.png"))
    print(md + (f"\nRL curves: {png}" if png else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="tokenizer + random model + pretraining corpus for the tiny Base")
    b.add_argument("--dump", default="data/sample_wiki.xml")
    b.add_argument("--kg", required=True)
    b.add_argument("--pool", required=True, help="filter.py's train.jsonl (options for format practice)")
    b.add_argument("--out", required=True)
    b.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary before the ~2,800 entity-name tokens "
                   "(small: the lm_head is half of every step; docs/tiny_runs.md#speed)")
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--format-items", type=int, default=3000, help="format-practice chats")
    # more drills, better copying in the scan: 25,000 fit the 20 minutes (docs/tiny_runs.md#the-base)
    b.add_argument("--drills", type=int, default=25000, help="option-scan drills (plain text)")
    b.add_argument("--fact-repeat", type=int, default=3, help="copies of the KG-fact paragraphs in pretrain.jsonl")
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="the ablation table from RUN/seed*/eval/*/predictions.jsonl")
    r.add_argument("--run", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args(argv)
    dict(base=base, report=report)[a.cmd](a)


if __name__ == "__main__":
    main()
