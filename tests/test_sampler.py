"""sampler.generate: KV-cache decoding == full forward, greedy == transformers generate, sampling semantics."""
import pytest
import torch

from model import ModelConfig, Transformer, load_model
from sampler import generate, sample

torch.set_num_threads(1)
PROMPTS = [[5, 17, 3, 40, 2, 9, 11], [8], [60, 61, 62, 63]]  # mixed lengths: rows get left-padded


def tiny(kind="qwen2", seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(model_type=kind, vocab_size=97, hidden_size=32, intermediate_size=48,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                rope_theta=500.0, attention_bias=kind == "qwen2", tie_word_embeddings=False))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3 if p.dim() == 1 else 0.2)  # random biases/norms too; peaky enough for greedy
    return m.eval()


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_cached_decoding_equals_full_forward(kind):
    m = tiny(kind)
    c = m.config
    cont = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(0))  # forced continuations
    P, B, steps = max(map(len, PROMPTS)), len(PROMPTS), cont.shape[1]
    ids = torch.zeros(B, P, dtype=torch.long)
    mask = torch.zeros(B, P + steps, dtype=torch.long)
    for i, p in enumerate(PROMPTS):
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1
    shape = (c.num_hidden_layers, B, c.num_key_value_heads, P + steps, c.head_dim)
    cache = (torch.zeros(shape), torch.zeros(shape))
    with torch.no_grad():
        got = [m(ids, attention_mask=mask[:, :P], kv_cache=cache)[:, -1]]
        lens = mask[:, :P].sum(1)
        for t in range(steps - 1):
            got.append(m(cont[:, t:t + 1], position_ids=(lens + t)[:, None], attention_mask=mask[:, :P + t + 1],
                         kv_cache=cache, cache_pos=P + t)[:, -1])
        got = torch.stack(got, 1)  # (B, steps, V)
        for i, p in enumerate(PROMPTS):  # reference: each row alone, unpadded, no cache
            full = m(torch.tensor([p + cont[i, :-1].tolist()]))[0, len(p) - 1:]  # (steps, V)
            assert (got[i] - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_greedy_matches_transformers_generate(tmp_path, kind):
    pytest.importorskip("transformers")
    from test_model import hf_model
    ref = hf_model(kind, tied=kind == "qwen2")
    ref.generation_config.eos_token_id = None
    ref.save_pretrained(tmp_path)
    ours = load_model(str(tmp_path))

    def hf(p, eos=None):
        out = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
        return out[0, len(p):].tolist()

    want = [hf(p) for p in PROMPTS]
    assert generate(ours, PROMPTS, 12) == want
    # EOS: pick a token the first row emits mid-way; each row must stop at its own first occurrence
    eos = want[0][4]
    got = generate(ours, PROMPTS, 12, eos_ids=[eos])
    assert got == [hf(p, eos) for p in PROMPTS]
    assert got[0][-1] == eos and len(got[0]) <= 5
    # prompts opening with one system prompt: the shared prefix runs once, copied to every row; rows of
    # different lengths then hold pads between prefix and suffix
    system = [(7 * j + 3) % 90 + 1 for j in range(20)]
    shared = [system + p for p in PROMPTS]
    assert generate(ours, shared, 12) == [hf(p) for p in shared]


def test_shared_prefix_runs_once_with_the_same_logits():
    m = tiny("qwen3")
    system = [(5 * j + 1) % 90 + 1 for j in range(18)]
    prompts = [system + p for p in PROMPTS] + [system + [4]]
    rows, logits = [], []
    hooks = [m.model.embed_tokens.register_forward_hook(lambda mod, inp, out: rows.append(tuple(inp[0].shape))),
             m.lm_head.register_forward_hook(lambda mod, inp, out: logits.append(out))]
    got = generate(m, prompts, 8)
    assert rows[:2] == [(1, 18), (4, 7)]  # the prefix for one row, then the suffixes (the longest has 7 tokens)
    shared, logits[:] = list(logits), []
    want = generate(m, prompts, 8, min_shared=10**9)  # the plain prefill
    for h in hooks:
        h.remove()
    assert got == want and len(shared) == len(logits) == 8
    assert max((a - b).abs().max().item() for a, b in zip(shared, logits)) < 1e-5  # every step's logits


def test_eos_rows_independent_and_max_new_tokens():
    m = tiny()
    free = generate(m, PROMPTS, 10)
    assert [len(r) for r in free] == [10, 10, 10]
    eos = free[1][2]
    got = generate(m, PROMPTS, 10, eos_ids=[eos, 96])
    for f, g in zip(free, got):  # each row = its free run truncated at its own first EOS (inclusive)
        cut = next((j + 1 for j, x in enumerate(f) if x in (eos, 96)), len(f))
        assert g == f[:cut]
    assert len(got[1]) <= 3 and got[1][-1] == eos
    assert generate(m, [PROMPTS[1]], 10, eos_ids=[eos]) == [got[1]]  # same row, alone: same result
    assert all(len(r) == 3 for r in generate(m, PROMPTS, 3, temperature=1.0, seed=0))


def test_finished_rows_leave_the_batch_without_changing_the_others():
    """Sampling, 24 rows: rows that hit an EOS leave the batch; every other row still draws exactly the tokens
    it draws when nothing stops (its own uniform number each step), up to its own first EOS."""
    m = tiny()
    free = generate(m, PROMPTS, 24, temperature=1.0, seed=3, k=8)
    eos = [free[0][1], free[9][3]]  # ends several rows early, at different steps
    rows = []
    hook = m.lm_head.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    got = generate(m, PROMPTS, 24, temperature=1.0, seed=3, k=8, eos_ids=eos)
    hook.remove()
    assert rows[0] == 3 and rows[1] == 24 and rows[-1] < 24  # prefill (one row per prompt), then the batch shrank
    cuts = [next((j + 1 for j, x in enumerate(f) if x in eos), len(f)) for f in free]
    assert sum(c < 24 for c in cuts) >= 6  # enough rows finish early for the batch to shrink
    assert got == [f[:c] for f, c in zip(free, cuts)]


def test_seeds_temperature_and_groups():
    m = tiny()
    a = generate(m, PROMPTS, 8, temperature=1.0, seed=1, k=4)
    assert len(a) == 12 and a == generate(m, PROMPTS, 8, temperature=1.0, seed=1, k=4)
    assert a != generate(m, PROMPTS, 8, temperature=1.0, seed=2, k=4)
    for i in range(3):  # the k rows of each group are not all identical at temperature 1
        assert len({tuple(r) for r in a[4 * i:4 * i + 4]}) > 1
    greedy = generate(m, PROMPTS, 8)
    assert generate(m, PROMPTS, 8, seed=123) == generate(m, PROMPTS, 8, seed=7) == greedy
    # greedy group mode: every row of a group equals its prompt's greedy completion
    assert generate(m, PROMPTS, 8, k=3) == [g for g in greedy for _ in range(3)]


def test_kv_budget_splits_the_call_into_chunks_that_fit():
    """A call whose cache would exceed kv_budget runs its prompts in chunks (one random stream for the call): greedy
    rows are unchanged, sampled ones deterministic; a budget that is not reached changes nothing."""
    import sampler
    m, calls = tiny(), []
    real = sampler._generate
    sampler._generate = lambda model, prompts, *a: calls.append(len(prompts)) or real(model, prompts, *a)
    try:
        row = 2 * 2 * 2 * 8 * 4 * (7 + 6)  # 2 x layers x kv_heads x head_dim x fp32 bytes x (longest prompt + new)
        for budget, chunks in ((10 ** 12, [3]), (row * 2, [2, 1]), (row, [1, 1, 1]), (1, [1, 1, 1])):
            calls.clear()
            assert generate(m, PROMPTS, 6, kv_budget=budget) == generate(m, PROMPTS, 6)
            assert calls[:len(chunks)] == chunks
        a = generate(m, PROMPTS, 6, temperature=1.0, seed=4, k=2, kv_budget=row * 4)  # 2 rows a prompt: 2 prompts
        assert a == generate(m, PROMPTS, 6, temperature=1.0, seed=4, k=2, kv_budget=row * 4) and len(a) == 6
        assert generate(m, PROMPTS, 6, temperature=1.0, seed=4, k=2, kv_budget=10 ** 12) == \
            generate(m, PROMPTS, 6, temperature=1.0, seed=4, k=2)
    finally:
        sampler._generate = real


def test_the_cache_is_never_copied_whole():
    """The KV cache is the largest buffer of a call: group copies are made in place and finished rows leave it by a
    compaction in place, one layer at a time. No op but the cache's own allocation produces a tensor of more than one
    layer of it (the old drop-rows copy made three quarters of it; repeat_interleave all of it)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    m = tiny()
    m.model.layers.extend(m.model.layers[:2])  # 4 layers: one layer is a quarter of the cache
    m.config.num_hidden_layers = 4
    n_new, N = 24, len(PROMPTS) * 8
    cache = 4 * N * 2 * (max(map(len, PROMPTS)) + n_new) * 8  # layers x rows x kv_heads x slots x head_dim
    big = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if torch.is_tensor(t) and not (func.is_view or func._schema.is_mutable) and t.numel() > cache // 4:
                    big.append((str(func), t.numel()))
            return out
    free = generate(m, PROMPTS, n_new, temperature=1.0, seed=3, k=8)
    eos = [free[0][1], free[9][3]]  # several rows finish early: the batch shrinks
    with Sizes():
        generate(m, PROMPTS, n_new, temperature=1.0, seed=3, k=8, eos_ids=eos)
    assert big == [("aten.zeros.default", cache)] * 2, big


def test_sample_draws_from_the_tempered_distribution():
    """sample(): token frequencies over 40,000 draws match softmax(logits / T)."""
    logits = torch.tensor([0.5, 2.0, -30.0, 0.0, 1.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    for T in (1.0, 0.7):
        want = (logits / T).softmax(-1)
        tok = sample(logits.repeat(40000, 1), T, torch.rand(40000, 1, generator=gen))
        freq = torch.bincount(tok, minlength=6) / 40000
        assert (freq - want).abs().max() < 0.01, (T, freq, want)  # 4 SE of a proportion near 0.5 is 0.01


def test_bad_input():
    m = tiny()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(m, [[1, 2], []], 4)
