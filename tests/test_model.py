"""model.py against transformers' Qwen2/Qwen3 (logit parity), save/load round trips, bad-input errors."""
import json, os

import pytest
import torch

from model import ModelConfig, Transformer, load_model, save_model

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")

DIMS = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def hf_model(kind="qwen2", tied=False, **over):
    torch.manual_seed(0)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**{**DIMS, **over}, tie_word_embeddings=tied,
                                       rope_parameters={"rope_type": "default", "rope_theta": 500.0})
        m = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3Config(**{**DIMS, "head_dim": 12, **over}, tie_word_embeddings=tied,
                                       rope_parameters={"rope_type": "default", "rope_theta": 500.0})
        m = transformers.Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # HF inits biases and norms to constants: randomise so the test can catch mix-ups
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m.float().eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, DIMS["vocab_size"], (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padded rows
    mask[2, :7] = 0
    return ids, mask


def hf_logits(m, ids, mask):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()


def ours_logits(m, ids, mask):
    with torch.no_grad():
        return m(ids, attention_mask=mask)


def assert_close_on_real(a, b, mask, tol=1e-4):
    real = mask.bool()
    assert (a[real] - b[real]).abs().max().item() <= tol


@pytest.mark.parametrize("kind,tied,shard,over", [
    ("qwen2", False, False, {}),
    ("qwen2", True, False, {}),
    ("qwen2", False, True, {"num_key_value_heads": 1}),
    ("qwen3", True, False, {}),
    ("qwen3", False, True, {"num_key_value_heads": 4}),
])
def test_logit_parity_with_transformers(tmp_path, kind, tied, shard, over):
    ref = hf_model(kind, tied, **over)
    ref.save_pretrained(tmp_path, max_shard_size="20KB" if shard else "5GB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == shard
    ours = load_model(str(tmp_path))
    assert ours.config.model_type == kind and ours.config.tie_word_embeddings == tied
    if tied:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids, mask = batch()
    assert_close_on_real(ours_logits(ours, ids, mask), hf_logits(ref, ids, mask), mask)
    # no mask: plain causal path
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    # hidden states feed lm_head exactly
    with torch.no_grad():
        h = ours(ids, return_hidden=True)
        assert h.shape == (3, 11, DIMS["hidden_size"])
        assert torch.allclose(h @ ours.lm_head.weight.T, ours(ids), atol=1e-5)


@pytest.mark.parametrize("kind,tied", [("qwen2", True), ("qwen3", False)])
def test_save_model_loads_in_transformers(tmp_path, kind, tied):
    ref = hf_model(kind, tied)
    ref.save_pretrained(tmp_path / "a")
    ours = load_model(str(tmp_path / "a"))
    save_model(ours, str(tmp_path / "b"))
    save_model(ours, str(tmp_path / "b"))  # overwriting an existing folder works (atomic swap)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b", dtype=torch.float32).eval()
    ids, mask = batch()
    assert_close_on_real(hf_logits(back, ids, mask), ours_logits(ours, ids, mask), mask, tol=1e-5)
    again = load_model(str(tmp_path / "b"))
    assert_close_on_real(ours_logits(again, ids, mask), ours_logits(ours, ids, mask), mask, tol=0)


def test_config_roundtrip_and_rope_theta_forms():
    c = ModelConfig.from_hf({**DIMS, "model_type": "qwen2", "rope_theta": 123.0})
    assert c.rope_theta == 123.0 and c.head_dim == 8 and c.attention_bias
    c2 = ModelConfig.from_hf(c.to_hf())
    assert c2 == c
    c3 = ModelConfig.from_hf({**DIMS, "model_type": "qwen3", "head_dim": 16,
                              "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}})
    assert c3.rope_theta == 7.0 and c3.head_dim == 16 and not c3.attention_bias
    with pytest.raises(ValueError, match="RoPE scaling"):
        ModelConfig.from_hf({**DIMS, "model_type": "qwen2", "rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))
    ref = hf_model("qwen2")
    ref.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        load_model(str(tmp_path / "m"))
    # a missing tensor and a mis-shaped tensor are named
    from safetensors.torch import load_file, save_file
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    f = str(tmp_path / "m" / "model.safetensors")
    sd = load_file(f)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, f)
    with pytest.raises(ValueError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        load_model(str(tmp_path / "m"))
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(sd, f)
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight has shape"):
        load_model(str(tmp_path / "m"))
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(48, 32)
    sd["model.extra.weight"] = torch.zeros(2)
    save_file(sd, f)
    with pytest.raises(ValueError, match="unexpected tensors .*model.extra.weight"):
        load_model(str(tmp_path / "m"))


def test_tiny_tokenizer_and_init_model(tmp_path):
    from model import init_model, train_tokenizer
    words = ["fever", "cough", "aspirin", "diagnosis", "option", "patient", "the", "with", "and", "is"]
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g).tolist())
             for _ in range(200)]
    tok = train_tokenizer(texts, str(tmp_path / "tok"), vocab_size=300)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    assert auto.pad_token_id != auto.eos_token_id
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the patient with fever"}]
    text = auto.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nthe patient with fever<|im_end|>\n"
                    "<|im_start|>assistant\n")
    out = "<think>fever and cough</think>\n<answer>C</answer>"
    ids = auto(out)["input_ids"]
    for t in ("<think>", "</think>", "<answer>", "</answer>"):
        assert auto.convert_tokens_to_ids(t) in ids  # one id each, not split into bytes
    assert auto.decode(ids + [auto.eos_token_id], skip_special_tokens=True) == out
    assert auto.decode(auto("naïve – ünïcode")["input_ids"]) == "naïve – ünïcode"  # byte-level: no UNK
    m = init_model(str(tmp_path / "m"), len(tok), seed=3, tokenizer=tok, hidden_size=32, intermediate_size=64,
                   num_attention_heads=4, num_key_value_heads=2)
    assert m.config.vocab_size == len(auto) and m.config.model_type == "qwen2"
    assert os.path.exists(tmp_path / "m" / "tokenizer.json")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    ids = torch.tensor([auto(text)["input_ids"]])
    with torch.no_grad():
        assert (back(ids).logits - m(ids)).abs().max().item() <= 1e-5
    m2 = init_model(str(tmp_path / "m2"), len(tok), seed=3, hidden_size=32, intermediate_size=64,
                    num_attention_heads=4, num_key_value_heads=2)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_save_state_load_state_single_process(tmp_path):
    from model import load_state, save_state

    def fresh(seed):
        torch.manual_seed(seed)
        m = Transformer(ModelConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8))
        decay = [p for n, p in m.named_parameters() if p.dim() == 2]
        rest = [p for n, p in m.named_parameters() if p.dim() < 2]
        return m, torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)

    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    m, opt = fresh(0)
    for _ in range(2):
        m(ids).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    assert load_state(str(tmp_path / "state"), m, opt) is None  # nothing saved yet
    torch.manual_seed(7)
    save_state(str(tmp_path / "state"), m, opt, {"step": 2, "note": "x"})
    after = torch.rand(2)
    m2, opt2 = fresh(1)
    assert load_state(str(tmp_path / "state"), m2, opt2) == {"step": 2, "note": "x"}
    assert torch.equal(torch.rand(2), after)
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    for (n, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    assert opt2.param_groups[1]["weight_decay"] == 0.0 and opt2.param_groups[0]["weight_decay"] == 0.01
    assert sorted(os.listdir(tmp_path / "state")) == ["rank0.safetensors", "state.json"]  # one file a rank, no pickle
    for mm, oo in ((m, opt), (m2, opt2)):  # the next step is identical
        mm(ids).logsumexp(-1).mean().backward()
        oo.step()
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))


