"""GRPO, the two RL stages of Fleming-R1 (arXiv 2509.15279, sec. 3.3, eq. 1-3): `torchrun grpo.py --stage 1|2`.

Reads  --data pool.jsonl (filter.py), --init CKPT (HF folder + tokenizer: the cold start, or stage 1's best/ for
       stage 2), --val records (checkpoint selection only), stage 2 --pool hard_pool.jsonl (mine.py; or mined here).
Writes RUN_DIR/metrics.jsonl, RUN_DIR/final and RUN_DIR/best (HF folders; best: the best greedy accuracy on --val),
       RUN_DIR/state (the same command resumes the same run), stage 2: RUN_DIR/mine_STEP/{pass_rates,hard_pool}.jsonl.
Stage 2 re-mines with the current weights by design (the paper's adaptive mining): this file imports mine.py, the
one stage file another stage file imports.

The objective. For a prompt x, k completions y_i are sampled at --temperature (no top-p: the log-probs describe the
sampling distribution), scored by common.reward (correctness + format) and given group advantages A_i = r_i -
mean_j r_j (eq. 2-3). The loss (eq. 1), one update per rollout batch, over the N completions of the global batch:
    L = -(1/N) * sum_i A_i * sum_t log pi(y_i,t | x, y_i,<t) / loss_norm
Variants, all off by default:
    --std-norm          A_i / (std_j r_j + eps)                                       DeepSeekMath GRPO
    --kl-coef B         + B * KL(pi || pi_ref) per token, k3 estimator, frozen init    DeepSeekMath GRPO
    --clip-eps E --ppo-epochs U   clipped ratio pi/pi_old, U updates per rollout batch PPO / DeepSeekMath GRPO
    --token-mean        divide by the global count of completion tokens instead       DAPO token-level loss
    --drop-zero-var     groups with all-equal rewards leave the loss and its divisor  DAPO dynamic sampling
Stage 1: Easy + Moderate items until --max-steps or the plateau test. Stage 2: the hard pool, k = 16.

Deliberate departures from the paper:
  1. loss_norm is a constant (max_new_tokens), not each completion's length: no length is favoured (Dr. GRPO).
  2. RUN_DIR/best is chosen on a validation split's greedy accuracy; the paper does not say how it picks one.
  3. The tiny preset samples at temperature 0.7 and never re-mines in stage 2 (mine.py mines once, before it).
  4. --shuffle-rewards permutes each batch's rewards before the advantages: a control, not a method
     (docs/tiny_runs.md#controls).

Memory, Qwen2.5-7B on 8 x 80 GB, the defaults: 15 GB of sharded fp32 state and AdamW a GPU; the rollout adds the
bf16 weights (15 GB) and a 5 GB KV cache (64 rows x 1.3k tokens x 56 KB); mining's 512 rows would need 37 GB, so
every generate call is cut to --kv-cache-gb (24); a micro-batch of 2 completions ~25 GB. Fits.
"""
import argparse
import os
import random
import time

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import common
import mine
import model as M
import sampler

TINY = dict(  # --tiny: the tiny CPU run (run_tiny.sh); each value chosen on the validation split (docs/tiny_runs.md)
    prompts=16, max_new_tokens=112,  # 16 groups a step; a six-option checking chain ends within 112 tokens
    micro_batch=32, fsdp_per_block=False,  # whole groups a forward; a tiny model is one FSDP2 unit
    lr=1e-4,  # 2e-4 swung validation by +-3 points between evaluations (#stage-1)
    temperature=0.7,  # at 1.0 the rollouts' noise (16-22% malformed) drowned the signal: val fell (#stage-1)
    save_every=30, plateau_window=20, plateau_patience=150,  # the 150 steps are the budget: no early stop
    remine_size=800, mine_threshold=0.875, mine_max_zero_share=0.0, mine_moderate_share=0.0,  # as mine.py --tiny
    stage1=dict(max_steps=150, eval_every=50),  # the reward still rose at 150 steps (#stage-1)
    stage2=dict(max_steps=60, eval_every=30, remine_every=0, prompts=8),  # k = 16: 128 rollouts as stage 1 (#stage-2)
)


