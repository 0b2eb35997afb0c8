"""Adaptive hard-sample mining for RL stage 2 (Fleming-R1, arXiv 2509.15279, sec. 3.3).

Reads  --model CKPT (HF folder + tokenizer), --data pool.jsonl, --review review.jsonl (optional: never mined).
Writes OUT/pass_rates.jsonl ({"id", "difficulty", "passes", "n", "pass_rate"} per item, in --data
       order) and OUT/hard_pool.jsonl (highest priority first); prints the pool's composition.

The model answers every item --samples times (a pass: reward 1.0); grpo.py re-mines through mine_pool.
select_pool: (1) reviewed items out; (2) repeated failures: pass rate <= --threshold and not every sample right;
(3) all-fail items (no gradient) at most --max-zero-share of the pool; (4) --moderate-share of Moderate items above
the threshold, lowest first; (5) Difficult, Moderate, Easy, partial failures first; --pool-size keeps the first N.

Deliberate departures from the paper:
  1. Rules 3 and 4 keep groups that carry a gradient; the paper names no such shares.
  2. The tiny preset mines at the rollouts' temperature (0.7) and pools the learnable band, 1-7 passes of 8, and no
     all-fail item: all-fail groups give no gradient, and a pool of greedy failures lost 5 points where this band
     gained (docs/tiny_runs.md#stage-2).

    python mine.py --model runs/stage1/best --data pool.jsonl --out runs/mine    # torchrun for several ranks
"""
import argparse
import math
import os
import random

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

import common
import model as M
import sampler

TIER = {"difficult": 0, "moderate": 1, "easy": 2}
TINY = dict(  # --tiny: the tiny CPU run (run_tiny.sh); evidence in docs/tiny_runs.md#stage-2
    max_new_tokens=112, sample=800,  # ~400 pooled: stage 2's 60 steps x 8 prompts see most once
    temperature=0.7,  # grpo.py --tiny's rollouts: "some samples right" then means a group with a gradient
    threshold=0.875, max_zero_share=0.0, moderate_share=0.0,  # the learnable band: 1-7 passes of 8
)


def mine(model, tokenizer, records, n, batch_size=64, max_new_tokens=512, temperature=1.0, seed=0,
         kv_budget=sampler.KV_BUDGET):
    """Pass rates of `model` on `records` (n samples each) -> [{"id", "difficulty", "passes", "n", "pass_rate"}] in
    `records` order, on every rank. Rank r takes records r, r+world, ...; every rank makes the same generate calls
    (FSDP gathers the weights collectively in each), each sized to kv_budget bytes of KV cache (sampler.generate)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    stops, pad = common.eos_ids(tokenizer), common.pad_id(tokenizer)
    idx = list(range(rank, len(records), world))
    calls = math.ceil(math.ceil(len(records) / world) / batch_size)
    prog = common.Progress(calls, "mine") if rank == 0 else None
    right = lambda y, rec: common.reward(tokenizer.decode(y, skip_special_tokens=False), rec) == 1.0  # noqa: E731
    out = []
    for c in range(calls):
        part = idx[c * batch_size:(c + 1) * batch_size]
        prompts = [common.prompt_ids(tokenizer, records[i]) for i in (part or [0])]
        comps = sampler.generate(model, prompts, max_new_tokens, temperature=temperature, eos_ids=stops,
                                 seed=seed * 1_000_003 + c * world + rank, pad_id=pad, k=n, kv_budget=kv_budget)
        for j, i in enumerate(part):
            rec = records[i]
            passes = sum(right(y, rec) for y in comps[j * n:(j + 1) * n])
            out.append((i, dict(id=rec["id"], difficulty=rec.get("difficulty"), passes=passes, n=n,
                                pass_rate=passes / n)))
        if prog:
            prog.update(1)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, out)
        out = [x for p in parts for x in p]
    return [row for _, row in sorted(out, key=lambda x: x[0])]


def select_pool(records, rates, threshold=0.5, moderate_share=0.25, max_zero_share=0.25, pool_size=0, review=()):
    """The hard pool (rules 1-5 in the module docstring). records and rates are aligned lists."""
    review = set(review)
    rows = [(r, x) for r, x in zip(records, rates) if r["id"] not in review and x["passes"] < x["n"]]
    fails = [(r, x) for r, x in rows if x["pass_rate"] <= threshold]
    partial = [(r, x) for r, x in fails if x["passes"] > 0]
    zero = sorted([(r, x) for r, x in fails if x["passes"] == 0], key=lambda rx: TIER.get(rx[0]["difficulty"], 3))
    # zeros may be at most max_zero_share of (partial + zeros): z <= share / (1 - share) * partial
    z_cap = len(zero) if max_zero_share >= 1 else int(max_zero_share / (1 - max_zero_share) * len(partial))
    if not partial and zero:  # nothing learnable at all: keep the failures rather than an empty pool, and say so
        print(f"mine: no item has a partial pass rate; keeping all {len(zero)} all-fail items (they give no "
              f"gradient until the policy solves some of them)", flush=True)
        z_cap = len(zero)
    hard = partial + zero[:z_cap]
    extra = sorted([(r, x) for r, x in rows if r.get("difficulty") == "moderate" and threshold < x["pass_rate"] < 1],
                   key=lambda rx: rx[1]["pass_rate"])
    m_cap = len(extra) if moderate_share >= 1 else math.ceil(moderate_share / (1 - moderate_share) * len(hard))
    pool = hard + extra[:m_cap]
    pool.sort(key=lambda rx: (TIER.get(rx[0]["difficulty"], 3), rx[1]["passes"] == 0, rx[1]["pass_rate"]))
    return [r for r, _ in pool[:pool_size or None]]


def composition(pool, rates):
    """One line per difficulty tier: items, of which all-fail, mean pass rate."""
    by_id = {x["id"]: x for x in rates}
    lines = [f"hard pool: {len(pool)} items of {len(rates)} evaluated"]
    for d in ("difficult", "moderate", "easy", None):
        xs = [by_id[r["id"]] for r in pool if r.get("difficulty") == d]
        if xs:
            lines.append(f"  {d}: {len(xs)} ({sum(x['passes'] == 0 for x in xs)} all-fail), "
                         f"mean pass rate {sum(x['pass_rate'] for x in xs) / len(xs):.3f}")
    return "\n".join(lines)


def review_ids(path):
    """Ids of the items flagged in filter.py's review file (empty set without a file)."""
    return {r["id"] for r in common.read_jsonl(path)} if path else set()


