"""Multi-head scaled dot-product attention, written out as in the paper.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
    MultiHead(Q, K, V) = Concat(head_1, …, head_H) W_O,  head_h = Attention(Q W_Q_h, K W_K_h, V W_V_h)

Two paths through the same weights:

* the fast path calls `torch.nn.functional.scaled_dot_product_attention` and
  keeps no weights (training, bulk decoding);
* the capture path computes the probabilities explicitly (max subtracted for
  numerical stability) and returns them, shape (B, H, T, S), so they can be
  shown to the user.

Shapes: B batch, H heads, T query length, S key length, D = d_model, d_k = D / H.
Masks are boolean, broadcastable to (B, H, T, S), True where attention is allowed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import PackedWeights, project


def attention_probabilities(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(Q Kᵀ / √d_k) with the row maximum subtracted before exp.

    q: (B, H, T, d_k), k: (B, H, S, d_k), mask: bool broadcastable to (B, H, T, S).
    Returns (B, H, T, S); masked positions are exactly 0 and every row sums to 1.
    """
    d_k = q.size(-1)
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d_k)  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    scores = scores - scores.amax(dim=-1, keepdim=True)  # stability: max subtracted
    weights = torch.exp(scores)  # exp(-inf) = 0 exactly at masked positions
    return weights / weights.sum(dim=-1, keepdim=True)  # (B, H, T, S)


def key_padding_mask(valid: Tensor) -> Tensor | None:
    """valid: (B, S) bool, True at real tokens -> mask (B, 1, 1, S) for attention over those keys,
    or None when nothing is padding (one sentence, or equal lengths): attention then skips masking."""
    return None if bool(valid.all()) else valid[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """H heads of scaled dot-product attention, concatenated and projected.

    The projections are stored as one (D, D) matrix each (W_Q, W_K, W_V, W_O)
    with biases, the layout Hugging Face Marian uses, so weights map one to one.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, d_k)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_k)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, T, d_k) -> (B, T, D): concatenate the heads."""
        b, h, t, dk = x.shape
        return x.transpose(1, 2).reshape(b, t, h * dk)  # (B, T, D)

    def project_query(self, x: Tensor, packed: PackedWeights | None = None) -> Tensor:
        return self.split_heads(project(x, self.q_proj, packed=packed))  # (B, H, T, d_k)

    def project_key_value(self, x: Tensor, packed: PackedWeights | None = None) -> Tensor:
        """Keys and values of x stacked, (2, B, H, S, d_k). Cross-attention computes them once per source."""
        b, s, _ = x.shape
        kv = project(x, self.k_proj, self.v_proj, packed=packed)  # (B, S, 2D)
        return kv.view(b, s, 2, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # (2, B, H, S, d_k)

    def project_qkv(self, x: Tensor, packed: PackedWeights | None = None) -> tuple[Tensor, Tensor]:
        """Self-attention: queries (B, H, T, d_k) and stacked keys/values (2, B, H, T, d_k), one matrix product."""
        b, t, _ = x.shape
        qkv = project(x, self.q_proj, self.k_proj, self.v_proj, packed=packed)  # (B, T, 3D)
        qkv = qkv.view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d_k)
        return qkv[0], qkv[1:]

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        need_weights: bool = False,
        packed: PackedWeights | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention over already projected heads.

        q: (B, H, T, d_k); k, v: (B, H, S, d_k); mask: bool (B|1, 1|H, T|1, S).
        Returns out (B, T, D) after W_O, and weights (B, H, T, S) on the capture path, else None.
        """
        p = self.dropout if self.training else 0.0
        if need_weights:
            if is_causal:
                t, s = q.size(-2), k.size(-2)
                mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
            weights = attention_probabilities(q, k, mask)  # (B, H, T, S)
            dropped = F.dropout(weights, p) if p > 0 else weights
            context = torch.matmul(dropped, v)  # (B, H, T, d_k)
        else:
            weights = None
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if is_causal else mask, dropout_p=p, is_causal=is_causal
            )  # (B, H, T, d_k)
        return project(self.merge_heads(context), self.out_proj, packed=packed), weights  # (B, T, D)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        need_weights: bool = False,
        packed: PackedWeights | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """query: (B, T, D), key_value: (B, S, D) -> (out (B, T, D), weights (B, H, T, S) | None).
        packed: inference weights to multiply with (None: nn.Linear's arithmetic)."""
        if query is key_value:
            q, kv = self.project_qkv(query, packed)
        else:
            q, kv = self.project_query(query, packed), self.project_key_value(key_value, packed)
        k, v = kv[0], kv[1]
        return self.attend(q, k, v, mask, is_causal=is_causal, need_weights=need_weights, packed=packed)
