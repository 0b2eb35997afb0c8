"""kernels/logprob.py: both paths (Triton under TRITON_INTERPRET=1, chunked PyTorch) against the naive fp64
formula and against each other. Shapes are tiny and deliberately not multiples of any block size."""
import pytest
import torch

from kernels import logprob
from kernels.logprob import token_logprobs

N, D, V = 37, 24, 301
# Triton forward: 3 row blocks x 5 vocab blocks (in 3 splits), 2 D steps; backward: 2 x 4 tiles; all ragged
TRITON = dict(block_n=16, block_v=64, block_d=16, chunk_n=32, chunk_v=100)
TORCH = dict(chunk_n=16, chunk_v=64)
SIZES = {"triton": TRITON, "torch": TORCH}


def naive(h, w, t, temperature):
    """log_softmax(h W^T / T) gathered at t, and the entropy, in fp64; rows with t = -100 give 0."""
    lp = torch.log_softmax((h.double() @ w.double().T) / temperature, dim=-1)
    keep = t != -100
    logp = lp.gather(1, t.clamp(min=0)[:, None])[:, 0] * keep
    ent = -(lp.exp() * lp).sum(1) * keep
    return logp, ent


def make(dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, D, generator=g) * scale).to(dtype).requires_grad_()
    w = torch.randn(V, D, generator=g).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[[0, 5, 36]] = -100
    t[1], t[2] = 0, V - 1  # the first and last vocab entries
    return h, w, t, torch.randn(N, generator=g), torch.randn(N, generator=g)


def close(got, ref, tol):
    """Elementwise relative tolerance, with an absolute floor of tol times the tensor's scale."""
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs, retain_graph=True)


@pytest.mark.parametrize("backend,dtype,temperature", [
    ("torch", torch.float32, 0.7), ("torch", torch.float32, 1.0), ("torch", torch.bfloat16, 0.7),
    ("triton", torch.float32, 0.7), ("triton", torch.float32, 1.0), ("triton", torch.bfloat16, 1.0)])
def test_matches_naive_fp64(backend, dtype, temperature):
    h, w, t, g, ge = make(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref_lp, ref_ent = naive(h64, w64, t, temperature)
    # log-probs only (the GRPO case): values and gradients
    lp = token_logprobs(h, w, t, temperature, backend=backend, **SIZES[backend])
    assert lp.dtype == torch.float32 and lp.shape == (N,)
    close(lp, ref_lp, tol)
    assert (lp[t == -100] == 0).all()
    dh, dw = grads((lp * g).sum(), h, w)
    rdh, rdw = grads((ref_lp * g.double()).sum(), h64, w64)
    assert dh.dtype == dtype and dw.dtype == dtype
    close(dh, rdh, tol)
    close(dw, rdw, tol)
    assert (dh[t == -100] == 0).all()  # ignored rows get no gradient
    # with the entropy output, both outputs in the loss
    lp, ent = token_logprobs(h, w, t, temperature, return_entropy=True, backend=backend, **SIZES[backend])
    close(ent, ref_ent, tol)
    assert (ent[t == -100] == 0).all()
    dh, dw = grads((lp * g).sum() + (ent * ge).sum(), h, w)
    rdh, rdw = grads((ref_lp * g.double()).sum() + (ref_ent * ge.double()).sum(), h64, w64)
    close(dh, rdh, tol)
    close(dw, rdw, tol)


def test_gradcheck_torch_path():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, -100, 0, 10, 7])
    f = lambda h, w: token_logprobs(h, w, t, 0.7, return_entropy=True, backend="torch", chunk_n=2, chunk_v=4)
    assert torch.autograd.gradcheck(f, (h, w))


def test_triton_equals_torch_path():
    """Different tile shapes on the two paths; a loss on the entropy only (so the backward gets no gradient
    for the log-probs), then one on the log-probs only (no gradient for the entropy)."""
    h, w, t, g, _ = make(torch.float32, seed=2)
    out = {}
    for backend, sizes in [("triton", dict(block_n=32, block_v=128, block_d=32, chunk_n=64, chunk_v=50)),
                           ("torch", dict(chunk_n=8, chunk_v=100))]:
        lp, ent = token_logprobs(h, w, t, 0.7, return_entropy=True, backend=backend, **sizes)
        out[backend] = (lp, ent, *grads(ent.sum(), h, w), *grads((lp * g).sum(), h, w))
    for a, b in zip(out["triton"], out["torch"]):
        close(a, b.double(), 1e-5)


