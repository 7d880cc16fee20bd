"""Linear layers for decoding speed: fused projections, packed inference layouts, optional int8.

Incremental decoding multiplies one row (or a handful of beam rows) by every weight
matrix of the decoder at each step. For such skinny products the layout matters a lot
(the measurements are in docs/performance.md):

* one row: a GEMM on the weight stored (D_in, D_out) row-major beats nn.Linear's
  (D_out, D_in) read transposed; and MKL runs a one-row product on one thread whatever the
  thread count, so the product is split into 4 column blocks multiplied as one batched
  product (`baddbmm`), which PyTorch spreads over its threads;
* hidden layers of several rows (encoder, beams, batches) gain from the same column blocks;
* the output layer of several rows: oneDNN on a weight reordered once for it
  (`torch.ops.mkldnn`, what PyTorch's own compiler uses for frozen CPU linears).

Every private torch API the engine relies on (`_weight_int8pack_mm`, `torch.ops.mkldnn`'s reordered
linears, tensors' `_version` counters, modules' `_parameters`) is used in this file only.

`project(owner, name, x, *linears)` applies nn.Linear layers that share their input
(e.g. Q, K and V of self-attention) and returns the concatenated outputs. With
autograd on (training) it calls each layer as nn.Linear would. With autograd off
(`torch.inference_mode` / `no_grad`, i.e. decoding) it uses a packed copy: the
weights concatenated and transposed into one contiguous (D_in, ΣD_out) matrix,
cached on `owner` and rebuilt whenever a weight changes (an in-place update bumps a
tensor's version; `.to()` and reloading replace its storage). The parameters, their
names and the state dict are untouched, so checkpoints and the Marian mapping are
unaffected.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DecodingError

_PACKS = "_inference_packs"
_INT8 = "_int8_inference"


def set_int8(model: nn.Module, enabled: bool) -> None:
    """Decode with int8 weights (per output channel), like CTranslate2's int8 mode. Several rows: fbgemm's
    dynamic quantization (activations quantized on the fly). One row (greedy decoding of one sentence):
    a weight-only int8 kernel on bf16 activations for the hidden layers, which skips fbgemm's per-call
    activation quantization (costlier than a 256-wide product). Training, autograd and the fp32 path are
    untouched; switching back is instant (every pack is kept)."""
    for module in model.modules():
        module.__dict__[_INT8] = enabled


def parameter_stamps(model: nn.Module) -> list[tuple]:
    """Every parameter of `model` as it is now (its slot, the tensor, its storage and its in-place version
    counter), for `stamps_hold` to tell later whether anything derived from them is still valid."""
    return [(m._parameters, name, t, t.data_ptr(), t._version)
            for m in model.modules() for name, t in m._parameters.items() if t is not None]


def stamps_hold(stamps: list[tuple]) -> bool:
    """No parameter replaced, moved or updated in place since `parameter_stamps`."""
    for params, name, t, ptr, version in stamps:
        if params.get(name) is not t or t.data_ptr() != ptr or t._version != version:
            return False
    return True


def int8_enabled(module: nn.Module) -> bool:
    """Whether `set_int8` switched this module's products to int8."""
    return bool(module.__dict__.get(_INT8))


_ONEDNN_BATCH_HINT = 64  # rows the oneDNN weight layout is tuned for; any row count works
_onednn_ok = torch.backends.mkldnn.is_available()
_ROW_SPLITS = 4  # column blocks of a hidden-layer or one-row product
_W8_ROW = hasattr(torch, "_weight_int8pack_mm")  # weight-only int8 kernel (torch >= 2.3)


