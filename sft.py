"""Supervised fine-tuning: the CoT cold start (Fleming-R1, arXiv 2509.15279, sec. 3.2, "thinking before answering").

Reads  --data sft.jsonl (distill.py's {"messages": [...]} rows, or {"text": ...} rows), --init an HF model folder.
Writes RUN_DIR/final (HF folder + tokenizer), RUN_DIR/state (resumable, rewritten atomically every --save-every),
       RUN_DIR/metrics.jsonl (loss, val_loss, lr, grad_norm, tokens/s), RUN_DIR/rejects.jsonl (rows over --max-len).

Chat rows: the loss covers the assistant turn only, its closing <|im_end|> included (the model learns to stop). The
global batch of step s is a fixed function of (seed, s), split over ranks and micro-batches after sorting by length,
and the summed token loss is divided by the whole global batch's loss tokens: 1 or N processes, any --micro-batch,
give the same update, and a killed run resumes to where an uninterrupted one ends. FSDP2 (model.shard_model).

Deliberate departures from the paper:
  1. {"text"} rows train every token (in --max-len windows): the tiny run pretrains its Base with this file.
  2. A chat row longer than --max-len is rejected, not truncated: a cut chain loses its answer.
  3. The tiny cold start (--tiny cold: 1,500 steps, 12 epochs of 2,000 chains) is trained to convergence on the
     validation split (docs/tiny_runs.md#g3-cold-start).

    torchrun --standalone --nproc_per_node 8 sft.py --data sft.jsonl --init Qwen2.5-7B --out runs/sft
"""
import argparse
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

import model as M
from common import MetricsLog, Progress, common_prefix, pad_id, parse_with_preset, read_jsonl, write_jsonl

# --tiny names one of the two tiny-run stages trained here: cold (the default, the cold start) or base (pretraining
# the stand-in for a pretrained model on tiny.py base's corpus). Evidence: docs/tiny_runs.md
TINY = dict(
    micro_batch=16, fsdp_per_block=False,  # 32 rows were slower (old_design.md#the-base); one FSDP2 unit
    max_len=512, warmup=0.05,  # the tiny run's rows are far shorter; a tiny model warms up fast
    val_frac=0.05, eval_every=200, save_every=100,  # a validation loss at the end, few passes over it
    cold=dict(steps=1500, batch_size=16, lr=1e-3),  # 12 epochs of 2,000 chains: converged on val (#g3-cold-start)
    base=dict(epochs=1, batch_size=64, micro_batch=32, lr=3e-3, val_frac=0.01),  # one pass; the facts repeat inside
)

# ----------------------------------------------------------------------------------------------- batches

def pad_batch(seqs, starts, pad_id, device="cpu"):
    """Right-pad token lists into (B, T) inputs and next-token targets; tokens before starts[i] get no loss (and no
    attention mask is needed: under the causal mask real tokens never see the pads after them).
    seqs [[5, 6, 7, 8]], starts [2] -> x [[5, 6, 7, 8]], y [[-100, 7, 8, -100]] (6 predicts 7, 7 predicts 8)."""
    T = max(len(s) for s in seqs)
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), M.IGNORE, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        x[i, :len(s)] = torch.tensor(s)
        y[i, max(st, 1) - 1:len(s) - 1] = torch.tensor(s[max(st, 1):])
    return x.to(device), y.to(device)


def pack_batch(seqs, starts, pad_id, device="cpu"):
    """pad_batch's rows packed first-fit, longest first, into as few rows as hold them at the longest one's length,
    plus each token's position in its own row and a segment id (-1: pad): model.forward(segment_ids=...) attends
    within a row, so pad_batch's log-probs and gradients come without its padding (42% of the tiny Base's tokens).
    seqs [[5, 6, 7], [8, 9], [1]], starts 1 -> x [[5, 6, 7], [8, 9, 1]], y [[6, 7, -100], [9, -100, -100]],
    pos [[0, 1, 2], [0, 1, 0]], seg [[0, 0, 0], [1, 1, 2]]"""
    T, bins = max(map(len, seqs)), []
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        b = next((b for b in bins if b[0] + len(seqs[i]) <= T), None)
        if b is None:
            b = [0, []]
            bins.append(b)
        b[0] += len(seqs[i])
        b[1].append(i)
    x, y = pad_batch([sum((seqs[i] for i in b), []) for _, b in bins], [T + 1] * len(bins), pad_id)  # y all -100
    pos, seg = torch.zeros_like(x), torch.full_like(x, -1)
    for r, (_, b) in enumerate(bins):
        o = 0
        for i in b:
            n = len(seqs[i])
            st = max(starts[i], 1)
            y[r, o + st - 1:o + n - 1] = torch.tensor(seqs[i][st:])
            pos[r, o:o + n], seg[r, o:o + n] = torch.arange(n), i
            o += n
    return x.to(device), y.to(device), pos.to(device), seg.to(device)


