"""The inference passes, with every weight product bound ahead of time: the decoder's step and the encoder.

Incremental decoding of one sentence spends more time between matrix products than in them when
each step goes through the modules: a step of the default model issued about 150 PyTorch calls
(100 of them views and reshapes) plus a weight-pack check per product. `FusedDecoderStep` runs the
same arithmetic on 2-D (rows, D) activations with the packed products bound once (the inference
engine binds it and keeps it while the weights stay as they are): about 106 calls. Same kernels in
the same order, so a one-token step's logits and attention weights equal the modular path's (tests
assert it, post- and pre-norm, fp32 and int8, fast and capture paths).

A block of several new tokens per row (a forced prefix, a draft to verify) runs the same code: every
product chooses its kernel as for the one-token steps of the same rows (`_Pack.multiply`'s
step_rows), and attention runs one position at a time over the keys up to it, as those steps do.
So each position of a block rounds as its one-token step: bit for bit in int8 (the one-row kernels
treat rows independently), up to the order of additions of the column-block products in float32.

`FusedEncoder` is the encoder pass on the same terms. It runs once per sentence, on a handful of rows,
so the module calls (`__call__`, attribute lookups, a pack check per product) weigh on it as on a
step; it computes the same kernels on the same inputs as `Transformer.encode` with the same packed
weights, so its memory and attention weights equal the modular path's (tested like the step).
`FusedDecoderStep.start_cache` computes the cross-attention keys and values with a product bound the
same way.

Both hand their hot path to the compiled versions in csrc/decoder_step.cpp once native.py has them
loaded (the step's one-token steps; the encoder's pass without attention weights): the same ATen
calls in the same order from C++, so the same bits, without the interpreter between the calls.

Shapes: N rows (sentences × beams), T new tokens per row, D d_model, H heads, d_k = D / H,
S source length, V vocab, B sentences, L layers. Decoder activations are (N·T, D), rows ordered (N, T);
encoder activations (B·S, D), rows ordered (B, S).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .attention import attention_probabilities, key_padding_mask
from .cache import KVCache
from .linear import PackedWeights, Product


class _Norm:
    """A LayerNorm's parameters, for F.layer_norm without the module call."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        self.shape, self.weight, self.bias, self.eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


_NATIVE_ACTIVATIONS = ("relu", "gelu", "gelu_new", "swish", "silu")  # those csrc/decoder_step.cpp computes


def _norm_spec(norm: nn.LayerNorm) -> tuple:
    """A LayerNorm's arguments for the compiled step: (normalized_shape, weight, bias, eps)."""
    return (list(norm.normalized_shape), norm.weight, norm.bias, float(norm.eps))