def get_args(argv=None):
    p = argparse.ArgumentParser(description="GRPO stage 1 / stage 2 (Fleming-R1 sec. 3.3)")
    a = p.add_argument
    a("--stage", type=int, choices=(1, 2), required=True)
    a("--data", required=True, help="filter.py pool: unified records with difficulty")
    a("--init", required=True, help="HF folder with tokenizer to start from")
    a("--out", required=True, help="RUN_DIR")
    a("--val", help="validation records, none of them in --data; greedy accuracy on them selects RUN_DIR/best")
    a("--pool", help="stage 2: hard_pool.jsonl from mine.py (default: mine it at step 0)")
    a("--review", help="filter.py review.jsonl: flagged items are never mined")
    a("--seed", type=int, default=0)
    # rollouts
    a("--prompts", type=int, default=64, help="prompts per step over all ranks (a multiple of world size)")
    a("--k", type=int, help="samples per prompt (default 8 in stage 1, 16 in stage 2)")
    a("--max-new-tokens", type=int, default=1024)
    a("--temperature", type=float, default=1.0)
    # objective
    a("--std-norm", action="store_true", help="DeepSeekMath GRPO: divide advantages by the group std")
    a("--kl-coef", type=float, default=0.0, help="DeepSeekMath GRPO: k3 KL to the frozen --init model")
    a("--clip-eps", type=float, default=0.0, help="PPO ratio clipping (use with --ppo-epochs > 1)")
    a("--ppo-epochs", type=int, default=1, help="updates per rollout batch")
    a("--token-mean", action="store_true", help="DAPO: average over the global count of completion tokens")
    a("--drop-zero-var", action="store_true", help="drop groups whose rewards are all equal")
    a("--shuffle-rewards", action="store_true", help="control: permute each batch's rewards (the gain should vanish)")
    # optimisation
    a("--lr", type=float, default=1e-6)
    a("--grad-clip", type=float, default=1.0)
    a("--micro-batch", type=int, default=2, help="completions per forward/backward")
    a("--mixed-precision", action=argparse.BooleanOptionalAction, help="FSDP2 bf16 compute (default: on CUDA)")
    a("--fsdp-per-block", action=argparse.BooleanOptionalAction, default=True,
      help="one FSDP2 unit per block (off: the whole model is one unit; model.shard_model)")
    a("--max-steps", type=int, default=500)
    a("--save-every", type=int, default=25)
    a("--eval-every", type=int, default=50)
    a("--val-limit", type=int, default=0, help="use the first N validation records (0: all)")
    # stage 1 plateau test
    a("--plateau-window", type=int, default=20, help="moving-average window (steps)")
    a("--plateau-patience", type=int, default=50, help="steps without the moving reward improving")
    # stage 2 mining
    a("--remine-every", type=int, default=100, help="re-mine the hard pool every N steps (0: never)")
    a("--remine-size", type=int, default=0, help="items evaluated per re-mining (0: the whole --data)")
    a("--mine-n", type=int, default=8, help="samples per item when mining")
    a("--kv-cache-gb", type=float, default=sampler.KV_BUDGET / 2**30,
      help="KV cache per generate call; larger calls run in chunks (sampler.generate)")
    mine.add_pool_args(p, prefix="mine-")
    args = common.parse_with_preset(p, argv, TINY, variant=lambda a: f"stage{a.stage}")
    args.k = args.k or (8 if args.stage == 1 else 16)
    args.loss_norm = float(args.max_new_tokens)  # departure 1
    if args.k < 2:
        p.error("--k must be >= 2: a group of one has no advantage")
    if args.ppo_epochs > 1 and args.clip_eps <= 0:
        p.error("--ppo-epochs > 1 needs --clip-eps: only the clipped ratio corrects for the stale samples")
    return args


# ----------------------------------------------------------------------------------------------- the objective

