"""Where a tiny model's answers go wrong (docs/tiny_runs.md#the-letter-does-not-depend-on-the-chain): its greedy and
sampled answers (GRPO's rollouts) by tier, as tiny.py report breaks down test answers; how much more often a right
chain is rewarded than a wrong one within a group; whether the letter follows the chain (its conclusion swapped).

    python dev/chains.py --model RUN/seed0/rl1/best --data RUN/pool/train.jsonl --k 16 --temperature 1.0
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import model as M  # noqa: E402
import sampler  # noqa: E402
from common import eos_ids, extract_answer, pad_id, prompt_ids, read_records, reward  # noqa: E402
from tiny import CONCLUSION, breakdown_md, chain_breakdown, chain_right  # noqa: E402


def force_conclusion(output, record, rng):
    """A counterfactual of the model's own answer: `output` up to its conclusion, the concluded name replaced
    everywhere by a wrong option's (drawn by `rng`) -> (that prefix, the wrong letter); None without a conclusion."""
    m = CONCLUSION.search(output)
    if m is None:
        return None
    wrong = rng.choice(sorted(set(record["options"]) - {record["answer"]}))
    name = record["options"][wrong]
    return output[:m.start()].replace(m.group(1), name) + f"So the answer is {name}.", wrong


def group_gap(groups):
    """groups: per prompt, its rollouts' (chain reached the gold name, rewarded) -> {groups, varied: % of groups
    whose chains disagree, right / wrong: % rewarded among their chain-right / -wrong rollouts}. GRPO's advantage
    (eq. 2) compares within a group: right - wrong is all the reward says about the chain."""
    varied = [g for g in groups if len({c for c, _ in g}) == 2]
    pct = lambda xs: round(100 * sum(xs) / len(xs), 1) if xs else None
    return dict(groups=len(groups), varied=round(100 * len(varied) / len(groups), 1) if groups else None,
                right=pct([r for g in varied for c, r in g if c]), wrong=pct([r for g in varied for c, r in g if not c]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="records with a difficulty (filter.py's pool, synth's val)")
    p.add_argument("--n", type=int, default=160, help="items per tier")
    p.add_argument("--k", type=int, default=16, help="samples per item (GRPO stage 2's group)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_flush_denormal(True)
    tok, model = AutoTokenizer.from_pretrained(a.model), M.load_model(a.model)
    stops, pad = eos_ids(tok), pad_id(tok)
    recs, seen = [], {}
    for r in read_records(a.data):
        seen[r.get("difficulty")] = seen.get(r.get("difficulty"), 0) + 1
        if seen[r.get("difficulty")] <= a.n:
            recs.append(r)
    sampled = f"k={a.k}, T={a.temperature}"
    rows, forced, rng = {"greedy": [], sampled: []}, [], random.Random(a.seed)
    for i in range(0, len(recs), a.batch_size):
        part = recs[i:i + a.batch_size]
        prompts = [prompt_ids(tok, r) for r in part]
        for (key, out), k, t in zip(rows.items(), (1, a.k), (0.0, a.temperature)):
            comps = sampler.generate(model, prompts, a.max_new_tokens, temperature=t, eos_ids=stops,
                                     pad_id=pad, k=k, seed=a.seed + i)
            for j, c in enumerate(comps):
                r, text = part[j // k], tok.decode(c, skip_special_tokens=False)
                out.append((r.get("difficulty"), chain_right(text, r), reward(text, r) == 1.0))
                if k == 1 and (f := force_conclusion(text, r, rng)):
                    forced.append((r, *f))
    # a rollout is right when GRPO rewards it (common.reward 1.0: well-formed and correct); eval.py's accuracy,
    # which tiny.py report uses, also counts a right letter in a broken format (99-100% are well-formed after SFT)
    print(breakdown_md({key: chain_breakdown(out) for key, out in rows.items()}, right="reward 1"))
    follow = stay = 0  # the greedy scans again, after a chain that reasons to a wrong option
    for i in range(0, len(forced), a.batch_size):
        part = forced[i:i + a.batch_size]
        prompts = [prompt_ids(tok, r) + tok.encode(pre, add_special_tokens=False) for r, pre, _ in part]
        comps = sampler.generate(model, prompts, a.max_new_tokens, eos_ids=stops, pad_id=pad)
        for (r, pre, wrong), c in zip(part, comps):  # the same chain, now reasoning to the wrong option
            letter = extract_answer(pre + tok.decode(c, skip_special_tokens=False), r["options"])
            follow, stay = follow + (letter == wrong), stay + (letter == r["answer"])
    n = max(len(forced), 1)
    print(f"\nWith the concluded name of the {len(forced)} greedy chains that have one replaced by a wrong option, the "
          f"letter was that option {100 * follow / n:.1f}% of the time and the gold one {100 * stay / n:.1f}% (a scan "
          f"that reads the chain: 100 / 0).")
    g = group_gap([[(c, w) for _, c, w in rows[sampled][j:j + a.k]] for j in range(0, len(rows[sampled]), a.k)])
    print(f"\nWithin the {g['groups']} groups ({g['varied']}% of them with chains that disagree), rollouts whose chain "
          f"reached the gold name were rewarded {g['right']}% of the time, the others {g['wrong']}%.")


if __name__ == "__main__":
    main()
