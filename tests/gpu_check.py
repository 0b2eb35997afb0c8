"""The one-GPU check (tests/gpu_check.sh): what the CPU tests cannot show, on one CUDA device, one line per check.
Everything is built offline (random models, a tiny tokenizer, synthetic questions): no hub download.

  1. logit parity with transformers in bf16: tiny Qwen2, tiny Qwen3, a Qwen2.5-0.5B-shaped model
  2. fused attention: training, packed, group, prefill and decode paths with SDPA's math kernel disabled
  3. collectives on the model's device (tests/test_collectives.py, its CUDA case)
  4. the Triton log-prob kernel against the reference at Qwen's vocabulary: errors, time, peak memory vs naive
  5. sampler tokens/s vs transformers generate() at the Qwen2.5-0.5B shape, batch 64 (tests/bench_sampler.py)
  6. a generate call over its KV-cache budget runs in chunks: peak memory against the budget
  7. three GRPO steps of a random Qwen2.5-0.5B-shaped model (torchrun --nproc_per_node 1: NCCL, bf16), stage 2:
     mining at step 0, a save at step 2 and a resume, re-mining at step 2; peak memory per phase

    bash tests/gpu_check.sh                      # one GPU, < 8 minutes on an H100
    python tests/gpu_check.py --device cpu       # the same plumbing at tiny sizes (tests/test_gpu_check.py)
"""
import argparse, copy, json, os, subprocess, sys, tempfile, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
import transformers  # noqa: E402

import model as M  # noqa: E402
import sampler  # noqa: E402

QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, head_dim=64)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def report(n, name, ok, detail):
    print(f"[{n}] {name}: {'PASS' if ok else 'FAIL'} | {detail}", flush=True)
    return ok


def hf_model(kind, dims):
    torch.manual_seed(0)
    Cfg, LM = (transformers.Qwen2Config, transformers.Qwen2ForCausalLM) if kind == "qwen2" else \
        (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)
    m = LM(Cfg(**dims, tie_word_embeddings=True, max_position_embeddings=4096,
               rope_parameters={"rope_type": "default", "rope_theta": 1e6})).float().eval()
    with torch.no_grad():  # HF inits biases and norms to constants: randomise so a mix-up shows
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def parity(dev, shapes):
    """Log-probs of our bf16 model and of transformers' bf16 model against transformers in fp32, on left-padded rows:
    ours must be as close to fp32 as transformers' own bf16 (mean error within 1.5x + 1e-3)."""
    out, ok = [], True
    for name, kind, dims in shapes:
        ref = hf_model(kind, dims)
        with tempfile.TemporaryDirectory() as d:
            ref.save_pretrained(d)
            ours = M.load_model(d, dev, torch.bfloat16)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, dims["vocab_size"], (4, 96), generator=g).to(dev)
        mask = torch.ones_like(ids)
        mask[1, :30], mask[3, :70] = 0, 0  # left padding
        real = mask.bool()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)

        def hf(m):
            with torch.no_grad():
                return m(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().log_softmax(-1)[real]
        want = hf(ref.to(dev))
        theirs = hf(copy.deepcopy(ref).to(torch.bfloat16))
        with torch.no_grad():
            got = ours(ids, attention_mask=mask).log_softmax(-1)[real]
        e_ours, e_hf = (got - want).abs().mean().item(), (theirs - want).abs().mean().item()
        ok &= e_ours <= 1.5 * e_hf + 1e-3
        out.append(f"{name} mean |dlogp| vs fp32: ours {e_ours:.2e}, transformers {e_hf:.2e}")
        del ref, ours
    return ok, "; ".join(out)


def fused_attention(dev, dims):
    """Every attention path of training and generation, with SDPA's math kernel disabled on CUDA (an error if a
    call would need it): the fp32 (B, H, T, S) scores of the math kernel are what model.FUSED_SDPA avoids."""
    from contextlib import nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import sft
    torch.manual_seed(0)
    m = M.init_weights(M.Transformer(M.ModelConfig(**dims))).to(dev, torch.bfloat16)
    fused = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]) \
        if dev.type == "cuda" else nullcontext()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (300, 120, 170)]
    packed, one = sft.pack_batch(seqs, [1] * 3, 0, dev), sft.pack_batch(seqs[:1], [1], 0, dev)
    prompt, comps = torch.tensor([seqs[1][:100]], device=dev), torch.tensor([seqs[0][:150], seqs[2][:150]], device=dev)
    paths = {
        "plain causal": lambda: m.seq_logprobs(*sft.pad_batch(seqs, [1] * 3, 0, dev))[0],
        "packed rows": lambda: m.seq_logprobs(packed[0], packed[1], position_ids=packed[2], segment_ids=packed[3])[0],
        "one packed row": lambda: m.seq_logprobs(one[0], one[1], position_ids=one[2], segment_ids=one[3])[0],
        "group (prompt once)": lambda: m.group_logprobs(prompt, torch.ones_like(prompt), comps, comps, 2)[0],
    }
    done = []
    with fused:
        for name, f in paths.items():
            f().sum().backward()
            done.append(name + " fwd+bwd")
        sampler.generate(m, seqs, 8, temperature=1.0, seed=0, k=2)  # left-padded prefill, then decode
        done.append("prefill + decode")
    return True, ", ".join(done) + (" (math kernel disabled)" if dev.type == "cuda" else " (CPU: plumbing only)")