def split_for_rank(items, lengths, rank, world, micro):
    """Split one global batch (list of indices) for this rank: sorted by length, dealt round-robin to ranks, cut
    into micro-batches of `micro`. Every rank gets the same number of micro-batches (FSDP collectives run in
    lockstep); a rank short of data gets None slots, to be run as zero-loss dummies."""
    order = sorted(items, key=lambda i: -lengths[i])
    share = order[rank::world]
    n_micro = math.ceil(math.ceil(len(order) / world) / micro)
    return [share[j * micro:(j + 1) * micro] or None for j in range(n_micro)]


# ----------------------------------------------------------------------------------------------- data

def special_ids(tokenizer):
    """(end of text, end of turn) ids: <|endoftext|> closes a plain-text row, <|im_end|> an assistant turn."""
    vocab = tokenizer.get_vocab()  # built anew on every call (152k entries for Qwen): call once
    return vocab.get("<|endoftext|>", tokenizer.eos_token_id), vocab.get("<|im_end|>", tokenizer.eos_token_id)


def encode(tokenizer, row, where, specials):
    """-> (ids, start): the loss covers ids[start:]. `where` ("path:line") prefixes every error."""
    eot, eos = specials
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError(f"{where}: field 'text' must be a non-empty string")
        return tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [eot], 1
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: row needs a 'messages' list or a 'text' string")
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not str(last.get("content", "")).strip():
        raise ValueError(f"{where}: field 'messages' must end with a non-empty assistant turn (got role "
                         f"{last.get('role') if isinstance(last, dict) else last!r})")
    prompt_text = tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"{where}: the chat template renders the prompt differently inside the full conversation")
    # the prompt as common.prompt_ids gives it at inference, then the reply tokenized alone, as the model writes it
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    reply = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    ends = [i for i, t in enumerate(reply) if t == eos]
    if not ends:
        raise ValueError(f"{where}: the chat template does not close the assistant turn with EOS id {eos}")
    return prompt + reply[:ends[-1] + 1], len(prompt)  # what follows <|im_end|> (a newline) is not the model's


def load_data(path, tokenizer, max_len, val_frac, seed):
    """-> (train [(ids, start)], val [(ids, start)], rejects). Chat rows over max_len are rejected with their
    reason; text rows are cut into max_len windows, each starting on the last token of the one before, so every
    token after the first is a target exactly once."""
    rows, data, rejects, specials = read_jsonl(path), [], [], special_ids(tokenizer)
    for i, row in enumerate(rows, 1):
        ids, start = encode(tokenizer, row, f"{path}:{i}", specials)
        if "text" in row:
            data += [(ids[j:j + max_len], 1) for j in range(0, len(ids) - 1, max_len - 1)]
        elif len(ids) > max_len:
            rejects.append({"line": i, "id": row.get("id"), "reason": f"{len(ids)} tokens > --max-len {max_len}"})
        else:
            data.append((ids, start))
    if not data:
        raise ValueError(f"{path}: no usable rows ({len(rows)} rows, {len(rejects)} longer than --max-len)")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(len(data) * val_frac)
    return [data[i] for i in sorted(perm[n_val:])], [data[i] for i in sorted(perm[:n_val])], rejects


