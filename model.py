"""Qwen2 (Qwen2.5) and Qwen3 decoder-only transformers in raw PyTorch, plus the helpers every stage shares.

Reads / writes Hugging Face folders (config.json + model.safetensors, or sharded with
model.safetensors.index.json): parameter names match HF 1:1, so `transformers` loads what we save with identical
logits and vice versa. The model's log-probs of chosen tokens (SFT's loss, GRPO's eq. 1), the optimizer, gradient
clipping and lr schedule sft.py and grpo.py share, tiny-mode builders (a byte-level BPE tokenizer with ChatML, a
fresh tiny Qwen2-shaped model) and the distributed helpers (FSDP2 sharding, resumable safetensors checkpoints).
"""
import datetime, json, math, os, random, shutil, sys
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common import eos_ids
from kernels.logprob import token_logprobs

IGNORE = -100  # the target of a position that predicts nothing (prompt tokens, pads)
# Devices whose SDPA fused kernels have their own rules (torch 2.13 CUDA: flash takes no mask, mem-efficient no GQA,
# so a mask with enable_gqa runs the fp32 math kernel): there masked attention expands K/V to the query heads, and
# packed rows of one segment each drop their mask (is_causal: flash)
FUSED_SDPA = {"cuda"}

# ----------------------------------------------------------------------------------------------- config

