"""Per-token log-probabilities fused with the lm_head, without ever materialising the (N, V) logits.

GRPO (Fleming-R1, arXiv 2509.15279, eq. 1) needs log pi(y_t | x, y_<t) for every sampled token. The naive
`log_softmax(h @ W.T).gather(...)` stores a (tokens x vocab) fp32 tensor, and its backward makes two more; with
Qwen's 151,936-token vocabulary that is the first thing to run out of memory. This file computes the same
numbers exactly in O(N + tile) extra memory.

The math (one row i; z = h_i W^T / T are the tempered logits, y = targets[i]):
    lse   = log sum_j exp(z_j)            logp = z_y - lse            entropy = lse - sum_j p_j z_j,  p = exp(z - lse)
  Forward, streaming over vocab blocks (never more than one (rows x block) tile alive), per row keep
    m (running max), s = sum exp(z - m), t = sum exp(z - m) * (z - m), and z_y when y falls in the block;
    a new block with max m' rescales, a = exp(m - m'):  s <- a s + sum exp(z - m'),
    t <- a (t + (m - m') s) + sum exp(z - m') (z - m'),  m <- m'.
    At the end lse = m + log s and entropy = log s - t / s (both terms O(1): no cancellation between large
    logits).                                                   Saved for backward: lse and entropy (2N floats).
  Backward, given g = dL/dlogp and e = dL/dentropy, recompute each tile z, p = exp(z - lse), and
    dL/dz_j = g * (1[j = y] - p_j) - e * p_j * (z_j - E_p[z])       (E_p[z] = lse - entropy)
    grad_hidden = (dL/dz) W / T          grad_weight = (dL/dz)^T h / T      (sums over vocab blocks / row blocks)
  Cost, in matmuls of N x V x D (the naive way does 3): 4 (forward 1; backward: recompute 1, then 1 each for
  grad_hidden and grad_weight), for extra memory that does not grow with N x V.

Two forwards of this one algorithm, one backward (`_Logprob`):
  * Triton `_fwd_kernel`: one program per (row block, vocab split), so that small N still fills the GPU; the
    splits' (m, s, t, z_y) are merged in PyTorch. bf16 or fp32 tiles in, fp32 accumulate (fp32 dots in full IEEE
    precision); TRITON_BLOCKS are sized for bf16. Run here only under the interpreter (no GPU in CI); GPU speed is
    not measured: tests/bench_logprob.py --cuda.
  * `_torch_fwd` (PyTorch): the same streaming forward with big (chunk_n x chunk_v) tiles in one reused buffer, 1/T
    folded into h. The CPU path, and the tests' second oracle besides the naive fp64 formula.
  * `_torch_bwd`, the backward of both: each logits tile is recomputed by one matmul, turned into -dL/dz in place and
    fed to two matmuls (cuBLAS on a GPU, bf16 in with fp32 logits by mm's out_dtype; elsewhere fp32). Memory: one
    fp32 tile (two with the entropy; 256 MB each at 8192 x 8192) and fp32 gradient accumulators (V x D: 2.2 GB at
    Qwen2.5-7B). Fixed summation order, no atomic adds: deterministic. Not Triton: registers cannot hold a row of
    D = 896..3584, so an atomics-free kernel recomputes each tile once per D block (17 matmuls at D = 3584).
"""
import os

import torch
import triton
import triton.language as tl

IGNORE = -100
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # triton reads it at import time, so must we
# GPU sizes, fixed (no autotune: auditable); forward tiles checked to compile for sm_90 in bf16 without register
# spills (slow test); backward: 256 MB fp32 tiles, few large cuBLAS calls
TRITON_BLOCKS = dict(block_n=64, block_v=128, block_d=32, num_warps=8, chunk_n=8192, chunk_v=8192)
TORCH_CHUNKS = dict(chunk_n=4096, chunk_v=4096)  # CPU: 64 MB fp32 tiles; see tests/bench_logprob.py


