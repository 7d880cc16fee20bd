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
linears and its bfloat16 probe, the `_op` of fbgemm's `linear_dynamic`, tensors' `_version` counters, modules' `_parameters`) is
used in this file only.

`project(x, *linears, packed=...)` applies nn.Linear layers that share their input (e.g. Q, K and V
of self-attention) and returns the concatenated outputs. Without `packed` (training, autograd, the
modular oracle), or with autograd on, it calls each layer as nn.Linear would. With a `PackedWeights`
(inference, owned by `engine.InferenceEngine`) and autograd off it uses a packed copy: the weights
concatenated and transposed into one contiguous (D_in, ΣD_out) matrix, kept in the `PackedWeights`
object (never on the modules) and rebuilt whenever a weight changes (an in-place update bumps a
tensor's version; `.to()` and reloading replace its storage). The parameters, their names and the
state dict are untouched, so checkpoints and the Marian mapping are unaffected.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DecodingError

# A bound product: (flat (rows, D_in), step_rows) -> (rows, ΣD_out); see `_Pack.multiply`.
Product = Callable[..., Tensor]


def bf16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs on hardware support here (CUDA, or a CPU with AVX-512 BF16 / AMX); without
    it oneDNN emulates bfloat16 and a training step is several times slower than in float32."""
    if device.type != "cpu":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def parameter_stamps(*modules: nn.Module) -> list[tuple]:
    """Every parameter of `modules` and their submodules as it is now (its slot, the tensor, its storage and its
    in-place version counter), for `stamps_hold` to tell later whether anything derived from them is still valid."""
    return [(m._parameters, name, t, t.data_ptr(), t._version)
            for module in modules for m in module.modules() for name, t in m._parameters.items() if t is not None]


def stamps_hold(stamps: list[tuple]) -> bool:
    """No parameter replaced, moved or updated in place since `parameter_stamps`."""
    for params, name, t, ptr, version in stamps:
        if params.get(name) is not t or t.data_ptr() != ptr or t._version != version:
            return False
    return True


class PackedWeights:
    """Packed inference copies of one model's linear layers, at one precision.

    int8: decode with int8 weights (per output channel), like CTranslate2's int8 mode. Several rows:
    fbgemm's dynamic quantization (activations quantized on the fly). One row (greedy decoding of one
    sentence): a weight-only int8 kernel on bf16 activations for the hidden layers, which skips fbgemm's
    per-call activation quantization (costlier than a 256-wide product). Training, autograd and the
    modules are untouched: the packs live here, keyed by the layers they pack."""

    def __init__(self, int8: bool = False) -> None:
        self.int8 = int8
        self._packs: dict[tuple, _Pack] = {}  # (linears, output_layer) -> their pack

    def product(self, *linears: nn.Linear, extra_bias: Tensor | None = None, output_layer: bool = False,
                dtype: torch.dtype = torch.float32) -> Product:
        """The inference product of `linears` (+ `extra_bias`) on the weights as they are now, as a function of
        2-D input; see `_Pack.multiply`. Valid while the weights stay as they are (e.g. for one decoding run):
        the fused encoder and decoder step bind their products once instead of checking the packs at every call."""
        pack = self._pack(linears, extra_bias, output_layer)
        return pack.multiply_int8 if self.int8 and dtype == torch.float32 else pack.multiply

    def native_spec(self, *linears: nn.Linear, extra_bias: Tensor | None = None, output_layer: bool = False) -> tuple:
        """What the C++ decoder step (`native.py`) needs to compute `product(*linears, ...)` with the kernels the
        Python product would choose, for one row and for several (float32 weights on the CPU)."""
        return self._pack(linears, extra_bias, output_layer).native_spec(self.int8)

    def _pack(self, linears: tuple[nn.Linear, ...], extra_bias: Tensor | None, output_layer: bool) -> "_Pack":
        """The pack of `linears` for the weights as they are now (built again if any of them changed)."""
        key = (linears, output_layer)
        pack = self._packs.get(key)
        if pack is None or not pack.valid_for(linears, extra_bias):
            pack = self._packs[key] = _Pack.build(linears, extra_bias, output_layer)
        return pack

    def packs(self) -> list["_Pack"]:
        return list(self._packs.values())


_ONEDNN_BATCH_HINT = 64  # rows the oneDNN weight layout is tuned for; any row count works
_onednn_ok = torch.backends.mkldnn.is_available()
_ROW_SPLITS = 4  # column blocks of a hidden-layer or one-row product
_W8_ROW = hasattr(torch, "_weight_int8pack_mm")  # weight-only int8 kernel (torch >= 2.3)
# Its CPU kernel reads the input dimension in blocks of 16 and returns garbage (or crashes) for any other width.
_W8_BLOCK = 16
# fbgemm's dynamic int8 product as the bare C++ operator. Its weight argument is a TorchScript class, and
# for such operators `torch.ops.quantized.linear_dynamic(...)` first walks its arguments in Python looking
# for fake script objects (torch.export's tracing stand-ins, which decoding never passes): a few µs per
# call, paid by every encoder product, every beam step's products and every int8 output layer. Same
# kernel and arguments, so the same results; the wrapper is the fallback should `_op` ever go away.
_LINEAR_DYNAMIC: Callable[..., Tensor] = getattr(torch.ops.quantized.linear_dynamic, "_op", torch.ops.quantized.linear_dynamic)


class _Pack:
    """A packed copy of some layers' parameters, valid while none of them has changed.

    `multiply` and `multiply_int8` take `flat` (rows, D_in) and optionally `step_rows`: the rows one decoding
    step has (N, sentences × beams) when `flat` holds several positions of each row, ordered (N, T) row-major
    (a forced prefix or a draft fed as one block). The kernel is then chosen as for the one-token steps of N
    rows, and a kernel whose result depends on the other rows of the call (fbgemm quantizes activations with
    one scale per call) runs once per position: every position rounds as its one-token step does."""

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
        self.w8_row = _W8_ROW and not output_layer and weight.size(0) % _W8_BLOCK == 0

    @classmethod
    def build(cls, linears: tuple[nn.Linear, ...], extra_bias: Tensor | None, output_layer: bool) -> "_Pack":
        # Normal (not inference-mode) tensors, so the pack is usable inside and outside inference_mode.
        with torch.inference_mode(False), torch.no_grad():
            weight = torch.cat([lin.weight for lin in linears]).t().contiguous()  # (D_in, ΣD_out)
            bias = _bias(linears, extra_bias)  # a new tensor (cat), never a view of a parameter
        return cls(linears, extra_bias, weight, bias, output_layer)

    def multiply_int8(self, flat: Tensor, step_rows: int | None = None) -> Tensor:
        """flat: (rows, D_in) float -> (rows, ΣD_out), int8 weights."""
        rows = flat.size(0)
        step = step_rows or rows
        if step == 1 and self.w8_row:
            # One row (greedy decoding of one sentence): weight-only int8 GEMV on bf16 activations, with no
            # per-call quantization work (fbgemm's costs more than the product of a 256-wide layer); not for
            # the output layer, whose bf16-rounded logits would reorder near-tied words. Its rows are
            # independent, so a block of one sentence's positions runs in one call.
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
            if rows == step:
                return _LINEAR_DYNAMIC(flat.contiguous(), self.int8, True)
            # activations are quantized with one scale per call: one call per position, as its step would make
            per_position = flat.view(step, rows // step, flat.size(1)).unbind(1)  # T tensors (N, D_in)
            outs = [_LINEAR_DYNAMIC(x.contiguous(), self.int8, True) for x in per_position]
            return torch.stack(outs, 1).view(rows, -1)  # (N, T, ΣD_out) -> (rows, ΣD_out)
        except RuntimeError:
            if bool(torch.isfinite(flat).all()):
                raise
            # fbgemm cannot quantize NaN or infinite activations; float32 meets the same overflow one step later
            # as non-finite log-probabilities. Checked only on failure: the hot path pays nothing.
            raise DecodingError("the model's activations overflowed to NaN or infinity (its weights are unusable)") from None

    def native_spec(self, int8: bool) -> tuple:
        """(kernel for one row, kernel for several rows, weight, bias, int8 weight, bf16 scales, column blocks,
        their bias, fbgemm's packed weight, oneDNN's reordered weight), None where unused: the kernels
        `multiply_int8` / `multiply` choose for a one-token step of 1 and of several rows (see
        csrc/decoder_step.cpp's `Kernel`), with the copies they use built now."""
        kernels = {"w8": 0, "split": 1, "fbgemm": 2, "onednn": 3, "addmm": 4}
        zero = torch.zeros(1)
        if int8:
            one = "w8" if self.w8_row else "fbgemm"
            self.multiply_int8(zero.expand(1, self.weight.size(0)))  # builds the copies one row uses
            if self.int8 is None:
                self.multiply_int8(zero.expand(2, self.weight.size(0)))  # and those of several rows
            w8 = self.w8 or (None, None)
            return (kernels[one], kernels["fbgemm"], None, self.bias, *w8, None, None, self.int8, None)
        splits = self.weight.size(1) % _ROW_SPLITS == 0
        one = "split" if splits else "addmm"
        many = "split" if splits and not self.output_layer else "onednn" if _onednn_ok else "addmm"
        for rows in (1, 2):
            self.multiply(zero.expand(rows, self.weight.size(0)))  # builds the copies each uses
        if many == "onednn" and self.onednn is None:  # oneDNN failed just now: `multiply` fell back to a GEMM
            many = "addmm"
        split = self.split or (None, None)
        return (kernels[one], kernels[many], self.weight, self.bias, None, None, *split, None, self.onednn)

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

    def multiply(self, flat: Tensor, step_rows: int | None = None) -> Tensor:
        """flat: (rows, D_in) -> (rows, ΣD_out)."""
        global _onednn_ok
        rows = flat.size(0)
        one_row = (step_rows or rows) == 1
        if (one_row or not self.output_layer) and self.weight.size(1) % _ROW_SPLITS == 0 and flat.device.type == "cpu":
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


def _bias(linears: tuple[nn.Linear, ...], extra_bias: Tensor | None) -> Tensor | None:
    """The layers' biases concatenated (ΣD_out,), plus `extra_bias` (broadcastable to it) if given."""
    if extra_bias is None and all(lin.bias is None for lin in linears):
        return None
    bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears])
    return bias if extra_bias is None else (bias + extra_bias).reshape(-1)


def project(x: Tensor, *linears: nn.Linear, packed: PackedWeights | None = None, extra_bias: Tensor | None = None,
            output_layer: bool = False) -> Tensor:
    """x: (..., D_in) -> concatenated outputs of `linears` (+ `extra_bias`, e.g. Marian's final
    logits bias, folded into the same product), (..., ΣD_out). output_layer: these are the logits
    (kept in float32 precision by every int8 kernel). packed: the inference copies to multiply with
    (ignored while autograd is on)."""
    if packed is None or torch.is_grad_enabled():
        # Training and the oracle: each layer on its own, exactly nn.Linear's arithmetic (a fused product is
        # equal only up to rounding, enough to send a seeded training run down another trajectory).
        outs = [F.linear(x, lin.weight, lin.bias) for lin in linears]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return out if extra_bias is None else out + extra_bias
    multiply = packed.product(*linears, extra_bias=extra_bias, output_layer=output_layer, dtype=x.dtype)
    out = multiply(x.reshape(-1, x.size(-1)))  # (rows, ΣD_out)
    return out.view(*x.shape[:-1], out.size(-1))