@dataclass
class ModelConfig:
    model_type: str = "qwen2"  # "qwen2" (q/k/v bias) | "qwen3" (per-head q_norm/k_norm, explicit head_dim)
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    attention_bias: bool = True

    @classmethod
    def from_hf(cls, d: dict) -> "ModelConfig":
        mt = d.get("model_type")
        if mt not in ("qwen2", "qwen3"):
            raise ValueError(f"unsupported model_type {mt!r} (supported: qwen2, qwen3)")
        if d.get("use_sliding_window"):
            raise ValueError("use_sliding_window=true is not supported")
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and d[f.name] is not None}
        # transformers 5.x nests the RoPE base in rope_parameters; hub configs keep a top-level rope_theta
        rp = {**(d.get("rope_scaling") or {}), **(d.get("rope_parameters") or {})}
        if rp.get("rope_type", rp.get("type", "default")) != "default":
            raise ValueError(f"unsupported RoPE scaling {rp} (only the default RoPE is implemented)")
        kw["rope_theta"] = rp.get("rope_theta", d.get("rope_theta", 10000.0))
        kw.setdefault("num_key_value_heads", d["num_attention_heads"])
        kw.setdefault("head_dim", d["hidden_size"] // d["num_attention_heads"])
        kw.setdefault("attention_bias", mt == "qwen2")  # Qwen2 always has q/k/v biases
        kw.setdefault("tie_word_embeddings", False)  # the HF default when the key is absent
        return cls(**kw)

    def to_hf(self) -> dict:
        d = asdict(self)
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]
        d.update(architectures=[arch], hidden_act="silu", dtype="float32", use_sliding_window=False,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        if self.model_type == "qwen2":
            del d["attention_bias"]  # not a Qwen2Config field: the bias is implied
        return d


# ----------------------------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        # in fp32, cast back *before* the weight multiply (as HF does: parity in bf16); F.rms_norm: one op, not five
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def apply_rope(x, cos, sin):  # x (B, H, T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        H, K, hd, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
        self.q_proj = nn.Linear(D, H * hd, bias=c.attention_bias)
        self.k_proj = nn.Linear(D, K * hd, bias=c.attention_bias)
        self.v_proj = nn.Linear(D, K * hd, bias=c.attention_bias)
        self.o_proj = nn.Linear(H * hd, D, bias=False)
        if c.model_type == "qwen3":
            self.q_norm, self.k_norm = RMSNorm(hd, c.rms_norm_eps), RMSNorm(hd, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None, cache_pos=0):
        """x (B, T, D); mask (B, 1, T, S) bool or None (= plain causal); cache = (k, v) each (B, K, T_max, hd)."""
        B, T, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(B, T, c.num_attention_heads, c.head_dim)  # (B, T, H, hd)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, c.head_dim)  # (B, T, K, hd)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)  # (B, K, T, hd)
        if c.model_type == "qwen3":  # per-head RMSNorm before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
        if cache is not None and cache[0].shape[2] == cache_pos:  # no room to write: a read-only prefix (GRPO's
            k, v = torch.cat((cache[0], k), 2), torch.cat((cache[1], v), 2)  # shared prompts), differentiable
        elif cache is not None:  # write this chunk into the static cache, attend over everything so far
            cache[0][:, :, cache_pos:cache_pos + T] = k
            cache[1][:, :, cache_pos:cache_pos + T] = v
            k, v = cache[0][:, :, :cache_pos + T], cache[1][:, :, :cache_pos + T]  # (B, K, S, hd)
        if T == 1 and cache is not None:  # decode: a group's query heads become the "query positions" of their
            # shared kv head -- (B, K, H/K, hd) -- so no kv head is repeated; 2x faster attention on CPU
            H, K = c.num_attention_heads, c.num_key_value_heads
            y = F.scaled_dot_product_attention(q.view(B, K, H // K, c.head_dim), k, v, attn_mask=mask)
            return self.o_proj(y.reshape(B, 1, -1))  # (B, 1, D)
        if mask is not None and q.device.type in FUSED_SDPA and c.num_key_value_heads < c.num_attention_heads:
            r = c.num_attention_heads // c.num_key_value_heads  # (B, K, S, hd) -> (B, H, S, hd): mem-efficient
            k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):  # SwiGLU
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, cache=None, cache_pos=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Decoder-only LM. Submodule names mirror HF (model.embed_tokens, model.layers.N..., model.norm, lm_head)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.model.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.model.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.tie()
        self._rope = {}  # (device, dtype) -> cos, sin tables of positions 0..n-1 (rope_at)

    def tie(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope_at(self, position_ids, dtype):
        """Non-interleaved RoPE cos, sin (B, 1, T, head_dim) at position_ids (B, T), from tables of every position so
        far (grown by doubling): two ops a call, not nine (a tiny model's decode step is mostly small ops)."""
        dev, hd = position_ids.device, self.config.head_dim
        n, key = int(position_ids.max()) + 1, (dev, dtype)
        have = len(self._rope[key][0]) if key in self._rope else 0
        if have < n:
            inv_freq = 1.0 / self.config.rope_theta ** (torch.arange(0, hd, 2, device=dev).float() / hd)
            freqs = torch.arange(max(n, 2 * have, 256), device=dev).float()[:, None] * inv_freq  # (positions, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope[key] = [emb.cos().to(dtype), emb.sin().to(dtype)]
        return tuple(x[position_ids][:, None] for x in self._rope[key])

    def forward(self, input_ids, position_ids=None, attention_mask=None, return_hidden=False,
                kv_cache=None, cache_pos=0, segment_ids=None):
        """input_ids (B, T) -> logits (B, T, V) fp32, or final-normed hidden states (B, T, D) if return_hidden.
        position_ids (B, T): default cumsum(attention_mask) - 1 (left padding works), else cache_pos + 0..T-1.
        attention_mask (B, S) 1=real 0=pad over all keys: S = cache_pos + T. kv_cache = (k, v), each (L, B, K, T_max,
        head_dim), preallocated (sampler.py): slots cache_pos.. are written; a cache of exactly cache_pos slots is a
        read-only prefix (group_logprobs trains through it). segment_ids (B, T), no cache: rows packed into one
        (sft.pack_batch), a token sees only its own segment (pass each segment's own position_ids)."""
        B, T = input_ids.shape
        dev = input_ids.device
        S = cache_pos + T
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(cache_pos, S, device=dev).expand(B, T)
        mask = None
        if segment_ids is not None and dev.type in FUSED_SDPA and bool(((segment_ids == segment_ids[:, :1]) |
                                                                         (segment_ids < 0)).all()):
            segment_ids = None  # one segment a row, pads after it: plain causal, no mask (flash on CUDA)
        if segment_ids is not None:  # block-diagonal causal
            mask = torch.ones(T, T, dtype=torch.bool, device=dev).tril()[None, None] & \
                (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])  # (B, 1, T, T)
        elif T == 1 and attention_mask is not None:  # decode: every key is earlier or itself; pads stay invisible.
            # Additive, so that no layer's attention converts a boolean mask again
            dt = self.model.embed_tokens.weight.dtype  # the compute dtype (bf16 under FSDP mixed precision)
            mask = torch.zeros(B, 1, 1, S, dtype=dt, device=dev).masked_fill_(~attention_mask.bool()[:, None, None, :],
                                                                              -torch.inf)
            mask[..., -1] = 0.0
        elif attention_mask is not None or cache_pos > 0:
            qpos = torch.arange(cache_pos, S, device=dev)[:, None]  # (T, 1) absolute slot of each query
            kpos = torch.arange(S, device=dev)[None]  # (1, S)
            mask = (kpos <= qpos)[None, None]  # (1, 1, T, S) causal
            if attention_mask is not None:
                # pad keys are invisible; a query still sees itself so an all-pad row is not NaN
                mask = mask & attention_mask.bool()[:, None, None, :] | (kpos == qpos)
        x = self.model.embed_tokens(input_ids)  # (B, T, D)
        cos, sin = self.rope_at(position_ids, x.dtype)
        for i, layer in enumerate(self.model.layers):
            cache = None if kv_cache is None else (kv_cache[0][i], kv_cache[1][i])
            x = layer(x, cos, sin, mask, cache, cache_pos)
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x).float()

    # ---- log-probs of chosen tokens: SFT's loss and GRPO's eq. 1. Registered with FSDP2 as forward methods
    # (shard_model), so that lm_head.weight is unsharded while token_logprobs uses it

    def _logprobs_at(self, h, tgt, temperature, entropy):
        """h (B, T, D), tgt (B, T) the token each position predicts -> log-probs (B, T) (0 where IGNORE), entropy (N,)
        of the selected positions or None. Only those go through lm_head (the fused kernel): no (B, T, V) logits."""
        sel = tgt != IGNORE
        out = token_logprobs(h[sel], self.lm_head.weight, tgt[sel], temperature, return_entropy=entropy,
                             backend="triton" if h.is_cuda else "torch")  # (N,)
        logp, ent = out if entropy else (out, None)
        return torch.zeros(tgt.shape, device=h.device).masked_scatter(sel, logp), ent.detach() if entropy else None

    def seq_logprobs(self, ids, tgt, temperature=1.0, entropy=True, position_ids=None, segment_ids=None):
        """ids (B, T) right-padded prompt + completion, tgt (B, T) the completion token each position predicts (IGNORE
        elsewhere: sft.pad_batch) -> _logprobs_at's at `temperature`. position_ids, segment_ids: sft.pack_batch."""
        h = self.forward(ids, position_ids, return_hidden=True, segment_ids=segment_ids)  # right pads never seen
        return self._logprobs_at(h, tgt, temperature, entropy)

    def group_logprobs(self, prompts, pmask, comps, tgt, counts, temperature=1.0, entropy=True):
        """The same for GRPO groups, each prompt run once for all its completions: prompts (G, P) left-padded (pmask
        1 = real), comps (N, C) right-padded, counts[g] rows of prompt g ((G,) tensor or one int), tgt (N, C) = comps
        with IGNORE at the pads. As the sampler: prefill the prompts into a KV cache, replicate it, run the completions
        on top; the gradient reaches the prompt through the replicated keys and values (the copies' gradients add)."""
        c, (G, P) = self.config, prompts.shape
        dt = self.lm_head.weight.dtype  # the compute dtype (bf16 under FSDP mixed precision)
        # one tensor per layer: autograd forbids writing layer i+1 into a tensor whose layer-i slice was saved
        cache = tuple([torch.zeros(G, c.num_key_value_heads, P, c.head_dim, dtype=dt, device=prompts.device)
                       for _ in range(c.num_hidden_layers)] for _ in range(2))
        hp = self.forward(prompts, attention_mask=pmask, kv_cache=cache, cache_pos=0, return_hidden=True)[:, -1]
        # P slots, cache_pos P: the completions read the replicated prompt cache (forward), never write into it
        cache = tuple([x.repeat_interleave(counts, 0) for x in side] for side in cache)
        mask = torch.cat([pmask.repeat_interleave(counts, 0), torch.ones_like(comps)], 1)  # pads: only later keys
        hc = self.forward(comps, attention_mask=mask, kv_cache=cache, cache_pos=P, return_hidden=True)  # (N, C, D)
        h = torch.cat([hp.repeat_interleave(counts, 0)[:, None], hc[:, :-1]], 1)  # position j predicts comps[:, j]
        return self._logprobs_at(h, tgt, temperature, entropy)


# ----------------------------------------------------------------------------------------------- load / save

def load_model(path, device="cpu", dtype=torch.float32) -> Transformer:
    """Load an HF-format folder (single or sharded safetensors). Errors name the missing/unexpected/bad key."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model folder)")
    with open(cfg_path) as f:
        config = ModelConfig.from_hf(json.load(f))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
    sd = {}
    for fn in files:
        sd.update(load_file(os.path.join(path, fn), device=str(device)))
    with torch.device("meta"):  # no wasted random init: tensors are assigned straight from the checkpoint
        model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
        sd.pop("lm_head.weight", None)  # some tied checkpoints still carry a copy
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match config: missing tensors {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}")
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise ValueError(f"{path}: tensor {k} has shape {tuple(sd[k].shape)}, config expects {tuple(shape)}")
    # copy=True: load_file memory-maps the file; weights must live in RAM, not in evictable page cache
    model.load_state_dict({k: v.to(dtype, copy=True) for k, v in sd.items()}, strict=False, assign=True)
    model.tie()  # assign=True replaced the Parameter objects: re-tie
    return model.to(device)


def _is_dist():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank():
    return torch.distributed.get_rank() if _is_dist() else 0


def _swap_in(tmp, path):
    """Replace `path` by the folder `tmp`: readers never see a half-written folder."""
    old = f"{path}.old{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, path, tokenizer=None, dtype=None):
    """Write an HF folder (config.json + model.safetensors [+ tokenizer, generation_config.json]), in `dtype` if
    given (bf16 after mixed precision training: what HF Qwen checkpoints hold). Every rank calls it; rank 0 writes.
    Collective under FSDP: gathered tensor by tensor (cast on the device): rank 0 holds one copy in host memory."""
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # HF omits the tied copy (and safetensors refuses shared storage)
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        if _rank() == 0:
            sd[k] = v.detach().to(dtype or v.dtype).cpu()
    if _rank() == 0:
        path = os.path.normpath(path)  # "out/" must not put the tmp dir inside out/
        tmp = f"{path}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        gen = {}  # the ids transformers' / vLLM's generate() stop on (else it runs to max_new_tokens) and pad with
        if tokenizer is not None:  # both ChatML ends, as in Qwen's generation_config.json and our sampler
            gen = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids(tokenizer),
                       pad_token_id=tokenizer.pad_token_id)
            gen = {k: v for k, v in gen.items() if v not in (None, [])}
        saved_dtype = str(next(iter(sd.values())).dtype).removeprefix("torch.")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({**model.config.to_hf(), "dtype": saved_dtype, **gen}, f, indent=2)
        if gen:
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(gen, f, indent=2)
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _swap_in(tmp, path)
    if _is_dist():
        torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------- tiny mode

CHATML = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def train_tokenizer(texts, out_dir, vocab_size=4096, words=()):
    """Train a byte-level BPE on strings; save an HF tokenizer folder with ChatML specials (<|endoftext|> pad,
    <|im_end|> eos). <think> </think> <answer> </answer> and `words` are added tokens: always one id each."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in ("<think>", "</think>", "<answer>", "</answer>", *words)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 chat_template=CHATML)
    hf.save_pretrained(out_dir)
    return hf


def init_model(out_dir, vocab_size, seed=0, tokenizer=None, **dims) -> Transformer:
    """Write a freshly initialised (init_weights) tiny Qwen2-shaped model folder."""
    dims = {**dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True), **dims}
    dims.setdefault("head_dim", dims["hidden_size"] // dims["num_attention_heads"])
    torch.manual_seed(seed)
    model = init_weights(Transformer(ModelConfig(vocab_size=vocab_size, **dims)))
    save_model(model, out_dir, tokenizer)
    return model


def init_weights(model):
    """The HF init in place: N(0, 0.02) weights, norms 1, biases 0."""
    for name, p in model.named_parameters():
        if "norm" in name:
            nn.init.ones_(p)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, std=0.02)
    return model