def group_advantages(rewards, std_norm=False, eps=1e-4):
    """Eq. 2-3: A_ij = r_ij - mean_j r_ij over the k samples of prompt i, rewards (P, k) -> (P, k): [[1, 0, 0, 1],
    [.5, .5, .5, .5]] -> [[.5, -.5, -.5, .5], [0, 0, 0, 0]]. std_norm (DeepSeekMath GRPO) also divides by the group's
    std + eps: an all-equal group gives 0, never NaN."""
    adv = rewards - rewards.mean(1, keepdim=True)
    if std_norm:
        adv = adv / (rewards.std(1, keepdim=True) + eps)
    return adv


def k3_kl(ref_logp, logp):
    """Per-token k3 estimator of KL(pi || ref) (Schulman 2020): exp(d) - d - 1 >= 0 with d = ref - logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(logp, mask, adv, old_logp=None, ref_logp=None, clip_eps=0.0, kl_coef=0.0):
    """The *summed* per-token loss of a micro-batch; the caller divides by the global count (see update()).
    logp, mask, old_logp, ref_logp: (B, T) per sampled token; adv (B,). Default: -sum_t A * logp (eq. 1)."""
    A = adv[:, None]  # (B, 1)
    if clip_eps > 0:  # PPO surrogate; ratio == 1 at the first epoch, so its gradient is then eq. 1's
        old_logp = logp.detach() if old_logp is None else old_logp
        ratio = torch.exp(logp - old_logp)  # (B, T)
        obj = torch.minimum(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    else:
        obj = logp * A
    if kl_coef > 0:
        obj = obj - kl_coef * k3_kl(ref_logp, logp)
    return -(obj * mask).sum()


def peak_gb(device):
    """CUDA: the peak GB allocated since the last call, which starts the next phase (metrics.jsonl: peak_gb_<phase>)."""
    if device.type != "cuda":
        return None
    gb = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return gb


def seconds_since(t0):
    """Wall-clock seconds since t0, once the GPU has finished the work queued so far."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time() - t0


def group_batch(rows, pieces, pad_id, device):
    """rows [(prompt, completion)], pieces [[row indices with one prompt]] -> the inputs of group_logprobs:
    prompts (G, P) left-padded, their mask, completions (N, C) right-padded, targets (pads -100), rows per prompt."""
    P = max(len(rows[g[0]][0]) for g in pieces)
    prompts, pmask = torch.full((len(pieces), P), pad_id), torch.zeros(len(pieces), P, dtype=torch.long)
    for j, g in enumerate(pieces):  # left padding: every prompt ends in slot P-1, its completions start at P
        p = rows[g[0]][0]
        prompts[j, P - len(p):], pmask[j, P - len(p):] = torch.tensor(p), 1
    comps = [rows[i][1] for g in pieces for i in g]
    C = max(map(len, comps))
    ids, tgt = torch.full((len(comps), C), pad_id), torch.full((len(comps), C), M.IGNORE)
    for i, c in enumerate(comps):
        ids[i, :len(c)] = tgt[i, :len(c)] = torch.tensor(c)
    counts = torch.tensor([len(g) for g in pieces], device=device)
    return prompts.to(device), pmask.to(device), ids.to(device), tgt.to(device), counts


