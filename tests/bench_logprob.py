"""Benchmark (a script, not a test): peak memory and time of token_logprobs forward+backward vs the naive
log_softmax(h @ W.T).gather, on CPU, at Qwen2.5-0.5B's lm_head size.

    OMP_NUM_THREADS=2 python tests/bench_logprob.py                      # N=4096 D=896 V=151936 fp32 (~10 GB, minutes)
    python tests/bench_logprob.py --n 512 --v 32768 --reps 1             # quick look

Each method runs in its own subprocess (so one cannot inherit the other's heap). Memory = peak resident set
size (VmHWM from /proc/self/status) during one forward+backward, minus the resident size just before it; the
peak is reset (writing 5 to /proc/self/clear_refs) after an untimed warm-up run. This counts everything the
step allocates, grad_weight (V x D fp32, needed by both) included; inputs h and W are excluded. Time = median
wall-clock of --reps timed forward+backward runs after the warm-up.
"""
import argparse, json, os, statistics, subprocess, sys, time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mib(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024


def worker(a):
    from kernels.logprob import token_logprobs
    torch.manual_seed(0)
    h = (torch.randn(a.n, a.d) * 0.5).requires_grad_()
    w = (torch.randn(a.v, a.d) * 0.05).requires_grad_()
    t = torch.randint(0, a.v, (a.n,))
    sizes = {k: getattr(a, k) for k in ("chunk_n", "chunk_v") if getattr(a, k) is not None}

    def step():
        h.grad = w.grad = None  # both methods allocate grad_weight fresh: it counts for both
        if a.method == "naive":
            lp = torch.log_softmax(h @ w.T, dim=-1).gather(1, t[:, None])[:, 0]
        else:
            lp = token_logprobs(h, w, t, backend="torch", **sizes)
        lp.sum().backward()
        return lp

    step()  # warm-up (also faults in allocator pages)
    h.grad = w.grad = None
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS high-water mark
    base = _mib("VmRSS")
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps(dict(method=a.method, peak_mib=_mib("VmHWM") - base, time_s=statistics.median(times),
                          times=times)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=896)
    p.add_argument("--v", type=int, default=151936)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--chunk_n", type=int, default=None, help="override TORCH_CHUNKS (with --chunk_v)")
    p.add_argument("--chunk_v", type=int, default=None)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)  # set in the worker subprocess
    a = p.parse_args()
    if a.method:
        return worker(a)
    print(f"N={a.n} D={a.d} V={a.v} fp32, torch threads={torch.get_num_threads()}, reps={a.reps}", flush=True)
    res = {}
    for m in ("naive", "chunked"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--method", m],
                             capture_output=True, text=True, check=True).stdout
        res[m] = json.loads(out.strip().splitlines()[-1])
        print(f"{m:8s} peak +{res[m]['peak_mib']:8.0f} MiB  time {res[m]['time_s']:6.2f} s  "
              f"(runs {', '.join(f'{x:.2f}' for x in res[m]['times'])})", flush=True)
    nv, ck = res["naive"], res["chunked"]
    print(f"memory: {nv['peak_mib'] / ck['peak_mib']:.1f}x lower   time: {ck['time_s'] / nv['time_s']:.2f}x naive")


if __name__ == "__main__":
    main()
