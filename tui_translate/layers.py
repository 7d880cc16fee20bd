"""Building blocks: position-wise feed-forward, sinusoidal positions, encoder and decoder layers.

Each sublayer is wrapped in a residual connection with LayerNorm, either after
the addition ("post", the paper and Marian: x = LN(x + Sublayer(x))) or before
the sublayer ("pre": x = x + Sublayer(LN(x))).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .cache import KVCache
from .config import ModelConfig
from .linear import PackedWeights, project

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "swish": F.silu,
    "silu": F.silu,
}


def sinusoidal_positions(n_positions: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)).

    layout="interleaved" puts sin/cos in even/odd dimensions as in the paper;
    layout="split" puts all sines in the first half and all cosines in the
    second, as Hugging Face Marian does. Returns (n_positions, D).
    """
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    div = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(D/2),)
    angles = position / div  # (P, ceil(D/2))
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    if layout == "interleaved":
        pe[:, 0::2] = torch.sin(angles)
        pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    else:
        half = (d_model + 1) // 2
        pe[:, :half] = torch.sin(angles)
        pe[:, half:] = torch.cos(angles[:, : d_model - half])
    return pe.float()


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied at every position."""

    def __init__(self, d_model: int, d_ff: int, activation: str, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.act = _ACTIVATIONS[activation]
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor, packed: PackedWeights | None = None) -> Tensor:
        h = self.act(project(x, self.fc1, packed=packed))  # (B, T, d_ff)
        if self.training and self.activation_dropout > 0:
            h = F.dropout(h, self.activation_dropout)
        return project(h, self.fc2, packed=packed)  # (B, T, D)


class _Residual(nn.Module):
    """Residual connection + LayerNorm, post- or pre-norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.pre = config.norm_placement == "pre"
        self.dropout = config.dropout

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre else x

    def after(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        if self.training and self.dropout > 0:
            sublayer_out = F.dropout(sublayer_out, self.dropout)
        y = x + sublayer_out
        return y if self.pre else self.norm(y)


class EncoderLayer(nn.Module):
    """Self-attention over the source, then the feed-forward network."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config.d_model, config.n_heads, config.attention_dropout)
        self.self_attn_res = _Residual(config)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.activation, config.activation_dropout)
        self.ffn_res = _Residual(config)

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False,
                packed: PackedWeights | None = None) -> tuple[Tensor, Tensor | None]:
        """x: (B, S, D); mask: (B, 1, 1, S) True at real tokens. Returns x and weights (B, H, S, S) | None.
        packed: inference weights to multiply with (None: nn.Linear's arithmetic)."""
        h = self.self_attn_res.before(x)
        attn, weights = self.self_attn(h, h, mask, need_weights=need_weights, packed=packed)
        x = self.self_attn_res.after(x, attn)
        x = self.ffn_res.after(x, self.ffn(self.ffn_res.before(x), packed))
        return x, weights


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder cross-attention, feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config.d_model, config.n_heads, config.attention_dropout)
        self.self_attn_res = _Residual(config)
        self.cross_attn = MultiHeadAttention(config.d_model, config.n_heads, config.attention_dropout)
        self.cross_attn_res = _Residual(config)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.activation, config.activation_dropout)
        self.ffn_res = _Residual(config)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None,
        need_weights: bool = False,
        packed: PackedWeights | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Full-sequence (training / teacher-forced) pass.

        x: (B, T, D) target prefix embeddings; memory: (B, S, D); memory_mask: (B, 1, 1, S).
        Returns x, self weights (B, H, T, T) | None, cross weights (B, H, T, S) | None.
        """
        h = self.self_attn_res.before(x)
        attn, self_w = self.self_attn(h, h, is_causal=True, need_weights=need_weights, packed=packed)
        x = self.self_attn_res.after(x, attn)
        h = self.cross_attn_res.before(x)
        attn, cross_w = self.cross_attn(h, memory, memory_mask, need_weights=need_weights, packed=packed)
        x = self.cross_attn_res.after(x, attn)
        x = self.ffn_res.after(x, self.ffn(self.ffn_res.before(x), packed))
        return x, self_w, cross_w

    def step(
        self, x: Tensor, cache: KVCache, index: int, need_weights: bool = False, packed: PackedWeights | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Incremental pass over T_new new positions, using and extending the cache.

        x: (N, T_new, D). Self-attention sees every cached position plus the new
        ones up to itself; cross-attention uses the cached encoder keys/values.
        Returns x, self weights (N, H, T_new, T_past + T_new) | None, cross weights (N, H, T_new, S) | None.
        """
        t_new = x.size(1)
        past = cache.length
        h = self.self_attn_res.before(x)
        q, kv_new = self.self_attn.project_qkv(h, packed)  # (N, H, T_new, d_k), (2, N, H, T_new, d_k)
        k, v = cache.append(index, kv_new)  # (N, H, T_past + T_new, d_k) each
        causal = None
        if t_new > 1:
            causal = torch.ones(t_new, past + t_new, dtype=torch.bool, device=x.device).tril(past)
        attn, self_w = self.self_attn.attend(q, k, v, causal, need_weights=need_weights, packed=packed)
        x = self.self_attn_res.after(x, attn)

        h = self.cross_attn_res.before(x)
        q = self.cross_attn.project_query(h, packed)  # (N, H, T_new, d_k)
        cross_k, cross_v = cache.cross(index)  # (N, H, S, d_k) each
        attn, cross_w = self.cross_attn.attend(q, cross_k, cross_v, cache.cross_mask, need_weights=need_weights, packed=packed)
        x = self.cross_attn_res.after(x, attn)
        x = self.ffn_res.after(x, self.ffn(self.ffn_res.before(x), packed))
        return x, self_w, cross_w


def embedding_scale(config: ModelConfig) -> float:
    return math.sqrt(config.d_model) if config.scale_embedding else 1.0