# ----------------------------------------------------------------------------- Triton
@triton.jit
def _tile_ptrs(X, i0, n, D, d0, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pointers to X[i0 : i0 + BLOCK, d0 : d0 + BLOCK_D] of a row-major (n, D) X, and the in-bounds mask."""
    i, ds = i0 + tl.arange(0, BLOCK)[:, None], d0 + tl.arange(0, BLOCK_D)[None, :]
    return X + i.to(tl.int64) * D + ds, (i < n) & (ds < D)  # int64: n * D may pass 2^31


@triton.jit
def _logits_tile(H, W, r0, c0, N, V, D, inv_temp,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    """(BLOCK_N, BLOCK_V) fp32 tile of (H[r0:] @ W[c0:].T) * inv_temp; out-of-range entries are 0."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        hp, hm = _tile_ptrs(H, r0, N, D, d0, BLOCK_N, BLOCK_D)
        wp, wm = _tile_ptrs(W, c0, V, D, d0, BLOCK_V, BLOCK_D)
        h, w = tl.load(hp, mask=hm, other=0.0), tl.load(wp, mask=wm, other=0.0)
        if UPCAST:  # the interpreter's tl.dot returns garbage on bf16
            h, w = h.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=PREC)
    return acc * inv_temp


@triton.jit
def _fwd_kernel(H, W, T, PART, N, V, D, inv_temp, V_SPLIT,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Program (row block, vocab split): the online log-sum-exp over columns [v_lo, v_lo + V_SPLIT), written to
    PART[:, split, rows] = (m, s, t, z at the target or 0); _triton_fwd merges the splits."""
    r0, v_lo = tl.program_id(0) * BLOCK_N, tl.program_id(1) * V_SPLIT
    rows = r0 + tl.arange(0, BLOCK_N)
    tgt = tl.load(T + rows, mask=rows < N, other=-100)
    m = tl.full([BLOCK_N], -1e30, dtype=tl.float32)  # running max (finite, so that (m - m') * 0 = 0)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum exp(z - m)
    t = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum exp(z - m) * (z - m)
    zy = tl.zeros([BLOCK_N], dtype=tl.float32)  # z at the target
    for c0 in range(v_lo, tl.minimum(v_lo + V_SPLIT, V), BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        inv = cols[None, :] < V
        z = _logits_tile(H, W, r0, c0, N, V, D, inv_temp, BLOCK_N, BLOCK_V, BLOCK_D, UPCAST, PREC)
        m_new = tl.maximum(m, tl.max(tl.where(inv, z, float("-inf")), 1))
        alpha = tl.exp(m - m_new)
        u = z - m_new[:, None]
        e = tl.where(inv, tl.exp(u), 0.0)
        t = alpha * (t + (m - m_new) * s) + tl.sum(e * u, 1)
        s = s * alpha + tl.sum(e, 1)
        zy += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
        m = m_new
    out, plane, ok = PART + tl.program_id(1) * N + rows, tl.num_programs(1) * N, rows < N  # PART: (4, splits, N)
    tl.store(out, m, mask=ok)
    tl.store(out + plane, s, mask=ok)
    tl.store(out + 2 * plane, t, mask=ok)
    tl.store(out + 3 * plane, zy, mask=ok)


def _triton_fwd(h, w, t, temperature, s):
    """_fwd_kernel over (row block, vocab split) programs, the splits merged here -> logp, entropy, lse (fp32)."""
    (N, D), V, bn, bv = h.shape, w.shape[0], s["block_n"], s["block_v"]
    # one program per row block leaves most SMs idle at small N: split the vocab too, to ~4 programs per SM
    sms = torch.cuda.get_device_properties(h.device).multi_processor_count if h.is_cuda else 2  # 2: tests split
    per = triton.cdiv(triton.cdiv(V, bv), triton.cdiv(4 * sms, triton.cdiv(max(N, 1), bn)))  # vocab blocks
    splits = triton.cdiv(V, per * bv)
    part = torch.empty(4, splits, N, device=h.device, dtype=torch.float32)
    _fwd_kernel[(triton.cdiv(N, bn), splits)](
        h, w, t, part, N, V, D, 1 / temperature, per * bv, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=s["block_d"],
        UPCAST=INTERPRET, PREC="ieee" if h.dtype == torch.float32 else "tf32",  # tf32: ignored for bf16/fp16
        num_warps=s["num_warps"])
    m, sz, tz, zy = part  # (splits, N) each: merge the splits' sums at their common max, as the kernel does
    mx = m.amax(0)
    a = torch.exp(m - mx)
    sz, tz = (a * sz).sum(0), (a * (tz + (m - mx) * sz)).sum(0)
    lse, keep = mx + sz.log(), t != IGNORE
    logp = torch.where(keep, zy.sum(0) - lse, 0)
    ent = torch.where(keep, sz.log() - tz / sz, 0)
    return logp, ent, lse


# ----------------------------------------------------------------------------- PyTorch
def _tiles(N, V, chunk_n, chunk_v):
    for n0 in range(0, N, chunk_n):
        for v0 in range(0, V, chunk_v):
            yield slice(n0, min(n0 + chunk_n, N)), slice(v0, min(v0 + chunk_v, V))


def _tile(buf, hs, w, r, c):
    """hs[r] @ w[c].T written into the reused flat buffer (no fresh (n, v) allocation per tile)."""
    n, v = r.stop - r.start, c.stop - c.start
    return torch.mm(hs[r], w[c].to(hs.dtype).T, out=buf[: n * v].view(n, v))


def _torch_fwd(h, w, t, temperature, want_ent, chunk_n, chunk_v):
    """The kernel's streaming forward with (chunk_n x chunk_v) tiles. Returns logp, entropy, lse (fp32)."""
    N, V = h.shape[0], w.shape[0]
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    hs = h.to(acc) / temperature  # fold 1/T into the small operand: z = hs @ W.T
    buf = torch.empty(min(N, chunk_n) * min(V, chunk_v), dtype=acc, device=h.device)
    m = torch.full((N,), -1e30, dtype=acc, device=h.device)  # finite, so that (m - m') * 0 = 0
    s, tz = torch.zeros_like(m), torch.zeros_like(m)
    for r, c in _tiles(N, V, chunk_n, chunk_v):
        z = _tile(buf, hs, w, r, c)  # (n, v)
        m_new = torch.maximum(m[r], z.amax(1))
        alpha = (m[r] - m_new).exp()
        u = z.sub_(m_new[:, None])
        e = u.exp() if want_ent else u.exp_()  # in place unless the entropy needs u as well
        if want_ent:
            tz[r] = alpha * (tz[r] + (m[r] - m_new) * s[r]) + (e * u).sum(1)
        s[r] = s[r] * alpha + e.sum(1)
        m[r] = m_new
    lse = m + s.log()
    keep = t != IGNORE
    zy = (hs * w[t.clamp(min=0)].to(acc)).sum(1)  # target logits directly: O(N D)
    logp = torch.where(keep, zy - lse, 0)
    ent = torch.where(keep, s.log() - tz / s, 0) if want_ent else torch.zeros_like(logp)
    return logp, ent, lse


def _torch_bwd(h, w, t, lse, ent, g, ge, temperature, chunk_n, chunk_v):
    """Each tile builds M = -dL/dz = p * (g [+ e (z - E_p[z])]) - g * onehot in place, then grad_hidden -= M W / T
    and grad_weight -= M^T (h / T). On CUDA (alone with mm's out_dtype) bf16/fp16 inputs stay so in the matmuls."""
    (N, D), V = h.shape, w.shape[0]
    acc = lse.dtype
    low = h.is_cuda and h.dtype in (torch.bfloat16, torch.float16)
    g = torch.zeros_like(lse) if g is None else torch.where(t != IGNORE, g, 0).to(acc)  # None: logp unused
    hs = h.to(h.dtype if low else acc) / temperature
    dh = torch.zeros(N, D, dtype=acc, device=h.device)
    dw = torch.zeros(V, D, dtype=acc, device=h.device)
    if ge is not None:
        ge, ez = torch.where(t != IGNORE, ge, 0).to(acc), lse - ent  # E_p[z]
    buf = torch.empty(min(N, chunk_n) * min(V, chunk_v), dtype=acc, device=h.device)
    for r, c in _tiles(N, V, chunk_n, chunk_v):
        z = torch.mm(hs[r], w[c].T, out_dtype=acc) if low else _tile(buf, hs, w, r, c)
        if ge is None:
            M = z.sub_(lse[r, None]).exp_().mul_(g[r, None])
        else:
            p = (z - lse[r, None]).exp_()
            M = z.sub_(ez[r, None]).mul_(ge[r, None]).add_(g[r, None]).mul_(p)
        i = ((t[r] >= c.start) & (t[r] < c.stop)).nonzero()[:, 0]  # rows whose target is in this tile
        M[i, t[r][i] - c.start] -= g[r][i]
        if low:
            M = M.to(h.dtype)
            dh[r] -= (M @ w[c]).to(acc) / temperature
            dw[c] -= (M.T @ hs[r]).to(acc)
        else:
            dh[r].addmm_(M, w[c].to(acc), alpha=-1 / temperature)
            dw[c].addmm_(M.T, hs[r], alpha=-1)
    return dh.to(h.dtype), dw.to(w.dtype)


class _Logprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, t, temperature, want_ent, backend, s):
        if backend == "triton":
            h, w, t = h.contiguous(), w.contiguous(), t.contiguous()
            logp, ent, lse = _triton_fwd(h, w, t, temperature, s)
        else:
            logp, ent, lse = _torch_fwd(h, w, t, temperature, want_ent, s["chunk_n"], s["chunk_v"])
        ctx.save_for_backward(h, w, t, lse, ent)
        ctx.args = (temperature, s["chunk_n"], s["chunk_v"])
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: skip their terms
        return logp, ent

    @staticmethod
    def backward(ctx, g, ge):
        dh, dw = _torch_bwd(*ctx.saved_tensors, g, ge, *ctx.args)
        return dh, dw, None, None, None, None, None