# ----------------------------------------------------------------------------------------------- optimisation

def make_optimizer(model, lr, betas=(0.9, 0.95)):
    """AdamW without weight decay (AdamW's default is 0.01)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, weight_decay=0.0)


def clip_grad(model, max_norm):
    """Clip the global gradient norm; -> the norm before clipping as a float (a DTensor under FSDP)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def lr_at(step, total, warmup, peak, min_ratio=0.1):
    """Linear warmup over `warmup` steps, then cosine decay to min_ratio * peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ----------------------------------------------------------------------------------------------- distributed

def setup_dist():
    """-> (rank, world_size, device). torchrun sets WORLD_SIZE: gloo on CPU, nccl on CUDA; else one process."""
    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    if not _is_dist():  # a generous timeout: ranks wait in barriers while others write checkpoints or mine
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), dev


def exit_worker():
    """The last call of a torchrun worker whose main() returned: leave without interpreter finalization, where a gloo
    thread FSDP2's DTensor caches keep alive takes the GIL in a C++ destructor (SIGABRT, "terminate called ...")."""
    if "WORLD_SIZE" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_worker(fn, *args):
    """fn(*args), then the process group destroyed whatever happens: the body of a torchrun worker's main()."""
    try:
        return fn(*args)
    finally:
        if _is_dist():
            torch.distributed.destroy_process_group()