class _Pack:
    """A packed copy of some layers' parameters, valid while none of them has changed."""

    def __init__(self, linears: tuple[nn.Linear, ...], extra_bias: Tensor | None, weight: Tensor, bias: Tensor | None,
                 output_layer: bool = False) -> None:
        self.extra_bias = extra_bias
        self.output_layer = output_layer
        self.params = [(lin._parameters["weight"], lin._parameters["bias"]) for lin in linears]
        tensors = [t for pair in self.params for t in pair if t is not None]
        if extra_bias is not None:
            tensors.append(extra_bias)
        self.stamps = [(t, t.data_ptr(), t._version) for t in tensors]
        self.weight = weight  # (D_in, ΣD_out) contiguous
        self.bias = bias  # (ΣD_out,) | None
        self.onednn: Tensor | None = None  # the weight reordered for oneDNN, built on first multi-row use
        self.int8 = None  # fbgemm-packed int8 weight (per-output-channel scales), built on first int8 use
        self.split: tuple[Tensor, Tensor] | None = None  # column blocks (s, D_in, ΣD_out/s) + bias (s, 1, ΣD_out/s)
        self.w8: tuple[Tensor, Tensor] | None = None  # int8 (ΣD_out, D_in) + bf16 per-row scales, for one-row int8 products

    def multiply_int8(self, flat: Tensor) -> Tensor:
        """flat: (rows, D_in) float -> (rows, ΣD_out), int8 weights, activations quantized per call."""
        if flat.size(0) == 1 and _W8_ROW and not self.output_layer:
            # One row (greedy decoding of one sentence): weight-only int8 GEMV on bf16 activations, with no
            # per-call quantization work (fbgemm's costs more than the product of a 256-wide layer); not for
            # the output layer, whose bf16-rounded logits would reorder near-tied words.
            if self.w8 is None:
                w, scales = self._per_channel_scales()
                with torch.inference_mode(False), torch.no_grad():
                    self.w8 = ((w / scales[:, None]).round().to(torch.int8), scales.to(torch.bfloat16))
            q, scales = self.w8
            out = torch._weight_int8pack_mm(flat.to(torch.bfloat16), q, scales).float()
            return out if self.bias is None else out.add_(self.bias)
        if self.int8 is None:
            w, scales = self._per_channel_scales()
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quantized tensor constructors are marked deprecated
                qw = torch.quantize_per_channel(w, scales, torch.zeros(w.size(0), dtype=torch.long), 0, torch.qint8)
                self.int8 = torch.ops.quantized.linear_prepack(qw, self.bias)
        try:
            return torch.ops.quantized.linear_dynamic(flat.contiguous(), self.int8, True)
        except RuntimeError:
            if bool(torch.isfinite(flat).all()):
                raise
            # fbgemm cannot quantize NaN or infinite activations; float32 meets the same overflow one step later
            # as non-finite log-probabilities. Checked only on failure: the hot path pays nothing.
            raise DecodingError("the model's activations overflowed to NaN or infinity (its weights are unusable)") from None

    def _per_channel_scales(self) -> tuple[Tensor, Tensor]:
        """The weight as (ΣD_out, D_in) and its symmetric int8 scale per output channel, (ΣD_out,)."""
        with torch.inference_mode(False), torch.no_grad():
            w = self.weight.t().contiguous()
            return w, (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)

    def valid_for(self, linears: tuple[nn.Linear, ...], extra_bias: Tensor | None) -> bool:
        """Same layers holding the same parameter objects, none updated in place (version) or moved (storage)."""
        if extra_bias is not self.extra_bias or len(linears) != len(self.params):
            return False
        for lin, (w, b) in zip(linears, self.params):
            params = lin._parameters
            if params["weight"] is not w or params["bias"] is not b:
                return False
        for t, ptr, version in self.stamps:
            if t._version != version or t.data_ptr() != ptr:
                return False
        return True

    def multiply(self, flat: Tensor) -> Tensor:
        """flat: (rows, D_in) -> (rows, ΣD_out)."""
        global _onednn_ok
        rows = flat.size(0)
        if (rows == 1 or not self.output_layer) and self.weight.size(1) % _ROW_SPLITS == 0 and flat.device.type == "cpu":
            # Column blocks multiplied as one batched product, which PyTorch spreads over its threads: MKL runs a
            # one-row product on one thread whatever the thread count, and for the decoder's hidden layers this
            # also beats oneDNN at any row count (the 8000-word output layer of several rows does not: oneDNN).
            if self.split is None:
                with torch.inference_mode(False), torch.no_grad():
                    k, n = self.weight.shape
                    blocks = self.weight.view(k, _ROW_SPLITS, n // _ROW_SPLITS).permute(1, 0, 2).contiguous()  # (s, D_in, ΣD_out/s)
                    bias = self.bias if self.bias is not None else self.weight.new_zeros(n)
                    self.split = (blocks, bias.view(_ROW_SPLITS, 1, n // _ROW_SPLITS).contiguous())
            blocks, bias = self.split
            out = torch.baddbmm(bias, flat.expand(_ROW_SPLITS, rows, flat.size(1)), blocks)  # (s, rows, ΣD_out/s), blocks in order
            if rows == 1:  # the decoding hot path (19 products per step): one view instead of transpose + reshape
                return out.view(1, -1)
            return out.transpose(0, 1).reshape(rows, -1)  # (rows, ΣD_out)
        if rows > 1 and _onednn_ok and flat.dtype == torch.float32 and flat.device.type == "cpu":
            try:
                if self.onednn is None:
                    with torch.inference_mode(False), torch.no_grad():
                        self.onednn = torch.ops.mkldnn._reorder_linear_weight(self.weight.t().contiguous(), _ONEDNN_BATCH_HINT)
                return torch.ops.mkldnn._linear_pointwise(flat.contiguous(), self.onednn, self.bias, "none", [], "")
            except (RuntimeError, AttributeError, NotImplementedError):  # a build without oneDNN linear: plain GEMM
                _onednn_ok = False
        if self.bias is None:
            return torch.mm(flat, self.weight)
        return torch.addmm(self.bias, flat, self.weight)


def _packed(owner: nn.Module, name: str, linears: tuple[nn.Linear, ...], extra_bias: Tensor | None, output_layer: bool) -> _Pack:
    packs = owner.__dict__.setdefault(_PACKS, {})
    pack = packs.get(name)
    if pack is None or not pack.valid_for(linears, extra_bias):
        # Normal (not inference-mode) tensors, so the pack is usable inside and outside inference_mode.
        with torch.inference_mode(False), torch.no_grad():
            weight = torch.cat([lin.weight for lin in linears]).t().contiguous()  # (D_in, ΣD_out)
            bias = _bias(linears, extra_bias)  # a new tensor (cat), never a view of a parameter
        pack = packs[name] = _Pack(linears, extra_bias, weight, bias, output_layer)
    return pack


def _bias(linears: tuple[nn.Linear, ...], extra_bias: Tensor | None) -> Tensor | None:
    """The layers' biases concatenated (ΣD_out,), plus `extra_bias` (broadcastable to it) if given."""
    if extra_bias is None and all(lin.bias is None for lin in linears):
        return None
    bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears])
    return bias if extra_bias is None else (bias + extra_bias).reshape(-1)


def project(owner: nn.Module, name: str, x: Tensor, *linears: nn.Linear, extra_bias: Tensor | None = None,
            output_layer: bool = False) -> Tensor:
    """x: (..., D_in) -> concatenated outputs of `linears` (+ `extra_bias`, e.g. Marian's final
    logits bias, folded into the same product), (..., ΣD_out). output_layer: these are the logits
    (kept in float32 precision by every int8 kernel)."""
    if torch.is_grad_enabled():
        # Training: each layer on its own, exactly nn.Linear's arithmetic (a fused product is equal
        # only up to rounding, enough to send a seeded training run down another trajectory).
        outs = [F.linear(x, lin.weight, lin.bias) for lin in linears]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return out if extra_bias is None else out + extra_bias
    multiply = bind(owner, name, *linears, extra_bias=extra_bias, output_layer=output_layer, dtype=x.dtype)
    out = multiply(x.reshape(-1, x.size(-1)))  # (rows, ΣD_out)
    return out.view(*x.shape[:-1], out.size(-1))


def bind(owner: nn.Module, name: str, *linears: nn.Linear, extra_bias: Tensor | None = None, output_layer: bool = False,
         dtype: torch.dtype = torch.float32) -> Callable[[Tensor], Tensor]:
    """The inference product `project` would use now, as a function of 2-D input (rows, D_in) -> (rows, ΣD_out).

    Valid while the weights and the int8 setting stay as they are (e.g. for one decoding run): the
    fused decoder step binds its products once per run instead of checking the packs at every call."""
    pack = _packed(owner, name, linears, extra_bias, output_layer)
    return pack.multiply_int8 if int8_enabled(owner) and dtype == torch.float32 else pack.multiply