# ----------------------------------------------------------------------------- public API
def token_logprobs(hidden, weight, targets, temperature=1.0, return_entropy=False, *, backend, **blocks):
    """log_softmax((hidden @ weight.T) / temperature)[i, targets[i]] for each row i, as (N,) fp32.

    Rows with target -100 give 0 (and entropy 0) and no gradient. Differentiable w.r.t. hidden and weight
    (both outputs). fp32/bf16/fp16 inputs give fp32 outputs; fp64 (PyTorch path only, for gradcheck) gives fp64.
    backend: "triton" or "torch" (model.py: Triton on CUDA); `blocks` overrides TRITON_BLOCKS (block_n/v/d; chunk_n/v
    of the backward) or TORCH_CHUNKS (chunk_n/v).
    Example: token_logprobs(h, lm_head.weight, ids[1:], 0.7, backend="torch") with h the hidden states of ids[:-1].
    """
    def bad(msg):
        raise ValueError(f"token_logprobs: {msg}")
    if hidden.dim() != 2 or weight.dim() != 2:
        bad(f"hidden must be (N, D) and weight (V, D); got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        bad(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} disagree on D")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        bad(f"targets must be (N,) = ({hidden.shape[0]},); got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        bad(f"targets must be integer token ids (int64), got {targets.dtype}")
    if not (hidden.is_floating_point() and hidden.dtype == weight.dtype):
        bad(f"hidden and weight must share one float dtype; got {hidden.dtype} and {weight.dtype}")
    if not (hidden.device == weight.device == targets.device):
        bad(f"tensors on different devices: {hidden.device}, {weight.device}, {targets.device}")
    if not temperature > 0:
        bad(f"temperature must be > 0, got {temperature}")
    V = weight.shape[0]
    out = ((targets < 0) | (targets >= V)) & (targets != IGNORE)
    if bool(out.any()):  # one host sync; worth it to turn a silent wrong answer into an error
        i = int(out.nonzero()[0, 0])
        bad(f"targets[{i}] = {int(targets[i])} is outside [0, {V}) and is not {IGNORE}")
    if backend not in ("triton", "torch"):
        bad(f"unknown backend {backend!r} (use 'triton' or 'torch')")
    sizes = dict(TRITON_BLOCKS if backend == "triton" else TORCH_CHUNKS)
    if set(blocks) - set(sizes):
        bad(f"backend {backend!r} takes sizes {sorted(sizes)}, got {sorted(blocks)}")
    sizes.update(blocks)
    if backend == "triton" and hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        bad(f"the Triton path takes fp32/bf16/fp16, got {hidden.dtype}")
    logp, ent = _Logprob.apply(hidden, weight, targets.long(), float(temperature), return_entropy, backend, sizes)
    return (logp, ent) if return_entropy else logp
