"""Which option lookup can the tiny model learn? The diagnostic behind the shape of the tiny run's chains
(docs/tiny_runs.md#why-the-chain-ends-with-a-scan). Trains the tiny Qwen2 shape from random init on option lists
"\\n A. x1 \\n B. x2 \\n C. x3 \\n D. x4" of names drawn from --names ids, then 4 lookups of options drawn with
replacement (none answerable by elimination), and prints the looked-up token's accuracy every 100 steps:

  letter-to-name   "\\n C." -> x3        what followed this token in the list (an induction head)
  name-to-letter   "\\n x3 : _" -> C.    what preceded this name (the chains once ended "Paracetamol: C.")
  name-then-letter "\\n x3" -> C.        the same, the letter right after the name
  scan             "\\n x3 \\n A. x1 no \\n B. x2 no \\n C. x3 yes \\n D. x4 no \\n answer" -> C.
                   (scored: the verdicts and the "yes" line's letter; --stop-at-match ends at the "yes" line, as
                   the chains do; --paired restates the answer's name on every line: "\\n C. x3 : x_answer yes")

    python dev/bench_lookup.py --direction letter-to-name --names 2800 --steps 400
"""
import argparse, os, random, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
from model import ModelConfig, Transformer, init_weights  # noqa: E402

NL, COLON, SPACE, YES, NO, ANSWER = 1, 2, 3, 8, 9, 10
LETTERS = [4, 5, 6, 7]
FIRST_NAME = 11


def row(names, direction, rng, k=1, stop=False, paired=False):
    """A name is k ids from `names` (k > 1: a multi-token name built from frequent pieces, as BPE would split it)."""
    opts = [rng.sample(names, k) for _ in range(4)]
    seq, tgt = [], []
    for L, x in zip(LETTERS, opts):
        seq += [NL, L, *x]
        tgt += [-100] * (2 + k)
    if direction == "scan":  # the answer's name, then every option copied and marked, then the marked letter
        j = rng.randrange(4)
        seq += [NL, *opts[j]]
        tgt += [-100] * (1 + k)
        for i, (L, x) in enumerate(zip(LETTERS, opts)):
            pair = [COLON, *opts[j]] if paired else []  # "C. x3 = x_answer? yes": the two names side by side
            seq += [NL, L, *x, *pair, YES if i == j else NO]
            tgt += [-100, -100, *([-100] * (k + len(pair))), YES if i == j else NO]  # scored: the verdict
            if stop and i == j:  # as the chains scan: up to the match
                break
        seq += [NL, ANSWER, LETTERS[j]]
        tgt += [-100, -100, LETTERS[j]]  # scored: the letter of the line marked YES
        return seq, tgt[1:] + [-100]
    for _ in range(4):
        j = rng.randrange(4)
        if direction == "letter-to-name":  # every name token is scored
            seq += [NL, LETTERS[j], *opts[j]]
            tgt += [-100, -100, *opts[j]]
        else:  # the letter is scored
            part = [NL, *opts[j]] + ([COLON, SPACE] if direction == "name-to-letter" else []) + [LETTERS[j]]
            seq += part
            tgt += [-100] * (len(part) - 1) + [part[-1]]
    return seq, tgt[1:] + [-100]  # position i predicts token i + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--direction", default="letter-to-name",
                    choices=["letter-to-name", "name-to-letter", "name-then-letter", "scan"])
    ap.add_argument("--names", type=int, default=2800, help="distinct name ids (the tiny KG has ~2,800 name tokens)")
    ap.add_argument("--name-tokens", type=int, default=1, help="tokens per name, drawn from the --names ids")
    ap.add_argument("--stop-at-match", action="store_true", help="scan: stop at the matching line, as the chains do")
    ap.add_argument("--paired", action="store_true",
                    help="scan: each line restates the answer's name after the option's")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    cfg = ModelConfig(vocab_size=FIRST_NAME + a.names, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e4,
                      tie_word_embeddings=True)
    model = init_weights(Transformer(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    names, hits, yes_hits, t0 = list(range(FIRST_NAME, FIRST_NAME + a.names)), [], [], time.time()
    for step in range(1, a.steps + 1):
        rows = [row(names, a.direction, rng, a.name_tokens, a.stop_at_match, a.paired) for _ in range(a.batch)]
        T = max(len(r[0]) for r in rows)  # scans that stop at the match differ in length: pad on the right
        rows = [(r[0] + [NL] * (T - len(r[0])), r[1] + [-100] * (T - len(r[1]))) for r in rows]
        x, y = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])  # (B, T)
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, step / 50)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sel = y != -100
        if a.direction == "scan":  # the final letter (position -2 predicts the last token); and the YES verdicts
            yes = y == YES
            pred = logits.argmax(-1)
            yes_hits.append(((pred[yes] == YES).float().mean().item(), (pred[y == NO] == NO).float().mean().item()))
            sel = torch.zeros_like(sel)
            sel[torch.arange(len(sel)), (y != -100).long().cumsum(1).argmax(1)] = True  # the last scored token
        hits.append((logits.argmax(-1)[sel] == y[sel]).float().mean().item())
        if step % 100 == 0:
            verdicts = (f", verdicts right on YES lines {sum(h[0] for h in yes_hits[-100:]) / 100:.1%}, on NO lines "
                        f"{sum(h[1] for h in yes_hits[-100:]) / 100:.1%}" if yes_hits else "")
            print(f"{a.direction} names={a.names}x{a.name_tokens} step {step}: loss {loss.item():.3f}, lookup "
                  f"accuracy {sum(hits[-100:]) / 100:.1%} (chance 25%){verdicts}, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