def test_saved_model_stops_at_im_end_in_transformers_generate(tmp_path):
    """config.json and generation_config.json carry the ChatML end ids: transformers' generate() stops after the
    answer instead of running to max_new_tokens (a model trained to answer "fever" then <|im_end|>)."""
    from common import chat_ids
    from model import init_model, train_tokenizer
    tok = train_tokenizer(["the patient with fever and cough"] * 20, str(tmp_path / "tok"), vocab_size=300)
    m = init_model(str(tmp_path / "init"), len(tok), tokenizer=tok, hidden_size=32, intermediate_size=64)
    prompt = chat_ids(tok, [{"role": "user", "content": "the patient with"}])
    answer = tok("fever")["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([prompt + answer])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(m(ids[:, :-1])[0, len(prompt) - 1:], ids[0, len(prompt):])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(m, str(tmp_path / "m"), tok)
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["eos_token_id"] == [
        tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    out = hf.generate(ids[:, :len(prompt)], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=20, do_sample=False)
    assert out[0, len(prompt):].tolist() == answer


def test_fused_sdpa_rules_keep_the_results(monkeypatch):
    """On CUDA (model.FUSED_SDPA) masked attention expands K/V to the query heads (mem-efficient, not the math
    kernel) and packed rows of one segment each drop their mask (flash). Switched on for the CPU here: every masked
    SDPA call then has as many K/V heads as query heads, and the prefill, packed, group and decode paths give the
    default path's results (gpu_check.sh runs them on CUDA with the math kernel disabled)."""
    import model as M
    import sampler
    from sft import pack_batch
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**{**DIMS, "num_attention_heads": 4, "num_key_value_heads": 1})).eval()
    ids, mask = batch()
    seqs = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    packed = pack_batch(seqs, [1, 1, 1], 0)  # rows [0] and [1, 2]: one and two segments
    single = pack_batch(seqs[:1], [1], 0)
    prompts, comps = torch.tensor([[0, 3, 4], [5, 6, 7]]), torch.tensor([[8, 9], [10, 0], [11, 12]])
    group = (prompts, torch.tensor([[0, 1, 1], [1, 1, 1]]), comps, comps.masked_fill(comps == 0, -100),
             torch.tensor([1, 2]))

    def run():
        with torch.no_grad():
            return [m(ids, attention_mask=mask) * mask[..., None], m.seq_logprobs(packed[0], packed[1],
                    position_ids=packed[2], segment_ids=packed[3])[0], m.seq_logprobs(single[0], single[1],
                    position_ids=single[2], segment_ids=single[3])[0], m.group_logprobs(*group)[0],
                    torch.tensor(sampler.generate(m, [[1, 2, 3], [4]], 6, k=2))]
    want = run()
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape[1], k.shape[1], attn_mask is not None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)
    monkeypatch.setattr(M, "FUSED_SDPA", {"cpu"})
    monkeypatch.setattr(M.F, "scaled_dot_product_attention", spy)
    for a, b in zip(run(), want):
        assert (a.float() - b.float()).abs().max().item() <= 1e-6
    assert all(hq == hk for hq, hk, masked, _ in calls if masked)  # no masked call left to the math kernel
    assert any(hq == 4 and hk == 4 for hq, hk, masked, _ in calls if masked)  # masks with K/V expanded
    assert any(causal and not masked and hq == 4 and hk == 1 for hq, hk, masked, causal in calls)  # the single row
