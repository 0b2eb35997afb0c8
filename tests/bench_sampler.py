"""Decode throughput of sampler.generate vs transformers generate() on the same random weights (not a test).

    python tests/bench_sampler.py                  # tiny + Qwen2.5-0.5B-shaped, batch 16 and 64, 128 new tokens
    python tests/bench_sampler.py --configs tiny --batches 16 --reps 3
    python tests/bench_sampler.py --configs qwen2.5-0.5b --batches 16 --reps-large 3
    python tests/bench_sampler.py --configs qwen2.5-0.5b --batches 64 --device cuda --dtype bfloat16  # gpu_check.sh

Greedy, fp32 on the CPU by default, prompts of mixed length (left-padded for both), no EOS so every row makes all
its tokens.
"""
import argparse, os, sys, tempfile, time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRITON_INTERPRET", "1")
import transformers  # noqa: E402

from model import load_model  # noqa: E402
from sampler import generate  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}


def timed(fns, reps):
    """Best of reps wall times for each fn, interleaved so a shared machine's load hits both alike."""
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,qwen2.5-0.5b")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3, help="best of N for the tiny config")
    ap.add_argument("--reps-large", type=int, default=1, help="best of N for the 0.5B shape (4 min a rep)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    for name in args.configs.split(","):
        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(**CONFIGS[name], max_position_embeddings=4096)
        ref = transformers.Qwen2ForCausalLM(cfg).float().eval()
        ref.generation_config.eos_token_id = None
        with tempfile.TemporaryDirectory() as d:
            ref.save_pretrained(d)
            ours = load_model(d, dev, dtype)
        ref = ref.to(dev, dtype)
        reps = args.reps if name == "tiny" else args.reps_large
        for B in map(int, args.batches.split(",")):
            g = torch.Generator().manual_seed(B)
            prompts = [torch.randint(0, cfg.vocab_size, (int(n),), generator=g).tolist()
                       for n in torch.randint(16, 97, (B,), generator=g)]  # 16..96 tokens
            P = max(map(len, prompts))
            ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=dev)
            am = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=dev)

            def run_hf(n):
                with torch.no_grad():  # .cpu(): the GPU has finished when the clock stops
                    return ref.generate(ids, attention_mask=am, max_new_tokens=n, min_new_tokens=n,
                                        do_sample=False, pad_token_id=0).cpu()

            def run_ours(n):
                return generate(ours, prompts, n)

            generate(ours, prompts[:2], 2)  # warm-up both
            ref.generate(ids[:2], attention_mask=am[:2], max_new_tokens=2, do_sample=False, pad_token_id=0)
            N = args.new_tokens
            # prefill-only runs (1 new token) let us report decode throughput without the prompt's cost
            t1_ours, t1_hf, t_ours, t_hf = timed([lambda: run_ours(1), lambda: run_hf(1), lambda: run_ours(N),
                                                  lambda: run_hf(N)], reps)
            dec_ours, dec_hf = B * (N - 1) / (t_ours - t1_ours), B * (N - 1) / (t_hf - t1_hf)
            decode = (f"decode ours {dec_ours:8.1f} tok/s, transformers {dec_hf:8.1f} tok/s, ratio "
                      f"{dec_ours / dec_hf:5.2f}x" if min(dec_ours, dec_hf) > 0 else "decode n/a (timing noise)")
            same = run_ours(N) == run_hf(N)[:, P:].tolist() if name == "tiny" else "not checked"
            print(f"{name:13s} batch {B:3d} new {N}: {decode} | end-to-end ours {B * N / t_ours:8.1f} tok/s, "
                  f"transformers {B * N / t_hf:8.1f} tok/s, ratio {t_hf / t_ours:5.2f}x | same tokens: {same}",
                  flush=True)


if __name__ == "__main__":
    main()