def test_large_logits_stable():
    """Logits in the hundreds: a softmax without the max subtraction would overflow to inf / nan."""
    h, w, t, _, _ = make(torch.float32, seed=3, scale=40.0)
    ref_lp, ref_ent = naive(h, w, t, 1.0)
    lp, ent = token_logprobs(h, w, t, return_entropy=True, backend="torch", **TORCH)
    assert ref_lp.min() < -100  # the test really has extreme logits
    close(lp, ref_lp, 1e-5)
    close(ent, ref_ent, 1e-4)  # near-one-hot rows: entropy is a difference of close numbers


@pytest.mark.parametrize("change,match", [
    (lambda h, w, t: (h, w[:, :-1], t), "disagree on D"),
    (lambda h, w, t: (h, w, t[:-1]), r"targets must be \(N,\)"),
    (lambda h, w, t: (h[0], w, t), r"must be \(N, D\)"),
    (lambda h, w, t: (h, w, t.float()), "integer token ids"),
    (lambda h, w, t: (h, w.double(), t), "share one float dtype"),
    (lambda h, w, t: (h, w, t.index_fill(0, torch.tensor([9]), V)), rf"targets\[9\] = {V} is outside"),
    (lambda h, w, t: (h, w, t.index_fill(0, torch.tensor([4]), -1)), r"targets\[4\] = -1 is outside"),
])
def test_bad_input(change, match):
    h, w, t, _, _ = make(torch.float32)
    with pytest.raises(ValueError, match=match):
        token_logprobs(*change(h.detach(), w.detach(), t), backend="torch")


def test_bad_options():
    h, w, t, _, _ = make(torch.float32)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(h, w, t, temperature=0.0, backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        token_logprobs(h, w, t, backend="cuda")
    with pytest.raises(ValueError, match="takes sizes"):
        token_logprobs(h, w, t, backend="torch", block_n=16)


def test_triton_backward_deterministic():
    """The backward sums every gradient element in a fixed order, without atomic adds: two backward passes agree bit
    for bit. Trivial on a CPU; on a GPU (TRITON_INTERPRET=0) it is the point."""
    dev = "cuda" if torch.cuda.is_available() and not logprob.INTERPRET else "cpu"
    h, w, t, g, ge = (x.detach().to(dev) for x in make(torch.bfloat16, seed=4))
    h, w = h.requires_grad_(), w.requires_grad_()
    lp, ent = token_logprobs(h, w, t, 0.7, return_entropy=True, backend="triton", **TRITON)
    loss = (lp * g).sum() + (ent * ge).sum()
    for a, b in zip(grads(loss, h, w), grads(loss, h, w)):
        assert torch.equal(a, b)


AOT = r"""
import subprocess
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
import kernels.logprob as lp
B, kernel = lp.TRITON_BLOCKS, lp._fwd_kernel
for arch in (80, 90):
    for dt, prec in [("fp32", "ieee"), ("bf16", "tf32")]:
        meta = dict(BLOCK_N=B["block_n"], BLOCK_V=B["block_v"], BLOCK_D=B["block_d"], UPCAST=False, PREC=prec)
        sig = {a: dict(H="*" + dt, W="*" + dt, T="*i64", PART="*fp32", inv_temp="fp32").get(a, "i32")
               for a in kernel.arg_names}
        sig.update({k: "constexpr" for k in meta})
        k = triton.compile(ASTSource(kernel, sig, meta), target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=B["num_warps"]))
        assert "cubin" in k.asm, (arch, dt)
        if arch == 90 and dt == "bf16":  # the sizes were chosen so that the production case does not spill
            open("k.ptx", "w").write(k.asm["ptx"])
            r = subprocess.run([get_ptxas(arch).path, "-v", "--gpu-name=sm_90a", "k.ptx", "-o", "k.cubin"],
                               capture_output=True, text=True)
            assert " 0 bytes spill stores" in r.stderr + r.stdout, r.stderr[-500:]
print("ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_gpu(tmp_path):
    """No GPU here: compile the forward kernel (fp32 and bf16, the default GPU sizes) ahead of time to sm_80 and
    sm_90 cubin, in a subprocess without TRITON_INTERPRET, so the GPU path at least passes Triton's compiler and
    ptxas; and check that ptxas reports no register spills for bf16 on sm_90."""
    import os, subprocess, sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=1200,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
