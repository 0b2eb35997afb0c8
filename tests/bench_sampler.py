"""Decode throughput of sampler.generate vs transformers generate() on the same random weights (not a test).

    python tests/bench_sampler.py                  # tiny + Qwen2.5-0.5B-shaped, batch 16 and 64, 128 new tokens
    python tests/bench_sampler.py --configs tiny --batches 16 --reps 3

Greedy, fp32, CPU, prompts of mixed length (left-padded for both), no EOS so every row makes all its tokens.
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
    ap.add_argument("--reps", type=int, default=3, help="best of N (the 0.5B shape uses 1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.configs.split(","):
        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(**CONFIGS[name], max_position_embeddings=4096)
        ref = transformers.Qwen2ForCausalLM(cfg).float().eval()
        ref.generation_config.eos_token_id = None
        with tempfile.TemporaryDirectory() as d:
            ref.save_pretrained(d)
            ours = load_model(d)
        reps = 1 if name != "tiny" else args.reps
        for B in map(int, args.batches.split(",")):
            g = torch.Generator().manual_seed(B)
            prompts = [torch.randint(0, cfg.vocab_size, (int(n),), generator=g).tolist()
                       for n in torch.randint(16, 97, (B,), generator=g)]  # 16..96 tokens
            P = max(map(len, prompts))
            ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
            am = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
            N = args.new_tokens

            def run_hf():
                with torch.no_grad():
                    return ref.generate(ids, attention_mask=am, max_new_tokens=N, min_new_tokens=N,
                                        do_sample=False, pad_token_id=0)

            def run_ours():
                return generate(ours, prompts, N)

            generate(ours, prompts[:2], 4)  # warm-up both
            ref.generate(ids[:2], attention_mask=am[:2], max_new_tokens=4, do_sample=False, pad_token_id=0)
            t_ours, t_hf = timed([run_ours, run_hf], reps)
            same = run_ours() == run_hf()[:, P:].tolist() if name == "tiny" else "n/a"
            print(f"{name:13s} batch {B:3d}  ours {B * N / t_ours:8.1f} tok/s  transformers {B * N / t_hf:8.1f} "
                  f"tok/s  ratio {t_hf / t_ours:5.2f}x  (same tokens: {same})", flush=True)


if __name__ == "__main__":
    main()