def mine_pool(model, tok, records, args, n, size, seed, out, rank, review, prefix="", kv_budget=sampler.KV_BUDGET):
    """Mine `size` records drawn with `seed` (0: all; the same draw on every rank), select the hard pool with args'
    selection flags (grpo.py's carry the prefix "mine_"), write OUT/{pass_rates,hard_pool}.jsonl (rank 0) -> pool."""
    if 0 < size < len(records):
        records = random.Random(seed).sample(records, size)
    rates = mine(model, tok, records, n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=seed,
                 kv_budget=kv_budget)
    flags = ("threshold", "moderate_share", "max_zero_share", "pool_size")
    pool = select_pool(records, rates, review=review, **{k: getattr(args, prefix + k) for k in flags})
    if rank == 0:
        common.write_jsonl(os.path.join(out, "pass_rates.jsonl"), rates)
        common.write_jsonl(os.path.join(out, "hard_pool.jsonl"), pool)
        print(composition(pool, rates), flush=True)
    return pool


def add_pool_args(p, prefix=""):
    """The selection flags, shared with grpo.py (which prefixes them with "mine-")."""
    p.add_argument(f"--{prefix}threshold", type=float, default=0.5, help="max pass rate of a repeated failure")
    p.add_argument(f"--{prefix}moderate-share", type=float, default=0.25, help="share of learnable Moderate items")
    p.add_argument(f"--{prefix}max-zero-share", type=float, default=0.25, help="max share of all-fail items")
    p.add_argument(f"--{prefix}pool-size", type=int, default=0, help="keep the first N (0: all)")


def run(args, rank, world, device):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    records, review = common.read_records(args.data), review_ids(args.review)
    # bf16 weights on GPUs (7B: 15 GB gathered, not 30, and a bf16 KV cache), fp32 on the CPU
    model = M.load_model(args.model, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    M.shard_model(model)
    mine_pool(model, tok, records, args, args.samples, args.sample, args.seed, args.out, rank, review)
    if dist.is_initialized():  # leave together: no rank exits while another could still communicate
        dist.barrier()


@record
def main(argv=None):
    p = argparse.ArgumentParser(description="mine the stage-2 hard pool (Fleming-R1 sec. 3.3)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--review")
    p.add_argument("--samples", type=int, default=8, help="samples per item (not --n: torchrun takes that for its own)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sample", type=int, default=0, help="mine a seeded random sample of N items (0: all)")
    p.add_argument("--seed", type=int, default=0)
    add_pool_args(p)
    args = common.parse_with_preset(p, argv, TINY)
    M.run_worker(run, args, *M.setup_dist())


if __name__ == "__main__":
    main()
    M.exit_worker()