class _Residuals:
    """Residual + LayerNorm around a sublayer, post- or pre-norm, as `layers._Residual` without dropout."""

    pre: bool

    def _sublayer(self, x: Tensor, norm: _Norm, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """Residual + LayerNorm: post x = LN(x + f(x)), pre x = x + f(LN(x))."""
        if self.pre:
            return sublayer(norm(x)).add_(x)
        return norm(sublayer(x).add_(x))


class _EncoderLayer:
    def __init__(self, layer: nn.Module, packed: PackedWeights, dtype: torch.dtype) -> None:
        sa, ffn = layer.self_attn, layer.ffn
        self.qkv: Product = packed.product(sa.q_proj, sa.k_proj, sa.v_proj, dtype=dtype)  # (B·S, D) -> (B·S, 3D)
        self.out: Product = packed.product(sa.out_proj, dtype=dtype)
        self.fc1: Product = packed.product(ffn.fc1, dtype=dtype)
        self.fc2: Product = packed.product(ffn.fc2, dtype=dtype)
        self.act: Callable[[Tensor], Tensor] = ffn.act
        self.norms = (_Norm(layer.self_attn_res.norm), _Norm(layer.ffn_res.norm))


class FusedEncoder(_Residuals):
    """`encode(src, need_weights)`: what `Transformer.encode(src, need_weights, packed)` returns, as a tuple.
    Bound to the weights and precision of one `PackedWeights`; `engine.InferenceEngine` rebinds it when a
    parameter of `reads(model)` changes."""

    @staticmethod
    def reads(model: nn.Module) -> list[nn.Module]:
        """The modules whose parameters a binding reads: the engine watches these for changes."""
        return [model.src_embed, model.encoder_layers, model.encoder_norm]

    def __init__(self, model: nn.Module, packed: PackedWeights) -> None:
        c = model.config
        dtype = model.src_embed.weight.dtype
        self.d_model, self.n_heads, self.d_head = c.d_model, c.n_heads, c.d_model // c.n_heads
        self.pre = c.norm_placement == "pre"
        self.pad_id, self.max_positions = c.pad_id, c.max_positions
        self.embedding, self.positions, self.scale = model.src_embed.weight, model.positions, model.scale
        self.layers = [_EncoderLayer(layer, packed, dtype) for layer in model.encoder_layers]
        self.final_norm = _Norm(model.encoder_norm) if self.pre else None
        self._model, self._packed = model, packed
        # the compiled pass (native.py) for the fast path, bound once the extension is loaded; None: Python
        self.native = None
        self._native_possible = (native.enabled() and dtype == torch.float32 and self.embedding.device.type == "cpu"
                                 and c.activation in _NATIVE_ACTIVATIONS)

    def _bind_native(self) -> None:
        """Run the fast path in the compiled pass once the extension is loaded (checked once per encode until then)."""
        ext = native.module()
        if ext is None or not hasattr(ext, "Encoder"):
            return
        self._native_possible = False  # bound now, or never for these weights
        model, packed = self._model, self._packed
        try:
            enc = ext.Encoder(self.d_model, self.n_heads, self.pre, ext.ACTIVATIONS[model.config.activation], self.embedding,
                              self.positions, float(self.scale), self.pad_id)
            for layer in model.encoder_layers:
                sa, ffn = layer.self_attn, layer.ffn
                enc.add_layer([packed.native_spec(*linears) for linears in
                               ((sa.q_proj, sa.k_proj, sa.v_proj), (sa.out_proj,), (ffn.fc1,), (ffn.fc2,))],
                              [_norm_spec(res.norm) for res in (layer.self_attn_res, layer.ffn_res)])
            enc.set_final_norm(_norm_spec(model.encoder_norm) if self.pre else None)
        except Exception as e:  # noqa: BLE001 - the Python pass computes the same; said once
            native.report_failure(f"the compiled encoder could not bind this model ({type(e).__name__}: {e})")
        else:
            self.native = enc

    def encode(self, src: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """src: (B, S) token ids, padded with pad_id. Returns memory (B, S, D), the source mask (B, S) (True at
        real tokens) and, with need_weights, every layer's self-attention (B, L, H, S, S)."""
        b, s = src.shape
        if s > self.max_positions:
            raise ValueError(f"sequence of {s} positions exceeds max_positions={self.max_positions}")
        if not need_weights:
            if self._native_possible and self.native is None:
                self._bind_native()
            if self.native is not None:
                try:
                    memory, source_mask = self.native.encode(src)
                    return memory, source_mask, None
                except RuntimeError:
                    # e.g. activations overflowed (fbgemm refuses NaN): the Python pass below redoes it and reports
                    # it as it would have; these weights stay on the Python pass
                    self.native = None
        d, h, dk, rows = self.d_model, self.n_heads, self.d_head, b * s
        source_mask = src.ne(self.pad_id)  # (B, S)
        mask = key_padding_mask(source_mask)  # (B, 1, 1, S) | None
        weights: list[Tensor] = []

        def self_attention(hx: Tensor, layer: _EncoderLayer) -> Tensor:
            qkv = layer.qkv(hx).view(b, s, 3, h, dk).permute(2, 0, 3, 1, 4)  # (3, B, H, S, d_k)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if need_weights:
                w = attention_probabilities(q, k, mask)  # (B, H, S, S)
                weights.append(w)
                ctx = torch.matmul(w, v)
            else:
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, d_k)
            return layer.out(ctx.transpose(1, 2).reshape(rows, d))  # heads concatenated, (B·S, D)

        x = F.embedding(src, self.embedding).mul_(self.scale).add_(self.positions[:s]).view(rows, d)  # (B·S, D)
        for layer in self.layers:
            x = self._sublayer(x, layer.norms[0], lambda hx, layer=layer: self_attention(hx, layer))
            x = self._sublayer(x, layer.norms[1], lambda hx, layer=layer: layer.fc2(layer.act(layer.fc1(hx))))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x.view(b, s, d), source_mask, torch.stack(weights, 1) if need_weights else None  # (B, L, H, S, S)


class _Layer:
    def __init__(self, layer: nn.Module, packed: PackedWeights, dtype: torch.dtype) -> None:
        sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
        self.qkv: Product = packed.product(sa.q_proj, sa.k_proj, sa.v_proj, dtype=dtype)  # (N·T, D) -> (N·T, 3D)
        self.self_out: Product = packed.product(sa.out_proj, dtype=dtype)
        self.cross_q: Product = packed.product(ca.q_proj, dtype=dtype)
        self.cross_out: Product = packed.product(ca.out_proj, dtype=dtype)
        self.fc1: Product = packed.product(ffn.fc1, dtype=dtype)
        self.fc2: Product = packed.product(ffn.fc2, dtype=dtype)
        self.act: Callable[[Tensor], Tensor] = ffn.act
        self.norms = (_Norm(layer.self_attn_res.norm), _Norm(layer.cross_attn_res.norm), _Norm(layer.ffn_res.norm))


class FusedDecoderStep(_Residuals):
    """`step(tokens, cache, need_weights)`: logits (N, T, V) for T new tokens per row (and the attention
    weights on the capture path), extending the cache; `start_cache` starts that cache from the encoder's
    output. Bound to the weights and precision of one `PackedWeights`; `engine.InferenceEngine` rebinds it
    when a parameter of `reads(model)` changes."""

    @staticmethod
    def reads(model: nn.Module) -> list[nn.Module]:
        """The modules whose parameters a binding reads: the engine watches these for changes."""
        return [model.tgt_embed, model.decoder_layers, model.decoder_norm, model.output_proj]

    def __init__(self, model: nn.Module, packed: PackedWeights) -> None:
        c = model.config
        dtype = model.tgt_embed.weight.dtype
        self.d_model, self.n_heads, self.d_head = c.d_model, c.n_heads, c.d_model // c.n_heads
        self.pre = c.norm_placement == "pre"
        self.max_positions = c.max_positions
        self.embedding, self.positions, self.scale = model.tgt_embed.weight, model.positions, model.scale
        self.layers = [_Layer(layer, packed, dtype) for layer in model.decoder_layers]
        self.final_norm = _Norm(model.decoder_norm) if self.pre else None
        self.logits: Product = packed.product(model.output_proj, extra_bias=model.logits_bias, output_layer=True, dtype=dtype)
        cross = [lin for layer in model.decoder_layers for lin in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]
        self.cross_kv: Product = packed.product(*cross, dtype=dtype)  # (N·S, D) -> (N·S, L·2·D), every layer's in one product
        self._model, self._packed = model, packed
        # the compiled one-token step (native.py), bound once the extension is loaded; None: the Python step
        self.native = None
        self._native_possible = (native.enabled() and dtype == torch.float32 and self.embedding.device.type == "cpu"
                                 and c.activation in _NATIVE_ACTIVATIONS)

    def start_cache(self, memory: Tensor, source_mask: Tensor, capacity: int) -> KVCache:
        """memory: (N, S, D), source_mask: (N, S) -> what `Transformer.start_cache` returns: a cache with every
        layer's cross-attention keys and values and room for `capacity` target positions."""
        if self._native_possible and self.native is None:
            self._bind_native()
        n, s, d = memory.shape
        kv = self.cross_kv(memory.reshape(n * s, d)).view(n, s, len(self.layers), 2, self.n_heads, self.d_head)
        return KVCache.create(kv.permute(2, 3, 0, 4, 1, 5).contiguous(), source_mask, capacity)  # (L, 2, N, H, S, d_k)

    def _bind_native(self) -> None:
        """Hand one-token steps to the compiled step once the extension is loaded (checked once per run)."""
        ext = native.module()
        if ext is None:
            return
        self._native_possible = False  # bound now, or never for these weights
        try:
            self.native = self._native_step(ext)
        except Exception as e:  # noqa: BLE001 - the Python step computes the same; said once
            native.report_failure(f"the compiled decoder step could not bind this model ({type(e).__name__}: {e})")

    def _native_step(self, ext):
        model, packed = self._model, self._packed
        step = ext.Step(self.d_model, self.n_heads, self.pre, ext.ACTIVATIONS[model.config.activation], self.embedding,
                        self.positions, float(self.scale))
        for layer in model.decoder_layers:
            sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
            products = [packed.native_spec(*linears) for linears in (
                (sa.q_proj, sa.k_proj, sa.v_proj), (sa.out_proj,), (ca.q_proj,), (ca.out_proj,), (ffn.fc1,), (ffn.fc2,))]
            norms = [_norm_spec(res.norm) for res in (layer.self_attn_res, layer.cross_attn_res, layer.ffn_res)]
            step.add_layer(products, norms)
        step.set_output(packed.native_spec(model.output_proj, extra_bias=model.logits_bias, output_layer=True),
                        _norm_spec(model.decoder_norm) if self.pre else None)
        return step

    def step(self, tokens: Tensor, cache: KVCache, need_weights: bool = False,
             logits: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """tokens: (N, T) the next decoder inputs of every row (T = 1 at every step of a search).

        Returns logits (N, T, V) and, with need_weights, the self-attention (N, L, H, T, T_past + T) and
        cross-attention (N, L, H, T, S) of the new positions (computed explicitly, as the capture path does).
        logits=False: the states the output layer reads, (N, T, D), in the logits' place (`output_layer`
        computes one position's logits as its one-token step does)."""
        pos = cache.length
        n, t = tokens.shape
        if pos + t > self.max_positions:
            raise ValueError(f"sequence of {pos + t} positions exceeds max_positions={self.max_positions}")
        if t == 1 and self.native is not None and logits:
            if pos + 1 > cache.capacity:
                raise ValueError(f"KV cache capacity {cache.capacity} exceeded")
            try:
                out = self.native.step(tokens, cache.self_kv, pos, cache.cross_kv, cache.cross_mask, need_weights)
            except RuntimeError:
                # e.g. activations overflowed (fbgemm refuses NaN): the Python step below redoes this step over the
                # same cache positions and reports it as it would have; these weights stay on the Python step
                self.native = None
            else:
                cache.advance(1)
                return (out[0], out[1], out[2]) if need_weights else (out[0], None, None)
        d, h, dk, rows = self.d_model, self.n_heads, self.d_head, n * t
        self_ws: list[Tensor] = []
        cross_ws: list[Tensor] = []

        def attend_one(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
            """One query per row: q (N, H, 1, d_k), k/v (N, H, S, d_k) -> context (N, H, 1, d_k), weights (N, H, 1, S)."""
            if need_weights:
                weights = attention_probabilities(q, k, mask)
                return torch.matmul(weights, v), weights
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None

        def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, keep: list[Tensor], causal: bool) -> Tensor:
            """q (N, H, T, d_k), k/v (N, H, S, d_k) -> context (N·T, D), heads concatenated. causal: self-attention,
            position j of a block sees the keys up to itself. A block attends one position at a time, each query
            over the keys its one-token step sees, so that it rounds exactly as that step does (a T-query kernel
            adds up in another order)."""
            if t == 1:  # the hot path: one call, the context a view
                ctx, weights = attend_one(q, k, v, mask)
                if weights is not None:
                    keep.append(weights)
                return ctx.reshape(n, d)
            ctxs, ws = [], []
            for j in range(t):
                end = pos + j + 1 if causal else k.size(2)
                ctx, weights = attend_one(q[:, :, j : j + 1], k[:, :, :end], v[:, :, :end], mask)
                ctxs.append(ctx)
                if weights is not None:
                    ws.append(F.pad(weights, (0, k.size(2) - end)))  # later positions of the block: exactly 0
            if ws:
                keep.append(torch.cat(ws, 2))  # (N, H, T, S)
            return torch.cat(ctxs, 2).transpose(1, 2).reshape(rows, d)  # (N, H, T, d_k) -> (N, T, H, d_k) -> (N·T, D)

        x = F.embedding(tokens, self.embedding).mul_(self.scale).add_(self.positions[pos : pos + t]).view(rows, d)  # (N·T, D)
        for i, layer in enumerate(self.layers):
            cross_k, cross_v = cache.cross(i)  # (N, H, S, d_k) each

            def self_attention(hx: Tensor, layer=layer, i=i) -> Tensor:
                qkv = layer.qkv(hx, n).view(n, t, 3, h, dk).permute(2, 0, 3, 1, 4)  # (3, N, H, T, d_k): q, k, v of the new positions
                k, v = cache.append(i, qkv[1:])  # new (2, N, H, T, d_k) stored; all so far (N, H, pos + T, d_k)
                return layer.self_out(attend(qkv[0], k, v, None, self_ws, causal=True), n)

            def cross_attention(hx: Tensor, layer=layer, cross_k=cross_k, cross_v=cross_v) -> Tensor:
                q = layer.cross_q(hx, n).view(n, t, h, dk).transpose(1, 2)  # (N, H, T, d_k)
                return layer.cross_out(attend(q, cross_k, cross_v, cache.cross_mask, cross_ws, causal=False), n)

            x = self._sublayer(x, layer.norms[0], self_attention)
            x = self._sublayer(x, layer.norms[1], cross_attention)
            x = self._sublayer(x, layer.norms[2], lambda hx, layer=layer: layer.fc2(layer.act(layer.fc1(hx, n)), n))
        cache.advance(t)
        if self.final_norm is not None:
            x = self.final_norm(x)
        out = self.logits(x, n).view(n, t, -1) if logits else x.view(n, t, d)  # (N, T, V) or (N, T, D)
        if not need_weights:
            return out, None, None
        return out, torch.stack(self_ws, 1), torch.stack(cross_ws, 1)  # (N, L, H, T, T_past + T) and (N, L, H, T, S)

    def output_layer(self, hidden: Tensor) -> Tensor:
        """hidden: (N, D) one position of every row, as `step(logits=False)` returned it -> logits (N, V), the
        product a one-token step of these N rows makes."""
        return self.logits(hidden, hidden.size(0))
