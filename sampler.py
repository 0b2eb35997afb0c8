"""Batched KV-cache sampler for model.Transformer: rollouts (GRPO groups), teacher/verifier calls, evaluation.

gpt-fast style: a preallocated KV cache, left-padded prompts, one batched prefill, then one token a step for every
unfinished row. Group mode (k samples per prompt: GRPO) prefills each prompt once and replicates its cache k times.

    generate(model, [[5, 6, 7], [8]], max_new_tokens=4, eos_ids=[2])
    -> e.g. [[11, 12, 2], [9, 9, 9, 9]]: row 0 stopped at its EOS (kept), row 1 hit max_new_tokens
"""
from contextlib import contextmanager

import torch

from common import common_prefix


@contextmanager
def unsharded(model):
    """FSDP2: gather every unit's full weights once and keep them until the rollout ends (no per-step
    all-gather, and ranks may take different numbers of decode steps). No-op for a plain model."""
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)  # FSDP's defaults: root keeps its weights


def sample(logits, temperature, u):
    """logits (N, V) fp32, u (N, 1) uniform in [0, 1) -> tokens (N,) drawn from softmax(logits / temperature)
    (greedy at temperature 0, where u is not used)."""
    if temperature == 0:
        return logits.max(-1).indices  # argmax's first-index tie rule, and 3x faster than argmax on CPU (measured)
    probs = (logits / temperature).log_softmax(-1).exp()  # (N, V)
    # inverse-CDF draw, one uniform per row (CPU multinomial draws one per entry); fp32 cdf within 6e-8 of fp64 at 152k
    cdf = probs.cumsum(-1)  # (N, V); its total is 1 only up to rounding, so scale u by each row's total
    tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[1] - 1)  # (N, 1); mass 0: never
    return tok[:, 0]


KV_BUDGET = 24 * 2**30  # bytes of KV cache a generate call may hold (7B on 80 GB: weights, optimizer and the rest fit)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=0.0, eos_ids=(), seed=None, pad_id=0, k=1, min_shared=16,
             kv_budget=KV_BUDGET):
    """prompts: list of token-id lists -> len(prompts)*k completions (rows i*k .. i*k+k-1 belong to prompt i),
    each ending at its first EOS (kept) or after max_new_tokens. A prefix of >= min_shared tokens common to all
    prompts is prefilled once. A call whose KV cache would pass kv_budget bytes runs its prompts in consecutive
    chunks that fit, drawing from one random stream (a budget that is not reached changes nothing)."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty (it needs at least one token, e.g. a BOS)")
    if not prompts or max_new_tokens < 1:
        return []
    c, dev = model.config, next(model.parameters()).device
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed) if seed is not None else gen.seed()
    with unsharded(model):
        dtype = model.lm_head.weight.dtype  # the compute dtype (bf16 under FSDP mixed precision)
        row = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * dtype.itemsize * \
            (max(map(len, prompts)) + max_new_tokens)  # bytes of one row's cache
        n = max(1, int(kv_budget // (row * k)))  # prompts per chunk
        return [y for i in range(0, len(prompts), n) for y in _generate(
            model, prompts[i:i + n], max_new_tokens, temperature, eos_ids, gen, pad_id, k, min_shared, dtype)]


def _generate(model, prompts, max_new_tokens, temperature, eos_ids, gen, pad_id, k, min_shared, dtype):
    c, dev = model.config, next(model.parameters()).device
    # The common prefix (system prompt, chat template) runs once, its keys/values copied to every row; each row keeps
    # a suffix, left-padded after it (positions come from the mask). Not in group mode, whose prefill is 1/k of the rows
    # already (docs/old_design.md#speed)
    Ls = common_prefix(prompts, min(len(p) for p in prompts) - 1)
    Ls = Ls if Ls >= min_shared and k == 1 else 0
    B, N, P = len(prompts), len(prompts) * k, max(map(len, prompts))
    ids = torch.full((B, P - Ls), pad_id, dtype=torch.long)  # the suffixes
    mask = torch.zeros(B, P + max_new_tokens, dtype=torch.long)  # 1 = real token, over the whole cache
    mask[:, :Ls] = 1
    for i, p in enumerate(prompts):  # left padding: every row's last prompt token sits in slot P-1
        ids[i, P - len(p):] = torch.tensor(p[Ls:])
        mask[i, P - len(p) + Ls:] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    lens = mask[:, :P].sum(1)  # (B,) next position of each row
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=dev)
    # one cache of N rows for the whole call: the prompts prefill its first B rows, their copies go in place
    shape = (c.num_hidden_layers, N, c.num_key_value_heads, P + max_new_tokens, c.head_dim)
    cache = (torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev))
    pre = tuple(x[:, :B] for x in cache)
    # ---- prefill: the shared prefix for row 0, copied to all rows; then the left-padded suffixes at once
    if Ls:
        prefix = torch.tensor([prompts[0][:Ls]], device=dev)  # (1, Ls)
        model(prefix, kv_cache=tuple(x[:, :1] for x in pre), return_hidden=True)
        for x in pre:
            x[:, 1:, :, :Ls] = x[:, :1, :, :Ls]
    # only the last position's logits are needed
    h = model(ids, attention_mask=mask[:, :P], kv_cache=pre, cache_pos=Ls, return_hidden=True)  # (B, P-Ls, D)
    logits = model.lm_head(h[:, -1].to(dtype)).float()  # (B, V); FSDP may have cast h to fp32
    if k > 1:  # group mode: prompt i's state to rows i*k .. i*k+k-1, last prompt first so no source is overwritten
        for x in cache:
            for i in reversed(range(B)):
                x[:, i * k + (i == 0):(i + 1) * k] = x[:, i:i + 1]
        logits, mask, lens = (x.repeat_interleave(k, dim=0) for x in (logits, mask, lens))
    out = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    live = torch.arange(N, device=dev)  # the original row of each row still in the batch
    done = torch.zeros(N, dtype=torch.bool, device=dev)  # per batch row: has it made its EOS?
    # ---- decode: one token per live row per step. Finished rows leave the batch (compacted in place, a layer at a
    # time) once they are a quarter of it; each row's uniform comes from one (N,) draw a step, whoever has finished
    for t in range(max_new_tokens):
        u = torch.rand(N, 1, generator=gen, device=dev)[live] if temperature > 0 else None
        tok = sample(logits, temperature, u)  # (n,)
        out[live, t] = tok
        done |= torch.isin(tok, eos)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if 4 * int(done.sum()) >= len(live):
            keep = (~done).nonzero()[:, 0]
            live, done, tok, mask, lens = live[keep], done[keep], tok[keep], mask[keep], lens[keep]
            for x in cache:
                for layer in x:
                    layer[:len(keep)] = layer[keep]
            cache = tuple(x[:, :len(keep)] for x in cache)
        h = model(tok[:, None], position_ids=(lens + t)[:, None], attention_mask=mask[:, :P + t + 1],
                  kv_cache=cache, cache_pos=P + t, return_hidden=True)  # (n, 1, D)
        logits = model.lm_head(h[:, -1].to(dtype)).float()  # (n, V)
    stop = set(eos_ids)  # each row cut after its first EOS
    return [row[:next((j + 1 for j, x in enumerate(row[:t + 1]) if x in stop), t + 1)] for row in out.tolist()]