def all_sum(values, device):
    """Floats summed over ranks -> Python floats. The project's one tensor collective: on the model's `device`, as
    NCCL reduces GPU tensors only."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if _is_dist():
        torch.distributed.all_reduce(t)
    return t.tolist()


def shard_model(model, mixed_precision=False, per_block=True):
    """FSDP2. per_block (the real run): each block, then the root, so one block's full weights are held at a time;
    else (tiny models, where its collectives cost more than they save) one unit. Same values either way. No-op
    without a process group, and in one process without mixed precision (with it: FSDP2 for its bf16 compute)."""
    if not _is_dist() or (torch.distributed.get_world_size() == 1 and not mixed_precision):
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    kw = dict(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else {}
    for block in model.model.layers if per_block else []:
        fully_shard(block, mp_policy=MixedPrecisionPolicy(**kw))
    out = torch.float32 if mixed_precision else None  # fp32 outputs: set on the root only
    fully_shard(model, mp_policy=MixedPrecisionPolicy(**kw, output_dtype=out))
    for name in ("seq_logprobs", "group_logprobs"):  # all-gather / free the weights around them as around forward
        register_fsdp_forward_method(model, name)
    return model


def _rng_state():
    s = {"torch": torch.get_rng_state().tolist(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state().tolist()
    return s


def _local(t):
    """This rank's shard of a DTensor (FSDP2: a block of rows), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _sharded_params(model):
    """named_parameters() as the optimizer holds them: an FSDP2 unit left unsharded by its last forward (the root's
    default) would list full tensors the optimizer does not know."""
    for m in model.modules():
        if hasattr(m, "reshard") and hasattr(m, "unshard"):  # an FSDPModule
            m.reshard()
    return dict(model.named_parameters())


