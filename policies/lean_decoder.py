"""Inference-only forward of a merged Qwen2 decoder for unpadded sequences, with a preallocated KV cache.

The VLA's decision is ~12 decoder calls (prompt, one per commentary token, then the waypoint queries).
For the tiny model each call costs far more in transformers' per-module bookkeeping (mask building,
cache objects, config look-ups, hooks) than in arithmetic, so on one CPU thread the driving agent runs
the same weights through this plain loop instead: fused q/k/v and gate/up projections, rotary tables
computed once, keys and values written in place. It reproduces `Qwen2Model.forward` (default RoPE,
full attention, SiLU MLP) to float precision; `LeanQwen2.build` returns None for anything else, and the
caller then keeps using transformers. Positions are implied by the cache length, so it serves only
sequences without padding (one observation at a time, as in driving). The fused projections are copies:
the decoder layers' weights are held twice (under 1 MB for the tiny model, 1.4 GB in float32 for
the 0.5B one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LeanCache:
    keys: torch.Tensor  # (layers, B, kv_heads, capacity, head_dim)
    values: torch.Tensor
    length: int = 0


@dataclass
class _Layer:
    ln_attn: torch.Tensor
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor
    ln_mlp: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # torch's fused kernel: one call instead of six
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()  # half precision: normalise in float32 as transformers does
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class LeanQwen2:
    def __init__(self, model: nn.Module) -> None:
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.layers: list[_Layer] = []
        for layer in model.layers:
            att, mlp = layer.self_attn, layer.mlp
            bias = None
            if att.q_proj.bias is not None:
                bias = torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]).detach()
            self.layers.append(
                _Layer(
                    ln_attn=layer.input_layernorm.weight.detach(),
                    w_qkv=torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach(),
                    b_qkv=bias,
                    w_o=att.o_proj.weight.detach(),
                    ln_mlp=layer.post_attention_layernorm.weight.detach(),
                    w_gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                    w_down=mlp.down_proj.weight.detach(),
                )
            )
        self.norm = model.norm.weight.detach()
        rot = model.rotary_emb
        positions = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * rot.inv_freq.float()[None]
        angles = torch.cat([freqs, freqs], -1)
        dtype = self.norm.dtype
        self.cos = (angles.cos() * rot.attention_scaling).to(self.norm.device, dtype)
        self.sin = (angles.sin() * rot.attention_scaling).to(self.norm.device, dtype)

    @staticmethod
    def build(model: nn.Module) -> LeanQwen2 | None:
        """The lean forward of a transformers `Qwen2Model`, or None where it would not be exact."""
        cfg = model.config
        rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        layer_types = getattr(cfg, "layer_types", None) or ["full_attention"]
        if (
            type(model).__name__ != "Qwen2Model"
            or rope != "default"
            or any(t != "full_attention" for t in layer_types)
            or cfg.hidden_act != "silu"
            or any(hasattr(m, "lora_A") for m in model.modules())  # adapters not merged in
        ):
            return None
        return LeanQwen2(model)

    def new_cache(self, batch: int, capacity: int) -> LeanCache:
        shape = (len(self.layers), batch, self.n_kv, capacity, self.head_dim)
        like = {"dtype": self.norm.dtype, "device": self.norm.device}
        return LeanCache(torch.empty(shape, **like), torch.empty(shape, **like))

    def __call__(self, x: torch.Tensor, cache: LeanCache) -> torch.Tensor:
        """x (B, T, d) embeddings at positions cache.length ... + T - 1 -> normalised hidden (B, T, d)."""
        b, t, _ = x.shape
        p0, p1 = cache.length, cache.length + t
        if p1 > cache.keys.shape[3] or p1 > len(self.cos):
            raise ValueError(f"sequence of {p1} tokens exceeds the cache ({cache.keys.shape[3]})")
        cos, sin = self.cos[p0:p1], self.sin[p0:p1]
        mask = None
        if t > 1:  # causal within the new tokens, everything cached before them visible
            seen = torch.arange(p1, device=x.device)
            mask = seen[None, :] <= seen[p0:, None]
        for i, layer in enumerate(self.layers):
            h = _rms(x, layer.ln_attn, self.eps)
            qkv = F.linear(h, layer.w_qkv, layer.b_qkv).view(b, t, -1, self.head_dim).transpose(1, 2)
            qk = _rotate(qkv[:, : self.n_heads + self.n_kv], cos, sin)  # queries and keys in one go
            q = qk[:, : self.n_heads]
            cache.keys[i, :, :, p0:p1] = qk[:, self.n_heads :]
            cache.values[i, :, :, p0:p1] = qkv[:, self.n_heads + self.n_kv :]
            a = F.scaled_dot_product_attention(
                q,
                cache.keys[i, :, :, :p1],
                cache.values[i, :, :, :p1],
                attn_mask=mask,
                scale=self.scale,
                enable_gqa=self.n_kv != self.n_heads,
            )
            x = x + F.linear(a.transpose(1, 2).reshape(b, t, -1), layer.w_o)
            gate, up = F.linear(_rms(x, layer.ln_mlp, self.eps), layer.w_gate_up).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, layer.w_down)
        cache.length = p1
        return _rms(x, self.norm, self.eps)