def global_batch(n, batch_size, step, seed):
    """Indices of the global batch of `step`: epoch e = a fixed permutation seeded with seed + e."""
    per_epoch = max(1, n // batch_size)  # the partial last batch is dropped: every step sees batch_size rows
    e, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist()
    return perm[pos * batch_size:(pos + 1) * batch_size]


# ----------------------------------------------------------------------------------------------- training

def shares_prefix(data, idx, min_shared=16):
    """Whether the micro-batches of these rows (a step's global batch, or a whole validation set) run the prefix their
    rows share once (group_logprobs: each FSDP unit runs twice) or as packed rows (once). Decided on the rows of all
    ranks, so every rank issues the same collectives (NCCL hangs otherwise); a few shared tokens are not worth it."""
    seqs = [data[i][0] for i in idx]
    limit = min(min(data[i][1] for i in idx), min(map(len, seqs)) - 1)  # no loss in it, a token left to every row
    return len(seqs) > 1 and common_prefix(seqs, limit) >= min_shared


def token_loss_sum(model, data, idx, pad_id, device, amp, shared):
    """Summed next-token loss over the micro-batch (None -> a zero-loss dummy that still runs FSDP's collectives);
    shared: shares_prefix() of the rows of every rank."""
    if idx is None:
        x = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
        with amp:  # the passes a real micro-batch makes, hence its collectives
            out = model.group_logprobs(x, torch.ones_like(x), x, x, 1, entropy=False)[0] if shared else model(x)
        return out.sum() * 0.0, 0
    seqs, starts = [data[i][0] for i in idx], [data[i][1] for i in idx]
    with amp:
        if shared:  # their shared prefix runs once, as GRPO runs a group's prompt (group_logprobs: same values)
            P = common_prefix(seqs, min(min(starts), min(map(len, seqs)) - 1))
            comps, tgt = pad_batch([s[P - 1:] for s in seqs], [max(st - P + 1, 1) for st in starts], pad_id, device)
            prompt = torch.tensor([seqs[0][:P]], device=device)
            logp, _ = model.group_logprobs(prompt, torch.ones_like(prompt), comps[:, 1:], tgt[:, :-1], len(seqs),
                                           entropy=False)
        else:
            x, y, pos, seg = pack_batch(seqs, starts, pad_id, device)
            logp, _ = model.seq_logprobs(x, y, entropy=False, position_ids=pos, segment_ids=seg)  # 0 where IGNORE
    return -logp.sum(), sum(map(len, seqs))


@torch.no_grad()
def evaluate(model, data, rank, world, micro, pad_id, device, amp):
    """Held-out loss per token over all of `data`, sharded over ranks."""
    lengths, shared = [len(d[0]) for d in data], shares_prefix(data, range(len(data)))
    loss_sum = 0.0
    for idx in split_for_rank(list(range(len(data))), lengths, rank, world, micro):
        loss_sum += token_loss_sum(model, data, idx, pad_id, device, amp, shared)[0].item()
    n_tok = sum(len(ids) - max(start, 1) for ids, start in data)  # every rank holds all of `data`
    return M.all_sum([loss_sum], device)[0] / n_tok


def train(a):
    final_dir = os.path.join(a.out, "final")
    if os.path.isfile(os.path.join(final_dir, "config.json")):  # re-running a finished stage is a no-op
        print(f"sft: {final_dir} exists, nothing to do (use a new --out to train again)", flush=True)
        return
    rank, world, device = M.setup_dist()
    torch.manual_seed(a.seed)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(a.init)
    model = M.load_model(a.init, device=device, dtype=torch.float32)  # fp32 master weights
    cfg = model.config
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer of {a.init} has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{cfg.vocab_size}: they do not belong together")
    if a.max_len > cfg.max_position_embeddings:
        raise ValueError(f"--max-len {a.max_len} exceeds the model context max_position_embeddings "
                         f"{cfg.max_position_embeddings}")
    train_set, val_set, rejects = load_data(a.data, tokenizer, a.max_len, a.val_frac, a.seed)
    lengths = [len(d[0]) for d in train_set]
    pad = pad_id(tokenizer)  # pad positions carry no loss
    cuda = device.type == "cuda"
    model = M.shard_model(model, mixed_precision=cuda, per_block=a.fsdp_per_block)
    # a GPU without torchrun is not sharded: bf16 autocast there, FSDP's mixed precision policy otherwise
    amp = torch.autocast("cuda", torch.bfloat16) if cuda and not dist.is_initialized() else nullcontext()
    opt = M.make_optimizer(model, a.lr)
    bs = min(a.batch_size, len(train_set))
    total = a.steps or a.epochs * max(1, len(train_set) // bs)
    warmup = a.warmup if a.warmup >= 1 else int(a.warmup * total)
    state_dir = os.path.join(a.out, "state")
    extra = M.load_state(state_dir, model, opt)  # None without a state
    step = extra["step"] if extra else 0
    if extra and (extra.get("total") != total or extra.get("batch_size") != bs):
        raise ValueError(f"{state_dir}: saved for total={extra.get('total')} batch_size={extra.get('batch_size')}, "
                         f"this run has total={total} batch_size={bs}: use a new --out")
    log = MetricsLog(os.path.join(a.out, "metrics.jsonl")) if rank == 0 else None
    if rank == 0:
        if os.path.exists(log.path):  # drop the rows of steps after the saved state: they are redone now
            write_jsonl(log.path, [r for r in read_jsonl(log.path) if r.get("step", 0) <= step])
        write_jsonl(os.path.join(a.out, "rejects.jsonl"), rejects)
        print(f"sft: {len(train_set)} train / {len(val_set)} val rows ({len(rejects)} rejected as too long), "
              f"{world} rank(s) on {device}, steps {step}->{total}, global batch {bs}"
              + (f", resumed from {state_dir}" if extra else ""), flush=True)
    prog = Progress(total - step, "sft") if rank == 0 else None
    while step < total:
        t0 = time.time()
        lr = M.lr_at(step, total, warmup, a.lr)  # cosine to 0.1 lr
        for g in opt.param_groups:
            g["lr"] = lr
        items = global_batch(len(train_set), bs, step, a.seed)
        n_tok = sum(lengths[i] - max(train_set[i][1], 1) for i in items)  # the global batch's: known to every rank
        micros, shared = split_for_rank(items, lengths, rank, world, a.micro_batch), shares_prefix(train_set, items)
        loss_sum, seen = torch.zeros((), device=device), 0
        for j, idx in enumerate(micros):
            if hasattr(model, "set_requires_gradient_sync"):  # per-block units sync every micro-batch (unsynced, FSDP2
                # holds unsharded fp32 gradients: 30 GB a rank at 7B); one unit (a tiny model) on the last only
                model.set_requires_gradient_sync(a.fsdp_per_block or j == len(micros) - 1)
            loss, n = token_loss_sum(model, train_set, idx, pad, device, amp, shared)
            # FSDP averages gradients over ranks: * world turns that mean back into the sum over the global batch
            (loss * world / n_tok).backward()
            loss_sum, seen = loss_sum + loss.detach(), seen + n
        gnorm = M.clip_grad(model, a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_all, seen_all = M.all_sum([loss_sum.item(), seen], device)
        if rank == 0:
            dt = time.time() - t0
            row = {"step": step, "loss": loss_all / n_tok, "lr": lr, "grad_norm": gnorm,
                   "tokens_per_s": seen_all / dt, "epoch": step / max(1, len(train_set) // bs)}
            log.log(row)
            prog.update(1, loss=row["loss"], lr=lr, gnorm=gnorm)
        if val_set and (step % a.eval_every == 0 or step == total):
            vl = evaluate(model, val_set, rank, world, a.micro_batch, pad, device, amp)
            if rank == 0:
                log.log({"step": step, "val_loss": vl})
                print(f"sft: step {step} val_loss {vl:.4f}", flush=True)
        if step % a.save_every == 0:
            M.save_state(state_dir, model, opt, {"step": step, "total": total, "batch_size": bs, "seed": a.seed})
    M.save_model(model, final_dir, tokenizer, torch.bfloat16 if cuda else None)  # bf16 training: bf16, as HF
    if rank == 0:
        print(f"sft: wrote {final_dir}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="sft.jsonl: {'messages': [...]} or {'text': ...} rows")
    p.add_argument("--init", required=True, help="HF-format model folder (with its tokenizer)")
    p.add_argument("--out", required=True, help="RUN_DIR")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (rows per optimizer step)")
    p.add_argument("--micro-batch", type=int, default=1,
                   help="rows per forward on each rank (the fp32 T x 152k logits dominate memory)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=float, default=0.03, help="warmup steps (>= 1) or fraction of all steps")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-len", type=int, default=4096, help="longer rows are rejected (RUN_DIR/rejects.jsonl)")
    p.add_argument("--val-frac", type=float, default=0.02, help="held-out share for the validation loss")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fsdp-per-block", action=argparse.BooleanOptionalAction, default=True,
                   help="one FSDP2 unit per block (off: the whole model is one unit; model.shard_model)")
    a = parse_with_preset(p, argv, TINY)
    if a.max_len < 2:
        p.error(f"--max-len {a.max_len}: a row needs at least 2 tokens (one input, one target)")
    return a


@record
def main(argv=None):
    M.run_worker(train, parse_args(argv))


if __name__ == "__main__":
    main()
    M.exit_worker()