def save_state(dir, model, optimizer, extra: dict):
    """Resumable checkpoint, sharded: each rank writes its shards of the fp32 weights and optimizer state to
    rank<r>.safetensors ("model/<fqn>", "optim/<fqn>/<key>"); rank 0 writes state.json (world size, param_groups,
    non-tensor state, per-rank RNG, `extra`) and swaps the folder in. No pickle, no gathered model (7B: 11 GB a rank,
    not 91 GB on rank 0). Collective; needs a filesystem all ranks share."""
    rank, world = _rank(), torch.distributed.get_world_size() if _is_dist() else 1
    named = _sharded_params(model)
    names = {p: n for n, p in named.items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]  # the optimizer's own numbering
    tensors, scalars = {f"model/{n}": _local(p) for n, p in named.items()}, {}
    osd = optimizer.state_dict()
    for i, st in osd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{names[params[i]]}/{key}"] = _local(v)
            else:
                scalars[f"optim/{names[params[i]]}/{key}"] = v
    path = os.path.normpath(dir)
    tmp = f"{path}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    if _is_dist():
        torch.distributed.barrier()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
              os.path.join(tmp, f"rank{rank}.safetensors"))
    rngs = [_rng_state()]
    if _is_dist():  # also the sign that every rank has written its file
        rngs = [None] * world
        torch.distributed.all_gather_object(rngs, _rng_state())
    if rank == 0:
        meta = {"world": world, "param_groups": osd["param_groups"], "scalars": scalars, "rng": rngs, "extra": extra}
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(meta, f)
        _swap_in(tmp, path)
    if _is_dist():
        torch.distributed.barrier()


