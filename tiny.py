"""tiny.py — the two pieces only the tiny (CPU) mode needs, around the real stage scripts.

1. `base`: the stand-in for "a pretrained instruct model", which is where the paper's recipe starts (Qwen2.5-7B is
   pretrained and instruction-tuned before Fleming-R1 touches it). Reads the sample dump, the KG (kg.py) and the
   training pool (filter.py); writes OUT/tokenizer (byte-level BPE, ChatML, every KG entity name one token),
   OUT/init (a random Qwen2-shaped model) and OUT/pretrain.jsonl for sft.py:
     - {"text"} rows: the articles as plain text and every KG edge as a sentence — the *knowledge* a pretrained
       model has — and option-scan drills ("C. Heparin" ... "So the answer is Heparin. A. Aspirin no.
       B. Warfarin no. C. Heparin yes.");
     - {"messages"} rows: format practice on a task with no medical reasoning in it ("Which option reads 'X'?"),
       so Base can write <think>…</think><answer>L</answer> and find a named option's letter, as an instruct
       model can. Base is then scored exactly like every later row; it has the facts and the format
       but was never taught to reason from findings to an answer — that is what the cold start adds (§3.2).
2. `report`: the ablation table of the paper's Table 4 in miniature — accuracy of Base, +CoT cold start, +RL stage 1,
   +RL stage 2 on the held-out synthetic test set, overall and by difficulty, mean over seeds, each stage's gain
   as the mean of paired per-question differences with its standard error — as Markdown + JSON, and a PNG of
   the RL curves (matplotlib optional).

  python tiny.py base --dump data/sample_wiki.xml --kg RUN/kg --pool RUN/pool/train.jsonl --out RUN/base_init
  python tiny.py report --run RUN --seeds 0 1 2
"""
import argparse, json, math, os, random

import mwparserfromhell as mwp

from common import atomic_write, build_messages, options_text, read_jsonl, write_jsonl
from distill import POS, _fill, _plain, answer_scan

def article_texts(dump, chunk=600):
    """The articles as plain text, in pieces of about `chunk` characters, each headed by its title: short rows of
    similar length batch with little padding."""
    from kg import iter_dump
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
        s = _fill(POS[e["relation"]], 1, h=h, t=t) + "."  # the wording the KG-path teacher's chains use
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
    # Every KG entity name (with its leading space, capitalised and mid-sentence) is one token: the tiny model must
    # find the name its chain reached among the options, which a 1M-parameter model learns for one symbol far
    # sooner than for a span (5.5 BPE tokens per name at vocab 2,048). Qwen splits names too; a 7B model copes.
    names = {e["name"] for e in read_jsonl(os.path.join(a.kg, "entities.jsonl")) if len(e["name"]) >= 4}
    # "A." .. "E." too: the scan's "C. Heparin" is then the very token pair of the prompt's option line
    words = [f"{x}." for x in "ABCDE"] + sorted({" " + v for n in names for v in (n, _plain(n))})
    # The system prompt stays 49 BPE tokens although one token would make every cold-start row and rollout a third
    # shorter: as one token (tried 2026-11-22), Base wrote the format on 10% of the test items instead of 92%. The
    # tiny model copies the tags from the prompt's own example ("<answer>C</answer>"), so it must see them.
    tok = train_tokenizer(tok_corpus, os.path.join(a.out, "tokenizer"), vocab_size=a.vocab, words=words)
    # RoPE base 1e4, not Qwen's 1e6: with 32-dim heads and short contexts, 1e6 leaves few fast-rotating
    # (position-telling) frequencies, and copying needs sharp relative positions
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


def _correct(path):
    """predictions.jsonl -> {id: (correct 0/1, difficulty)} for the greedy sample."""
    return {r["id"]: (float(r["correct"]), r.get("difficulty")) for r in read_jsonl(path) if r["sample"] == 0}


def _mean_se(xs):
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else float("nan")
    return 100 * m, 100 * se


def ablation(run, seeds):
    """Accuracy per stage (mean over seeds) and each stage's gain over the previous one as the mean of paired
    per-question differences, pooled over seeds (each (seed, question) pair is one difference), with its SE."""
    base = _correct(os.path.join(run, "eval_base", "predictions.jsonl"))  # one Base: it precedes the recipe
    preds = {(s, st): base if st == "base" else _correct(os.path.join(run, f"seed{s}", "eval", st, "predictions.jsonl"))
             for s in seeds for st, _ in STAGES}
    ids = sorted(preds[(seeds[0], "base")])
    found = {v[1] for v in base.values()}
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
                cell["gain"], cell["gain_se"] = _mean_se(
                    [preds[(s, st)][i][0] - preds[(s, prev)][i][0] for s in seeds for i in sel])
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


def report(a):
    res = ablation(a.run, a.seeds)
    md = table_md(res)
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
    b.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary, before the entity-name tokens")
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--format-items", type=int, default=3000, help="format-practice chats")
    # 40,000, not 20,000: the cold start of seed 0 then scores 51.3% on the test set, not 41.6% (issue #9); the
    # scan's copying, not the medicine, was where its chains lost their right conclusions
    b.add_argument("--drills", type=int, default=40000, help="option-scan drills (plain text)")
    b.add_argument("--fact-repeat", type=int, default=3, help="copies of the KG-fact paragraphs in pretrain.jsonl")
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="the ablation table from RUN/seed*/eval/*/predictions.jsonl")
    r.add_argument("--run", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args(argv)
    base(a) if a.cmd == "base" else report(a)


if __name__ == "__main__":
    main()