def kv_budget(dev, dims, new):
    """A group-mode call whose cache is ~4x the budget: chunks, and a peak (above the weights) near the budget."""
    torch.manual_seed(0)
    m = M.init_weights(M.Transformer(M.ModelConfig(**dims))).to(dev, torch.bfloat16)
    c = m.config
    prompts = [torch.randint(5, 500, (64,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(16)]
    row = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * (64 + new)
    need, budget = row * 8 * len(prompts), row * 8 * 4  # k = 8: 4 prompts (32 rows) a chunk
    calls, real = [], sampler._generate
    sampler._generate = lambda model, p, *a: calls.append(len(p)) or real(model, p, *a)
    try:
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        sampler.generate(m, prompts, new, temperature=1.0, seed=0, k=8, kv_budget=budget)
        peak = (torch.cuda.max_memory_allocated(dev) - base) if dev.type == "cuda" else float("nan")
    finally:
        sampler._generate = real
    sampling = 32 * c.vocab_size * 4 * 10  # a chunk's fp32 logits and the sampler's copies of them
    ok = calls == [4] * 4 and (dev.type != "cuda" or peak <= budget + sampling)
    return ok, (f"cache needed {need / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB -> {len(calls)} calls; peak "
                f"above the weights {peak / 2**20:.0f} MiB (allowed: budget + {sampling / 2**20:.0f} MiB of logits)")


def run(cmd, env, timeout):
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def grpo_steps(dev, dims, work, new, env):
    """Stage 2 from a random model, FSDP2 over one rank with bf16 mixed precision: mines at step 0, saves at step 2
    (run 1 stops there), resumes (run 2), re-mines and validates at step 2. Peak memory per phase from metrics.jsonl
    (CUDA)."""
    import common
    from test_grpo import make_records
    recs, val = make_records(64), make_records(8, seed=1)
    for r in val:
        r["id"] = "v" + r["id"]
    common.write_jsonl(f"{work}/data.jsonl", recs)
    common.write_jsonl(f"{work}/val.jsonl", val)
    texts = [common.SYSTEM_PROMPT, "<think>x</think>\n<answer>A</answer>"] + \
        [r["question"] + " " + " ".join(f"{k}. {v}" for k, v in r["options"].items()) for r in recs]
    tok = M.train_tokenizer(texts * 4, f"{work}/tok", vocab_size=400)
    M.init_model(f"{work}/init", dims.pop("vocab_size"), tokenizer=tok, **dims, max_position_embeddings=4096)
    out = f"{work}/rl2"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            os.path.join(ROOT, "grpo.py"), "--stage", "2", "--data", f"{work}/data.jsonl", "--init", f"{work}/init",
            "--out", out, "--val", f"{work}/val.jsonl", "--eval-every", "2", "--prompts", "8", "--k", "8",
            "--max-new-tokens", str(new), "--remine-every", "2", "--remine-size", "32", "--mine-n", "4",
            "--mine-max-zero-share", "1", "--save-every", "2", "--mixed-precision", "--max-steps"]
    t0 = time.time()
    rc1, log1 = run(args + ["2"], env, 900)
    rc2, log2 = run(args + ["3"], env, 900) if rc1 == 0 else (1, "")
    if rc1 or rc2:
        return False, f"grpo.py failed: {(log1 + log2)[-3000:]}"
    rows = common.read_jsonl(f"{out}/metrics.jsonl")
    steps, cuda = [r for r in rows if "reward" in r], dev.type == "cuda"
    final = json.load(open(f"{out}/final/config.json"))
    ok = [r["step"] for r in steps] == [0, 1, 2] and "resumed" in log2 and os.path.isdir(f"{out}/mine_0") \
        and os.path.isdir(f"{out}/mine_2") and os.path.isfile(f"{out}/state/rank0.safetensors") \
        and final["dtype"] == "bfloat16"
    peaks = "; ".join(f"step {r['step']}: " + ", ".join(f"{k[8:]} {v:.1f} GB" for k, v in r.items()
                                                         if k.startswith("peak_gb_")) for r in steps) if cuda else ""
    return ok, (f"{time.time() - t0:.0f} s, steps {[r['step'] for r in steps]}, resumed at 2, final/ "
                f"{final['dtype']}; peak memory per phase: {peaks or 'n/a on CPU'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", help="cpu: the plumbing at tiny sizes")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu for the plumbing only")
    big = QWEN05 if cuda else TINY
    work = a.workdir or tempfile.mkdtemp(prefix="gpu_check_")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"gpu_check on {torch.cuda.get_device_name(dev) if cuda else 'cpu (plumbing only)'}, torch "
          f"{torch.__version__}, work dir {work}", flush=True)
    results = []
    shapes = [("tiny qwen2", "qwen2", TINY), ("tiny qwen3", "qwen3", {**TINY, "head_dim": 24})]  # Qwen3: head_dim
    shapes += [("qwen2.5-0.5b-shaped", "qwen2", QWEN05)] if cuda else []  # differs from hidden / heads
    results.append(report(1, "parity with transformers, bf16", *parity(dev, shapes)))
    results.append(report(2, "fused attention kernels", *fused_attention(dev, big)))
    rc, log = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_collectives.py"], env,
                  600)
    results.append(report(3, "collectives on the model's device", rc == 0, log.strip().splitlines()[-1]))
    bench = [sys.executable, "tests/bench_logprob.py"] + (["--cuda", "--rounds", "5"] if cuda else
                                                           ["--n", "1024", "--v", "16384", "--rounds", "1"])
    rc, log = run(bench, env, 900)
    lines = [ln.strip() for ln in log.splitlines() if "triton / naive" in ln or "vs fp32" in ln or "best of" in ln
             or "memory" in ln]
    results.append(report(4, "Triton log-prob kernel vs naive log_softmax", rc == 0, " || ".join(lines) or log[-2000:]))
    sb = [sys.executable, "tests/bench_sampler.py"] + (
        ["--configs", "qwen2.5-0.5b", "--batches", "64", "--device", "cuda", "--dtype", "bfloat16", "--reps-large",
         "2"] if cuda else ["--configs", "tiny", "--batches", "4", "--new-tokens", "8", "--reps", "1"])
    rc, log = run(sb, env, 900)
    lines = [ln.strip() for ln in log.splitlines() if "batch" in ln and "tok/s" in ln]
    results.append(report(5, "sampler vs transformers generate()", rc == 0 and bool(lines),
                          " || ".join(lines) or log[-2000:]))
    results.append(report(6, "generate within its KV-cache budget", *kv_budget(dev, big, 256 if cuda else 8)))
    results.append(report(7, "3 GRPO steps, stage 2, mine + save + resume + re-mine", *grpo_steps(
        dev, dict(big), work, 256 if cuda else 12, env)))
    print(f"gpu_check: {sum(results)}/{len(results)} checks passed", flush=True)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
