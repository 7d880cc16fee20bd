"""The decoder's single-token inference step, with every weight product bound ahead of time.

Incremental decoding of one sentence spends more time between matrix products than in them when
each step goes through the modules: a step of the default model issued about 150 PyTorch calls
(100 of them views and reshapes) plus a weight-pack check per product. `FusedDecoderStep` runs the
same arithmetic on 2-D (rows, D) activations with the packed products bound once (`fused_step`, called
by `Transformer.start_cache`; kept across runs while the weights stay as they are): about 106 calls.
Same kernels in the same order, so its logits and attention weights equal the modular path's (tests
assert it, post- and pre-norm, fp32 and int8, fast and capture paths); every one-token step runs it.

Shapes: N rows (sentences × beams), D d_model, H heads, d_k = D / H, S source length, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention_probabilities
from .cache import KVCache
from .linear import bind, int8_enabled, parameter_stamps, stamps_hold


class _Norm:
    """A LayerNorm's parameters, for F.layer_norm without the module call."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        self.shape, self.weight, self.bias, self.eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class _Layer:
    def __init__(self, layer: nn.Module, dtype: torch.dtype) -> None:
        sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
        self.qkv = bind(sa, "qkv", sa.q_proj, sa.k_proj, sa.v_proj, dtype=dtype)  # (N, D) -> (N, 3D)
        self.self_out = bind(sa, "out", sa.out_proj, dtype=dtype)
        self.cross_q = bind(ca, "q", ca.q_proj, dtype=dtype)
        self.cross_out = bind(ca, "out", ca.out_proj, dtype=dtype)
        self.fc1 = bind(ffn, "fc1", ffn.fc1, dtype=dtype)
        self.fc2 = bind(ffn, "fc2", ffn.fc2, dtype=dtype)
        self.act: Callable[[Tensor], Tensor] = ffn.act
        self.norms = (_Norm(layer.self_attn_res.norm), _Norm(layer.cross_attn_res.norm), _Norm(layer.ffn_res.norm))


_STEP = "_fused_decoder_step"


def fused_step(model: nn.Module) -> "FusedDecoderStep":
    """The model's fused step for a new decoding run: the previous run's, unless a parameter, the dtype or
    the int8 setting changed since it was bound (checking the binding is about ten times cheaper than binding)."""
    step = model.__dict__.get(_STEP)
    if step is None or not step.current(model):
        step = model.__dict__[_STEP] = FusedDecoderStep(model)
    return step


class FusedDecoderStep:
    """`step(tokens, cache, need_weights)`: logits (N, 1, V) for one new token per row (and the attention
    weights on the capture path), extending the cache."""

    def __init__(self, model: nn.Module) -> None:
        c = model.config
        dtype = model.tgt_embed.weight.dtype
        # every parameter as bound now: the same object, storage and version means the binding still holds
        self.int8 = int8_enabled(model)
        self.stamps = parameter_stamps(model)
        self.d_model, self.n_heads, self.d_head = c.d_model, c.n_heads, c.d_model // c.n_heads
        self.pre = c.norm_placement == "pre"
        self.max_positions = c.max_positions
        self.embedding, self.positions, self.scale = model.tgt_embed.weight, model.positions, model.scale
        self.layers = [_Layer(layer, dtype) for layer in model.decoder_layers]
        self.final_norm = _Norm(model.decoder_norm) if self.pre else None
        self.logits = bind(model, "logits", model.output_proj, extra_bias=model.logits_bias, output_layer=True, dtype=dtype)

    def current(self, model: nn.Module) -> bool:
        """Still valid for `model`: no parameter replaced, moved or updated in place, same int8 setting."""
        return int8_enabled(model) == self.int8 and stamps_hold(self.stamps)

    def _sublayer(self, x: Tensor, norm: _Norm, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """Residual + LayerNorm: post x = LN(x + f(x)), pre x = x + f(LN(x))."""
        if self.pre:
            return sublayer(norm(x)).add_(x)
        return norm(sublayer(x).add_(x))

    def step(self, tokens: Tensor, cache: KVCache, need_weights: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """tokens: (N,) the next decoder input of every row.

        Returns logits (N, 1, V) and, with need_weights, the self-attention (N, L, H, 1, T_past + 1) and
        cross-attention (N, L, H, 1, S) of the new position (computed explicitly, as the capture path does)."""
        pos = cache.length
        if pos + 1 > self.max_positions:
            raise ValueError(f"sequence of {pos + 1} positions exceeds max_positions={self.max_positions}")
        n, d, h, dk = tokens.size(0), self.d_model, self.n_heads, self.d_head
        self_ws: list[Tensor] = []
        cross_ws: list[Tensor] = []

        def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, keep: list[Tensor]) -> Tensor:
            """q (N, H, 1, d_k), k/v (N, H, S, d_k) -> context (N, D), heads concatenated."""
            if need_weights:
                weights = attention_probabilities(q, k, mask)  # (N, H, 1, S)
                keep.append(weights)
                ctx = torch.matmul(weights, v)
            else:
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, 1, d_k)
            return ctx.reshape(n, d)

        x = F.embedding(tokens, self.embedding).mul_(self.scale).add_(self.positions[pos])  # (N, D)
        for i, layer in enumerate(self.layers):
            cross_k, cross_v = cache.cross(i)  # (N, H, S, d_k) each

            def self_attention(hx: Tensor, layer=layer, i=i) -> Tensor:
                qkv = layer.qkv(hx).view(n, 3, h, 1, dk)  # (N, 3, H, 1, d_k): q, k, v of the new position
                k, v = cache.append(i, qkv[:, 1:].transpose(0, 1))  # new (2, N, H, 1, d_k) stored; all so far (N, H, pos+1, d_k)
                return layer.self_out(attend(qkv[:, 0], k, v, None, self_ws))

            def cross_attention(hx: Tensor, layer=layer, cross_k=cross_k, cross_v=cross_v) -> Tensor:
                q = layer.cross_q(hx).view(n, h, 1, dk)  # (N, H, 1, d_k)
                return layer.cross_out(attend(q, cross_k, cross_v, cache.cross_mask, cross_ws))

            x = self._sublayer(x, layer.norms[0], self_attention)
            x = self._sublayer(x, layer.norms[1], cross_attention)
            x = self._sublayer(x, layer.norms[2], lambda hx, layer=layer: layer.fc2(layer.act(layer.fc1(hx))))
        cache.advance(1)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.logits(x).unsqueeze(1)  # (N, 1, V)
        if not need_weights:
            return logits, None, None
        return logits, torch.stack(self_ws, 1), torch.stack(cross_ws, 1)  # (N, L, H, 1, T) and (N, L, H, 1, S)
