"""Qwen2 (Qwen2.5) and Qwen3 decoder-only transformers in raw PyTorch, plus the helpers every stage shares.

Reads / writes Hugging Face folders (config.json + model.safetensors, or sharded with
model.safetensors.index.json): parameter names match HF 1:1, so `transformers` loads what we save with identical
logits and vice versa. Also: tiny-mode builders (a byte-level BPE tokenizer with ChatML, a fresh tiny Qwen2-shaped
model) and the distributed helpers used by sft.py / grpo.py (FSDP2 sharding, resumable safetensors checkpoints).
This is the policy network of Fleming-R1 (arXiv 2509.15279, sec. 3: the Qwen2.5 / Qwen3 backbones).
"""
import json, os, random, shutil
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

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
        rp = d.get("rope_parameters") or {}
        if rp.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported rope_type {rp['rope_type']!r}")
        kw["rope_theta"] = rp.get("rope_theta", d.get("rope_theta", 10000.0))
        kw.setdefault("num_key_value_heads", d["num_attention_heads"])
        kw.setdefault("head_dim", d["hidden_size"] // d["num_attention_heads"])
        kw.setdefault("attention_bias", mt == "qwen2")  # Qwen2 always has q/k/v biases
        kw.setdefault("tie_word_embeddings", False)  # the HF default when the key is absent
        return cls(**kw)

    def to_hf(self) -> dict:
        d = {k: getattr(self, k) for k in (f.name for f in fields(self))}
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
        # normalise in fp32, cast back *before* the weight multiply (as HF does: bit-level parity in bf16)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope(position_ids, head_dim, theta, dtype):
    """Non-interleaved RoPE tables: position_ids (B, T) -> cos, sin (B, 1, T, head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


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
        if cache is not None:  # write this chunk into the static cache, attend over everything so far
            cache[0][:, :, cache_pos:cache_pos + T] = k
            cache[1][:, :, cache_pos:cache_pos + T] = v
            k, v = cache[0][:, :, :cache_pos + T], cache[1][:, :, :cache_pos + T]  # (B, K, S, hd)
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

    def tie(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def layers(self):  # the FSDP units
        return self.model.layers

    def forward(self, input_ids, position_ids=None, attention_mask=None, return_hidden=False,
                kv_cache=None, cache_pos=0):
        """input_ids (B, T) -> logits (B, T, V) fp32, or final-normed hidden states (B, T, D) if return_hidden.

        position_ids (B, T): defaults to cumsum(attention_mask) - 1 (left padding works), else 0..T-1.
        attention_mask (B, S) 1=real 0=pad, over all keys: S = T, or cache_pos + T when decoding with a cache.
        kv_cache = (k, v), each (L, B, K, T_max, head_dim), preallocated by the caller (see sampler.py); this
        call writes keys/values for slots cache_pos .. cache_pos+T-1.
        """
        B, T = input_ids.shape
        dev = input_ids.device
        S = cache_pos + T
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(cache_pos, S, device=dev).expand(B, T)
        mask = None
        if attention_mask is not None or cache_pos > 0:
            qpos = torch.arange(cache_pos, S, device=dev)[:, None]  # (T, 1) absolute slot of each query
            kpos = torch.arange(S, device=dev)[None]  # (1, S)
            mask = (kpos <= qpos)[None, None]  # (1, 1, T, S) causal
            if attention_mask is not None:
                # pad keys are invisible; a query still sees itself so an all-pad row is not NaN
                mask = mask & attention_mask.bool()[:, None, None, :] | (kpos == qpos)
        x = self.model.embed_tokens(input_ids)  # (B, T, D)
        cos, sin = rope(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            cache = None if kv_cache is None else (kv_cache[0][i], kv_cache[1][i])
            x = layer(x, cos, sin, mask, cache, cache_pos)
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x).float()