def update(policy, opt, rows, adv, keep, args, world, pad_id, ref=None):
    """Eq. 1: micro-batched forward/backward and optimizer step(s) on this rank's rollouts: rows [(prompt,
    completion)] in groups of args.k, adv (n,), keep (n,) 0/1 (--drop-zero-var); n is the same on every rank.
    The global loss is the sum over all ranks' completions / D, D = (global count of kept completions) * loss_norm,
    or with --token-mean their global count of tokens. FSDP2 *averages* gradients over ranks, so each rank
    backpropagates world * (its share of the sum) / D: whatever the number of ranks or micro-batches, the same step.
    -> {timings, entropy and KL sums, loss, grad_norm}, or None when no completion is kept anywhere (skipped)."""
    n, k, mb, dev = len(rows), args.k, args.micro_batch, next(policy.parameters()).device
    kept = keep.tolist()
    local = sum(x * len(c) for x, (_, c) in zip(kept, rows)) if args.token_mean else sum(kept) * args.loss_norm
    denom = M.all_sum([local], dev)[0]
    if denom == 0:
        return None
    scale = world / denom
    # Whole groups per micro-batch, each prompt run once for its completions (group_logprobs; per-block FSDP gathers
    # every block twice for it, ~1 s of a ~20 s 7B step), larger groups in pieces of mb rows, sorted by length. Their
    # number depends on n, k and mb only: every rank runs the same FSDP collectives
    pieces = [list(range(j, min(j + mb, i + k))) for i in range(0, n, k) for j in range(i, i + k, mb)]
    pieces.sort(key=lambda g: len(rows[g[0]][0]) + max(len(rows[i][1]) for i in g))
    per = max(1, mb // k)
    chunks = [[group_batch(rows, pieces[j:j + per], pad_id, dev), torch.tensor(sum(pieces[j:j + per], []))]
              for j in range(0, len(pieces), per)]
    t = time.time()
    with torch.no_grad():  # pi_old for the PPO ratio, pi_ref for the KL: fixed for all epochs
        for ch in chunks:
            ch.append(policy.group_logprobs(*ch[0], args.temperature)[0] if args.ppo_epochs > 1 else None)
            ch.append(ref.group_logprobs(*ch[0], args.temperature, entropy=False)[0] if ref is not None else None)
    stats = dict(t_logprob=seconds_since(t), t_backward=0.0, t_opt=0.0, ent_sum=0.0, ent_n=0, loss=0.0, kl_sum=0.0)
    for epoch in range(args.ppo_epochs):
        for batch, s, old, ref_lp in chunks:
            t = time.time()
            logp, ent = policy.group_logprobs(*batch, args.temperature)  # (B, T), (N,)
            tgt = batch[3]
            mask = (tgt != -100).float() * keep[s, None].to(dev)  # (B, T)
            loss = policy_loss(logp, mask, adv[s].to(dev), old, ref_lp, args.clip_eps, args.kl_coef) * scale
            stats["t_logprob"] += seconds_since(t)
            t = time.time()
            loss.backward()
            stats["t_backward"] += seconds_since(t)
            if epoch == 0:
                stats["ent_sum"] += ent.sum().item()
                stats["ent_n"] += ent.numel()
                stats["loss"] += loss.item() / world
                if ref_lp is not None:  # the KL term of the loss, summed over completion tokens
                    stats["kl_sum"] += (k3_kl(ref_lp, logp.detach()) * (tgt != -100)).sum().item()
        t = time.time()
        stats["grad_norm"] = M.clip_grad(policy, args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats["t_opt"] += seconds_since(t)
    return stats


# ----------------------------------------------------------------------------------------------- stage control

def plateau(rewards, zero_fracs, window, patience, eps=0.01, sparsity=0.9):
    """Stage 1's stop test (the paper: train until performance plateaus, signalled by reward sparsity): the reason,
    or None (always before `window` steps). Reward plateau: the `window`-step moving average of the reward has not
    risen by more than `eps` in the last `patience` steps. Reward sparsity: over the last `window` steps, on
    average >= `sparsity` of the groups had zero advantage (all k right, or all wrong): almost no gradient left."""
    if len(rewards) < window:
        return None
    zf = sum(zero_fracs[-window:]) / window
    if zf >= sparsity:
        return f"reward sparsity: {zf:.3f} of groups had zero advantage over the last {window} steps"
    if len(rewards) >= window + patience:
        ma = [sum(rewards[i - window:i]) / window for i in range(window, len(rewards) + 1)]
        if max(ma[-patience:]) <= max(ma[:-patience]) + eps:
            return (f"reward plateau: moving average {ma[-1]:.4f} has not improved by > {eps} in {patience} "
                    f"steps (best before {max(ma[:-patience]):.4f})")
    return None


def sample_prompts(pool, n, seed, step):
    """The step's global batch of prompts: a function of (seed, step) only, hence the same for any number of
    ranks and after a resume. Without replacement within a step."""
    return random.Random(seed * 1_000_003 + step).sample(pool, min(n, len(pool)))


def evaluate(policy, tok, val, args):
    """Greedy accuracy on the validation records (data-parallel through mine.mine with n=1, temperature 0)."""
    rates = mine.mine(policy, tok, val, 1, max_new_tokens=args.max_new_tokens, temperature=0.0,
                      kv_budget=args.kv_cache_gb * 2**30)
    return sum(r["pass_rate"] for r in rates) / max(len(rates), 1)


# ----------------------------------------------------------------------------------------------- one step

def validate(policy, tok, val, val_key, run, args, rank, log, dtype):
    """Greedy accuracy on --val at this step; a new best is saved as RUN_DIR/best with its score. Stage 2 starts
    from stage 1's best/, which recorded its score on this very split: at step 0 it is not evaluated again."""
    step = run["step"]
    score = os.path.join(args.init, "val_score.jsonl")
    known = common.read_jsonl(score)[0].get(val_key) if step == 0 and os.path.exists(score) else None
    acc = evaluate(policy, tok, val, args) if known is None else known
    run["eval_step"] = step
    if acc > run["best"]:
        run["best"] = acc
        M.save_model(policy, os.path.join(args.out, "best"), tok, dtype)
        if rank == 0:
            common.write_jsonl(os.path.join(args.out, "best", "val_score.jsonl"), [{val_key: acc}])
    if rank == 0:
        log.log(dict(step=step, val_acc=acc, best_val_acc=run["best"]))
        print(f"step {step} val_acc {acc:.4f} (best {run['best']:.4f})", flush=True)


def rollout(policy, tok, batch, args, seed, stops, pad_id):
    """k samples per prompt -> prompts (token ids), completions (rows i*k .. i*k+k-1: prompt i), seconds."""
    prompts = [common.prompt_ids(tok, r) for r in batch]
    t0 = time.time()
    comps = sampler.generate(policy, prompts, args.max_new_tokens, temperature=args.temperature,
                             eos_ids=stops, seed=seed, pad_id=pad_id, k=args.k, kv_budget=args.kv_cache_gb * 2**30)
    return prompts, comps, seconds_since(t0)


def advantages(tok, batch, comps, args, gen=None):
    """Eq. 2-3: rewards (common.reward: correctness + format) and group advantages -> rewards (P, k), advantages
    (P, k), zero (P,): groups with no learning signal, keep (P * k,): 0 for the rows --drop-zero-var leaves out."""
    texts = [tok.decode(c, skip_special_tokens=False) for c in comps]
    rewards = torch.tensor([common.reward(t, batch[i // args.k]) for i, t in enumerate(texts)]).view(-1, args.k)
    if args.shuffle_rewards:  # the control: the same rewards, on the wrong completions (a fixed permutation per call)
        rewards = rewards.flatten()[torch.randperm(rewards.numel(), generator=gen)].view(-1, args.k)
    adv = group_advantages(rewards, args.std_norm)
    zero = rewards.amax(1) == rewards.amin(1)
    keep = (~zero).float().repeat_interleave(args.k) if args.drop_zero_var else torch.ones(len(comps))
    return rewards, adv, zero, keep


def step_metrics(step, rewards, zero, comps, stops, upd, with_kl, times, device):
    """The step's metrics summed over ranks (a collective): reward, accuracy (share of reward 1.0), format rate,
    zero-advantage group fraction, length, truncation, loss, entropy, KL, grad norm, seconds. upd: update()'s dict."""
    local = dict(reward=rewards.sum(), right=(rewards == 1).sum(), well_formed=(rewards != -0.5).sum(),
                 zero=zero.sum(), tokens=sum(map(len, comps)), completions=len(comps), groups=len(zero),
                 truncated=sum(not c or c[-1] not in stops for c in comps),
                 **{k: upd[k] if upd else 0 for k in ("ent_sum", "ent_n", "loss", "kl_sum")})
    s = dict(zip(local, M.all_sum(local.values(), device)))  # loss: each rank holds its share
    N, G = s["completions"], s["groups"]
    m = dict(step=step, reward=s["reward"] / N, accuracy=s["right"] / N, format_rate=s["well_formed"] / N,
             zero_adv_frac=s["zero"] / G, mean_len=s["tokens"] / N, trunc_rate=s["truncated"] / N,
             entropy=s["ent_sum"] / max(s["ent_n"], 1), skipped=upd is None,
             tokens_per_s=s["tokens"] / (times["t_gen"] + times["t_train"]), **times)
    if upd:
        m.update(loss=s["loss"], **{k: upd[k] for k in ("grad_norm", "t_logprob", "t_backward", "t_opt")})
        if with_kl:
            m["kl"] = s["kl_sum"] / max(s["ent_n"], 1)
    return m


# ----------------------------------------------------------------------------------------------- the loop

def load_data(args, world):
    """-> records, by_id (and the hard pool's), val, val_key (what a val score depends on), review ids, the pool of
    prompts (stage 2 without --pool: None, mined at step 0)."""
    records = common.read_records(args.data)
    by_id = {r["id"]: r for r in records}
    val = common.read_records(args.val)[:args.val_limit or None] if args.val else []
    val_key = f"{os.path.abspath(args.val or '')}:{len(val)}:{args.max_new_tokens}"
    keys = {k for r in records for k in common.item_keys(r)}
    leak = [v["id"] for v in val if any(k in keys for k in common.item_keys(v))]
    if leak:  # best/ would be chosen on items the policy trains on
        raise SystemExit(f"--val {args.val}: {len(leak)} of its {len(val)} records are items of the training pool "
                         f"--data {args.data} (same options, and question or id), e.g. {', '.join(leak[:5])}")
    if args.prompts % world:
        raise SystemExit(f"--prompts {args.prompts} must be a multiple of the world size {world}")
    if args.stage == 1:
        pool = [r for r in records if r.get("difficulty") in ("easy", "moderate")]
    else:
        pool = common.read_records(args.pool) if args.pool else None
        by_id.update({r["id"]: r for r in pool or []})
    if pool is not None and len(pool) < args.prompts:
        raise SystemExit(f"{args.data}: the stage {args.stage} pool has {len(pool)} items, fewer than --prompts")
    return records, by_id, val, val_key, mine.review_ids(args.review), pool


def train(args, rank, world, device):
    from transformers import AutoTokenizer
    torch.manual_seed(args.seed)
    # CPU: loss-scaled gradients reach fp32 denormals, ~20x slower; flushed to zero (docs/old_design.md#speed)
    torch.set_flush_denormal(True)
    tok = AutoTokenizer.from_pretrained(args.init)
    stops, pad = common.eos_ids(tok), common.pad_id(tok)
    records, by_id, val, val_key, review, pool = load_data(args, world)
    mp = args.mixed_precision if args.mixed_precision is not None else device.type == "cuda"
    save_dtype = torch.bfloat16 if mp else None  # best/ and final/ in bf16 after bf16 training, as HF's Qwen
    policy = M.shard_model(M.load_model(args.init, device), mp, args.fsdp_per_block)
    ref = None
    if args.kl_coef > 0:  # the frozen reference for the KL variant: the --init weights
        ref = M.shard_model(M.load_model(args.init, device).requires_grad_(False), mp, args.fsdp_per_block)
    opt = M.make_optimizer(policy, args.lr, betas=(0.9, 0.99))  # constant lr, as usual in RL
    # the run's state, saved with the weights in RUN_DIR/state: a resumed run goes on from the same step and RNG
    run = dict(step=0, best=-1.0, eval_step=-1, rewards=[], zero_fracs=[], stop=None, pool_ids=None)
    state_dir = os.path.join(args.out, "state")
    if os.path.isdir(state_dir):
        run.update(M.load_state(state_dir, policy, opt) or {})
        if run["pool_ids"] is not None:
            pool = [by_id[i] for i in run["pool_ids"]]
        if rank == 0:
            print(f"resumed {state_dir} at step {run['step']}", flush=True)
    mpath = os.path.join(args.out, "metrics.jsonl")
    if rank == 0 and os.path.exists(mpath):  # drop rows a killed run logged after its last checkpoint
        common.write_jsonl(mpath, [r for r in common.read_jsonl(mpath) if r["step"] < run["step"]])
    log = common.MetricsLog(mpath)
    prog = common.Progress(args.max_steps, f"grpo stage {args.stage}")
    prog.done = run["step"]
    per_rank = args.prompts // world

    while True:
        step = run["step"]
        done = step >= args.max_steps or run["stop"] is not None
        mem, _ = {}, peak_gb(device)  # each phase's peak memory from here (CUDA)
        # ---- validate: greedy accuracy on --val; RUN_DIR/best is chosen on it alone
        if val and run["eval_step"] != step and (step % args.eval_every == 0 or done):
            validate(policy, tok, val, val_key, run, args, rank, log, save_dtype)
            mem["val"] = peak_gb(device)
        if done:
            break
        # ---- stage 2: (re)mine the hard pool with the current weights
        t0 = time.time()
        if args.stage == 2 and (pool is None or (args.remine_every and step and step % args.remine_every == 0)):
            pool = mine.mine_pool(policy, tok, records, args, args.mine_n, args.remine_size, args.seed + step,
                                  os.path.join(args.out, f"mine_{step}"), rank, review, prefix="mine_",
                                  kv_budget=args.kv_cache_gb * 2**30)
            run["pool_ids"] = [r["id"] for r in pool]
            if len(pool) < args.prompts:
                run["stop"] = f"hard pool has {len(pool)} items, fewer than --prompts {args.prompts}"
                continue
        t_mine, mem["mine"] = time.time() - t0, peak_gb(device)
        # ---- rollout: the global batch of prompts is fixed by (seed, step); each rank samples its own slice
        batch = sample_prompts(pool, args.prompts, args.seed, step)[rank * per_rank:(rank + 1) * per_rank]
        prompts, comps, t_gen = rollout(policy, tok, batch, args, args.seed * 1_000_003 + step * world + rank,
                                        stops, pad)
        mem["gen"] = peak_gb(device)
        # ---- advantages (eq. 2-3), then the update (eq. 1): log-probs at the sampling temperature, loss, step
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step * world + rank)
        rewards, adv, zero, keep = advantages(tok, batch, comps, args, gen)
        t0 = time.time()
        rows = [(prompts[i // args.k], c) for i, c in enumerate(comps)]
        upd = update(policy, opt, rows, adv.flatten(), keep, args, world, pad, ref)
        t_train, mem["train"] = time.time() - t0, peak_gb(device)
        # ---- log, stop test (stage 1), checkpoint
        peaks = {f"peak_gb_{k}": v for k, v in mem.items() if v is not None}
        m = step_metrics(step, rewards, zero, comps, stops, upd, ref is not None,
                         dict(t_gen=t_gen, t_train=t_train, t_mine=t_mine, **peaks), device)
        run["rewards"].append(m["reward"])
        run["zero_fracs"].append(m["zero_adv_frac"])
        if rank == 0:
            log.log(m)
            prog.update(1, reward=m["reward"], acc=m["accuracy"], fmt=m["format_rate"], zero=m["zero_adv_frac"],
                        len=m["mean_len"], gen_s=t_gen, train_s=t_train)
        run["step"] = step + 1
        if args.stage == 1:
            run["stop"] = plateau(run["rewards"], run["zero_fracs"], args.plateau_window, args.plateau_patience)
        if run["step"] % args.save_every == 0 or run["stop"] or run["step"] >= args.max_steps:
            M.save_state(state_dir, policy, opt, run)

    reason = run["stop"] or f"reached --max-steps {args.max_steps}"
    M.save_model(policy, os.path.join(args.out, "final"), tok, save_dtype)
    if rank == 0:
        log.log(dict(step=run["step"], stop=reason, best_val_acc=run["best"]))
        print(f"stage {args.stage} stopped at step {run['step']}: {reason}", flush=True)


@record
def main(argv=None):
    args = get_args(argv)
    M.run_worker(train, args, *M.setup_dist())


if __name__ == "__main__":
    main()
    M.exit_worker()