def load_state(dir, model, optimizer):
    """Restore what save_state wrote into the same model over as many ranks; -> extra, or None without a state."""
    if not os.path.isfile(os.path.join(dir, "state.json")):
        return None
    with open(os.path.join(dir, "state.json")) as f:
        meta = json.load(f)
    rank, world = _rank(), torch.distributed.get_world_size() if _is_dist() else 1
    if meta.get("world") != world:
        raise ValueError(f"{dir}: saved by {meta.get('world')} ranks, this run has {world}: resume with as many")
    sd = load_file(os.path.join(dir, f"rank{rank}.safetensors"))
    named = _sharded_params(model)
    with torch.no_grad():
        for n, p in named.items():
            _local(p).copy_(sd.pop(f"model/{n}"))
    state = {}
    for k, v in list(sd.items()) + list(meta["scalars"].items()):
        _, name, key = k.split("/")  # "optim/<fqn>/<key>": fqns use dots, never slashes
        p = named[name]
        if torch.is_tensor(v) and v.shape == _local(p).shape:  # a shard of a tensor shaped like its parameter
            v, t = torch.zeros_like(p), v
            _local(v).copy_(t)
        state.setdefault(name, {})[key] = v
    params = [p for g in optimizer.param_groups for p in g["params"]]
    names = {p: n for n, p in named.items()}
    optimizer.load_state_dict({"state": {i: state[names[p]] for i, p in enumerate(params) if names[p] in state},
                               "param_groups": meta["param_groups"]})
    rng = meta["rng"][rank]
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(rng["cuda"], dtype=torch.uint8))
    return meta["extra"]
