"""Benchmark (a script, not a test): peak memory and time of token_logprobs forward+backward vs the naive
log_softmax(h @ W.T).gather, on CPU (the chunked PyTorch path) at Qwen2.5-0.5B's lm_head size, or with --cuda
(the Triton forward + cuBLAS backward, bf16) at Qwen2.5-0.5B's and -7B's (D = 896 and 3584).

    python tests/bench_logprob.py            # N=4096 D=896 V=151936 fp32: needs ~9 GB free, several minutes
    python tests/bench_logprob.py --n 1024 --v 32768 --rounds 1          # quick look
    python tests/bench_logprob.py --cuda     # one GPU: Triton vs naive, bf16, D = 896 then 3584

On CUDA both methods run in this process: time = CUDA events around forward, and forward+backward, median of
--rounds after a warm-up (the Triton kernel compiles there); memory = peak allocated during one forward+backward
minus what was allocated before it (grad_weight included, h and W not); errors = max |logp - ref| and the largest
relative error of grad_hidden / grad_weight, against the naive formula in fp32.

Each measurement runs in its own subprocess, so one method cannot inherit the other's heap, and the two
methods alternate for --rounds rounds, so both see similar load from whatever else shares the CPU.
Memory = peak resident set size (VmHWM in /proc/self/status) during one forward+backward, minus the resident
size just before it; the peak is reset (writing 5 to /proc/self/clear_refs) after a small untimed warm-up
(library initialisation). It counts everything the step allocates, grad_weight (V x D fp32, which both
methods produce) included; the inputs h and W are excluded. Time = wall-clock and process CPU time
(user+sys, less sensitive to other processes on a shared machine) of that one forward+backward; the
report takes the fastest round of each method.
"""
import argparse, json, os, resource, subprocess, sys, time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mib(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(a):
    from kernels.logprob import token_logprobs
    torch.manual_seed(0)
    h = (torch.randn(a.n, a.d) * 0.5).requires_grad_()
    w = (torch.randn(a.v, a.d) * 0.05).requires_grad_()
    t = torch.randint(0, a.v, (a.n,))
    sizes = {k: getattr(a, k) for k in ("chunk_n", "chunk_v") if getattr(a, k) is not None}

    def step(h, w, t):
        h.grad = w.grad = None  # both methods allocate grad_weight fresh: it counts for both
        if a.method == "naive":
            lp = torch.log_softmax(h @ w.T, dim=-1).gather(1, t[:, None])[:, 0]
        else:
            lp = token_logprobs(h, w, t, backend="torch", **sizes)
        lp.sum().backward()
        h.grad = w.grad = None

    step(h[:256].detach().requires_grad_(), w[:8192].detach().requires_grad_(), t[:256] % 8192)  # warm-up
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS high-water mark
    base, cpu0, t0 = _mib("VmRSS"), _cpu(), time.perf_counter()
    step(h, w, t)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    print(json.dumps(dict(method=a.method, peak_mib=_mib("VmHWM") - base, wall_s=wall, cpu_s=cpu)))


def cuda_main(a):
    from kernels.logprob import token_logprobs
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: under the interpreter the Triton path does not run on the GPU")
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    print(f"{torch.cuda.get_device_name(dev)}, N={a.n} V={a.v} bf16, median of {a.rounds} rounds after a warm-up",
          flush=True)

    def naive(h, w, t, dtype=bf16):
        return torch.log_softmax(h.to(dtype) @ w.to(dtype).T, dim=-1).gather(1, t[:, None])[:, 0].float()

    methods = {"naive": naive, "triton": lambda h, w, t: token_logprobs(h, w, t, backend="triton")}
    for d in a.d or (896, 3584):
        g = torch.Generator(device=dev).manual_seed(0)
        h = (torch.randn(a.n, d, device=dev, generator=g) * 0.5).to(bf16).requires_grad_()
        w = (torch.randn(a.v, d, device=dev, generator=g) * 0.05).to(bf16).requires_grad_()
        t = torch.randint(0, a.v, (a.n,), device=dev, generator=g)
        lp = naive(h, w, t, torch.float32)  # the reference: the same formula in fp32
        ref = (lp.detach(), *torch.autograd.grad(lp.sum(), (h, w)))
        del lp
        res = {}
        for name, f in methods.items():
            ms, peaks = {"fwd": [], "fwd+bwd": []}, []
            for i in range(a.rounds + 1):  # round 0: warm-up (the Triton kernel compiles) and the error check
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
                e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
                e0.record()
                lp = f(h, w, t)
                e1.record()
                grads = torch.autograd.grad(lp.sum(), (h, w))
                e2.record()
                torch.cuda.synchronize()
                if i == 0:
                    err = [(lp - ref[0]).abs().max().item()]
                    err += [((x.float() - r.float()).abs().max() / r.float().abs().max()).item()
                            for x, r in zip(grads, ref[1:])]
                else:
                    peaks.append((torch.cuda.max_memory_allocated(dev) - base) / 2**20)
                    ms["fwd"].append(e0.elapsed_time(e1))
                    ms["fwd+bwd"].append(e0.elapsed_time(e2))
                del lp, grads
            r = res[name] = dict(peak=max(peaks), **{k: sorted(v)[len(v) // 2] for k, v in ms.items()})
            print(f"D={d:5d} {name:6s} fwd {r['fwd']:8.2f} ms  fwd+bwd {r['fwd+bwd']:8.2f} ms  "
                  f"peak +{r['peak']:7.0f} MiB  | vs fp32: max |logp error| {err[0]:.1e}, max error / max |ref|: "
                  f"grad_hidden {err[1]:.1e}, grad_weight {err[2]:.1e}", flush=True)
        nv, tr = res["naive"], res["triton"]
        print(f"D={d:5d} triton / naive: time fwd {tr['fwd'] / nv['fwd']:.2f}x, "
              f"fwd+bwd {tr['fwd+bwd'] / nv['fwd+bwd']:.2f}x; peak memory {tr['peak'] / nv['peak']:.3f}x "
              f"({nv['peak'] / tr['peak']:.1f}x lower)", flush=True)
        del h, w, t, ref


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=None, nargs="*", help="hidden size(s); default 896 (CPU), 896 3584 (CUDA)")
    p.add_argument("--v", type=int, default=151936)
    p.add_argument("--rounds", type=int, default=None, help="default 2 (CPU), 10 (CUDA)")
    p.add_argument("--chunk_n", type=int, default=None, help="override TORCH_CHUNKS (with --chunk_v)")
    p.add_argument("--chunk_v", type=int, default=None)
    p.add_argument("--cuda", action="store_true", help="token_logprobs (Triton) vs naive on the GPU, bf16")
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)  # set in the worker subprocess
    a = p.parse_args()
    if a.cuda:
        a.rounds = a.rounds or 10
        return cuda_main(a)
    a.rounds = a.rounds or 2
    a.d = a.d[0] if a.d else 896
    if a.method:
        return worker(a)
    print(f"N={a.n} D={a.d} V={a.v} fp32, torch threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    res = {"naive": [], "chunked": []}
    for _ in range(a.rounds):
        for m in res:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--method", m],
                                 capture_output=True, text=True, check=True).stdout
            res[m].append(json.loads(out.strip().splitlines()[-1]))
            r = res[m][-1]
            print(f"{m:8s} peak +{r['peak_mib']:7.0f} MiB  wall {r['wall_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    best = {m: {k: min(r[k] for r in rs) for k in ("peak_mib", "wall_s", "cpu_s")} for m, rs in res.items()}
    nv, ck = best["naive"], best["chunked"]
    print(f"best of {a.rounds}: naive {nv['peak_mib']:.0f} MiB {nv['wall_s']:.2f} s wall {nv['cpu_s']:.2f} s cpu | "
          f"chunked {ck['peak_mib']:.0f} MiB {ck['wall_s']:.2f} s wall {ck['cpu_s']:.2f} s cpu")
    print(f"memory {nv['peak_mib'] / max(ck['peak_mib'], 1):.1f}x lower; "  # RSS may not grow at all at tiny sizes
          f"time {ck['wall_s'] / nv['wall_s']:.2f}x naive (wall), "
          f"{ck['cpu_s'] / nv['cpu_s']:.2f}x (cpu)")

if __name__ == "__main__":
    main()
