"""FSDP2 on CPU (2 ranks, gloo): shard_model (per block, or one unit: the same gradients), save_state/load_state,
save_model from a sharded model, and generate() on a sharded model. pytest launches this file itself under torchrun;
the worker is at the bottom."""
import json, os, subprocess, sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def test_fsdp_two_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(HERE)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.abspath(__file__), str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert r.stdout.count("WORKER OK") == 2, r.stdout


def worker(out):
    import torch.distributed as dist
    from model import ModelConfig, Transformer, load_model, load_state, save_model, save_state, setup_dist, \
        shard_model
    from sampler import generate
    torch.set_num_threads(1)
    rank, world, dev = setup_dist()
    assert world == 2
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))

    def fresh(seed):
        torch.manual_seed(seed)
        m = shard_model(Transformer(cfg))
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    model, opt = fresh(0)
    for _ in range(2):  # a couple of steps so the optimizer has state
        loss = model(ids[:, :-1]).flatten(0, 1).log_softmax(-1).gather(1, ids[:, 1:].reshape(-1, 1)).mean()
        (-loss).backward()
        opt.step()
        opt.zero_grad()
    torch.manual_seed(1234 + rank)
    save_state(f"{out}/state", model, opt, {"step": 2})
    expect_rand = torch.rand(3)  # what the RNG gives right after the save
    save_model(model, f"{out}/final")
    # each rank wrote its own shards (weights and AdamW state), none the whole model
    assert sorted(os.listdir(f"{out}/state")) == ["rank0.safetensors", "rank1.safetensors", "state.json"]
    from safetensors.torch import load_file
    mine = load_file(f"{out}/state/rank{rank}.safetensors")
    full = model.model.embed_tokens.weight.full_tensor()
    assert torch.equal(mine["model/model.embed_tokens.weight"], full[rank * 32:(rank + 1) * 32])  # vocab 64 / 2
    assert mine["optim/model.embed_tokens.weight/exp_avg"].shape == (32, 32) and "model/lm_head.weight" not in mine
    save_model(model, f"{out}/bf16", dtype=torch.bfloat16)  # the final/ and best/ of a mixed-precision run
    half = load_model(f"{out}/bf16", dtype=torch.bfloat16)
    assert json.load(open(f"{out}/bf16/config.json"))["dtype"] == "bfloat16"
    assert torch.equal(half.model.embed_tokens.weight, full.to(torch.bfloat16))

    with torch.no_grad():
        ref_logits = model(ids)
    m2, opt2 = fresh(99)  # different init: load_state must overwrite it
    torch.manual_seed(5)
    assert load_state(f"{out}/state", m2, opt2) == {"step": 2}
    assert torch.equal(torch.rand(3), expect_rand), "RNG state not restored"
    for (n, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a.full_tensor(), b.full_tensor()), n
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert len(sa) == len(sb) > 0
    for k in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][key].full_tensor(), sb[k][key].full_tensor()), (k, key)
    # training continues identically from the restored state
    for m, o in ((model, opt), (m2, opt2)):
        m(ids).sum().backward()
        o.step()
    with torch.no_grad():
        assert torch.equal(model(ids), m2(ids))

    plain = load_model(f"{out}/final")  # save_model from a sharded model: full weights, same logits
    with torch.no_grad():
        assert (plain(ids) - ref_logits).abs().max().item() <= 1e-5
    # generate on the sharded model (ranks run different prompts / lengths) == on the plain model
    prompts = [[1, 2, 3], [4, 5]] if rank == 0 else [[7, 8, 9, 10]]
    n = 5 if rank == 0 else 9
    got = generate(model, prompts, n)
    save_model(model, f"{out}/now")  # the weights after the extra step above
    want = generate(load_model(f"{out}/now"), prompts, n)
    assert got == want, (got, want)
    # bf16 mixed precision, generate as the model's very first forward
    torch.manual_seed(0)
    mp = Transformer(cfg)
    with torch.no_grad():  # large weights, so attention that lost the cached prompt shows in the log-probs
        for p in mp.parameters():
            p.normal_(0, 0.3 if p.dim() == 1 else 0.2)
    mp = shard_model(mp, mixed_precision=True)
    caught = []  # the logits the sampler drew from: the prefill's (one row per prompt), then each step's
    hook = mp.lm_head.register_forward_hook(lambda mod, inp, out: caught.append(out.float()))
    comps = generate(mp, prompts, n, temperature=1.0, seed=rank, k=2)
    hook.remove()
    assert [len(c) for c in comps] == [n] * 2 * len(prompts) and len(caught) == n
    drawn = torch.stack([caught[0].repeat_interleave(2, 0)] + caught[1:], 1).log_softmax(-1)  # (R, n, V)
    lps = [drawn[r].gather(1, torch.tensor(c)[:, None])[:, 0] for r, c in enumerate(comps)]
    rows = [prompts[r // 2] + c for r, c in enumerate(comps)]  # right-padded: causal attention ignores the pad
    batch = torch.tensor([r + [0] * (max(map(len, rows)) - len(r)) for r in rows])
    with torch.no_grad():
        logp = mp(batch).log_softmax(-1)  # (R, T, V): one collective forward per rank
    for r, c in enumerate(comps):
        p = len(prompts[r // 2])
        want = logp[r, p - 1:p - 1 + n].gather(1, torch.tensor(c)[:, None])[:, 0]
        assert (lps[r] - want).abs().max().item() < 0.05, (lps[r], want)  # bf16 noise only
    mp(ids).mean().backward()  # and training still works afterwards
    # the whole model as one FSDP2 unit (the tiny presets) computes what per-block units do, bit for bit
    from torch.distributed.fsdp import FSDPModule
    units = []
    for per_block in (True, False):
        torch.manual_seed(0)
        m = shard_model(Transformer(cfg), per_block=per_block)
        m(ids).square().mean().backward()
        units.append(sum(isinstance(x, FSDPModule) for x in m.modules()))
        if per_block:
            blocks, got = m, generate(m, prompts, n, temperature=1.0, seed=rank)
    assert units == [cfg.num_hidden_layers + 1, 1], units
    for (name, a), (_, b) in zip(blocks.named_parameters(), m.named_parameters()):
        assert torch.equal(a.grad.full_tensor(), b.grad.full_tensor()), name
    assert generate(m, prompts, n, temperature=1.0, seed=rank) == got
    # the cost grpo.update's docstring weighs: group_logprobs runs every block twice (prompt, then completions), so
    # per-block units all-gather each block twice forward and twice backward; one pass over the rows, once each way
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as G
    real, gathers, counts = G.foreach_all_gather, [], []
    G.foreach_all_gather = lambda *a, **k: gathers.append(1) or real(*a, **k)
    rows, ones = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    for f in (lambda: blocks.group_logprobs(rows[:1, :3], ones, rows[:, 3:], rows[:, 3:], 2)[0],
              lambda: blocks.seq_logprobs(rows, rows)[0]):
        gathers.clear()
        f().sum().backward()
        counts.append(len(gathers))
    G.foreach_all_gather = real
    assert counts == [1 + 4 * cfg.num_hidden_layers, 1 + 2 * cfg.num_hidden_layers], counts  # + 1: the root
    dist.barrier()
    print("WORKER OK", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
    from conftest import end_worker
    end_worker()
