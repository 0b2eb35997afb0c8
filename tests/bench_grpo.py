"""Time split of one GRPO step (not a test): generation / log-probs / backward / optimizer, and tokens/s.

    python tests/bench_grpo.py                              # tiny and Qwen2.5-0.5B-shaped, one process, CPU fp32
    python tests/bench_grpo.py --configs tiny --prompts 8 --k 8 --new 64

One step = sampler.generate (k samples per prompt, temperature 1, no EOS so every row makes --new tokens) then
grpo.update (micro-batched token_logprobs forward, eq. 1 loss, backward, AdamW step) on random prompts and
rewards: exactly the two calls grpo.py makes per step, without the tokenizer and the reward. Then the training
forward + backward with each prompt run once per group (model.group_logprobs) against the plain forward over every
prompt + completion row (model.seq_logprobs), the baseline.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRITON_INTERPRET", "1")
import grpo  # noqa: E402
import model as M  # noqa: E402
import sampler  # noqa: E402
import sft  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, head_dim=64),
}


def step(model, opt, args, seed):
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompts = [torch.randint(4, V, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    t0 = time.perf_counter()
    comps = sampler.generate(model, prompts, args.new, temperature=1.0, eos_ids=(), seed=seed, k=args.k)
    t_gen = time.perf_counter() - t0
    rewards = torch.randint(0, 2, (args.prompts, args.k), generator=g).float()
    ua = argparse.Namespace(k=args.k, micro_batch=args.micro_batch, token_mean=False, loss_norm=float(args.new),
                            temperature=1.0, ppo_epochs=1, clip_eps=0.0, kl_coef=0.0, grad_clip=1.0)
    rows = [(prompts[i // args.k], c) for i, c in enumerate(comps)]
    st = grpo.update(model, opt, rows, grpo.group_advantages(rewards).flatten(), torch.ones(len(rows)), ua, 1, 0)
    return dict(gen=t_gen, logprob=st["t_logprob"], backward=st["t_backward"], opt=st["t_opt"],
                tokens=sum(map(len, comps)))


def shared_vs_plain(model, args, reps):
    """Forward + backward of the training log-probs, best of `reps`: each prompt once per group (group_logprobs, what
    grpo.update runs) against the baseline of one plain forward over every prompt + completion row (seq_logprobs)."""
    g = torch.Generator().manual_seed(0)
    V, P, k = model.config.vocab_size, args.prompts, args.k
    prompts = [torch.randint(4, V, (args.prompt_len,), generator=g).tolist() for _ in range(P)]
    rows = [(prompts[i // k], torch.randint(4, V, (args.new,), generator=g).tolist()) for i in range(P * k)]
    plain = sft.pad_batch([p + c for p, c in rows], [len(p) for p, _ in rows], 0)
    shared = grpo.group_batch(rows, [list(range(i, i + k)) for i in range(0, P * k, k)], 0, "cpu")

    def best(fn, *batch):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(*batch)[0].sum().backward()
            ts.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        return min(ts)
    return best(model.seq_logprobs, *plain), best(model.group_logprobs, *shared)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,qwen2.5-0.5b")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new", type=int, default=32, help="new tokens per completion")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2, help="steps timed after one warm-up step; best is shown")
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush denormals (grpo.py flushes them)")
    args = ap.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.prompts} prompts x k={args.k}, "
          f"prompt {args.prompt_len} + {args.new} new tokens, micro-batch {args.micro_batch}")
    print("| config | params | generation s | log-probs s | backward s | optimizer s | step s | gen tok/s "
          "| step tok/s |\n|---|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        torch.manual_seed(0)
        model = M.init_weights(M.Transformer(M.ModelConfig(**CONFIGS[name])))  # HF init
        opt = M.make_optimizer(model, 1e-6)
        best = None
        for rep in range(args.reps + 1):
            r = step(model, opt, args, rep)
            r["step"] = r["gen"] + r["logprob"] + r["backward"] + r["opt"]
            if rep and (best is None or r["step"] < best["step"]):
                best = r
        n = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {n / 1e6:.1f}M | {best['gen']:.2f} | {best['logprob']:.2f} | {best['backward']:.2f} | "
              f"{best['opt']:.2f} | {best['step']:.2f} | {best['tokens'] / best['gen']:.0f} | "
              f"{best['tokens'] / best['step']:.0f} |", flush=True)
        plain, shared = shared_vs_plain(model, args, args.reps)
        print(f"  training forward+backward: plain (every row with its prompt) {plain:.3f} s, prompt once per "
              f"group {shared:.3f} s: {plain / shared:.2f}x faster", flush=True)
        del model, opt


if __name__ == "__main__":
    main()
