"""The inference engine: one model's weights prepared for decoding, at one precision.

The translator owns an `InferenceEngine` and hands it to the search. It holds everything decoding
derives from the weights, so that nothing is stored on the model's modules and the KV cache is only
state:

* `packed`: the packed (and, for int8, quantized) copies of the linear layers (`linear.PackedWeights`),
  each rebuilt when its layers' parameters change;
* the fused encoder (`fused.FusedEncoder`) and decoder step (`fused.FusedDecoderStep`) bound to them,
  each rebound when the parameter stamps of the modules it reads say a weight was replaced, moved or
  updated in place since it was bound (an optimizer step, a reload, a replaced parameter): the encoder's
  checked at every `encode`, the step's at every `start_cache` (once per run each).

It offers what the model offers the search, `config`, `encode`, `start_cache` and `decode_step`, so
`search()` takes either: the engine (packed products and the fused passes: how users' text is decoded)
or the bare `Transformer` (every product through the modules with nn.Linear's arithmetic: the oracle
the tests hold the engine to). With autograd on or the model in training mode the engine runs the
modules as the model would.

Shapes: as in model.py.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .cache import KVCache
from .config import ModelConfig
from .fused import FusedDecoderStep, FusedEncoder
from .linear import PackedWeights, parameter_stamps, stamps_hold
from .model import EncoderOutput, StepOutput, Transformer

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")


class InferenceEngine:
    def __init__(self, model: Transformer, precision: Precision = "fp32") -> None:
        """precision: "fp32", or "int8" for int8 weights (per output channel; see `linear.PackedWeights`)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model
        self.precision: Precision = precision
        self.packed = PackedWeights(int8=precision == "int8")
        self._step: FusedDecoderStep | None = None
        self._stamps: list[tuple] = []  # the parameters `_step` was bound to
        self._encoder: FusedEncoder | None = None
        self._encoder_stamps: list[tuple] = []  # the parameters `_encoder` was bound to

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def fused_step(self) -> FusedDecoderStep:
        """The fused step bound to the weights as they are now: the one bound before, unless a parameter changed
        since (checking the stamps is about ten times cheaper than binding)."""
        if self._step is None or not stamps_hold(self._stamps):
            self._stamps = parameter_stamps(*FusedDecoderStep.reads(self.model))
            self._step = FusedDecoderStep(self.model, self.packed)
        return self._step

    def fused_encoder(self) -> FusedEncoder:
        """The fused encoder bound to the weights as they are now, as `fused_step` for the step."""
        if self._encoder is None or not stamps_hold(self._encoder_stamps):
            self._encoder_stamps = parameter_stamps(*FusedEncoder.reads(self.model))
            self._encoder = FusedEncoder(self.model, self.packed)
        return self._encoder

    def _fused(self) -> bool:
        """The fused passes leave out dropout and autograd: inference only."""
        return not self.model.training and not torch.is_grad_enabled()

    # -- what the search calls ----------------------------------------------------------------
    def encode(self, src: Tensor, need_weights: bool = False) -> EncoderOutput:
        """src: (B, S) -> the model's `encode` on the packed weights, computed by the fused encoder."""
        if not self._fused():
            return self.model.encode(src, need_weights, packed=self.packed)
        return EncoderOutput(*self.fused_encoder().encode(src, need_weights))

    def start_cache(self, encoded: EncoderOutput, capacity: int) -> KVCache:
        """The model's `start_cache` on the packed weights. A run starts here: the fused step is checked
        against the weights once, computes the cross-attention keys and values, and `decode_step` uses it
        for the rest of the run."""
        if not self._fused():
            return self.model.start_cache(encoded, capacity, packed=self.packed)
        return self.fused_step().start_cache(encoded.memory, encoded.source_mask, capacity)

    def compiled_step(self):
        """The compiled step (csrc/decoder_step.cpp) the fused step of this run handed its one-token steps to, or
        None (not built, turned off, or not the fused path). Valid after `start_cache`."""
        if self._step is None or not self._fused():
            return None
        return self._step.native

    def decode_step(self, tokens: Tensor, cache: KVCache, need_weights: bool = False, logits: bool = True) -> StepOutput:
        """tokens: (N, T_new) -> the model's `decode_step` computed by the fused step (any T_new: one token per
        step, or a forced prefix or draft as one block). logits=False: `hidden` instead of logits, as the model's."""
        if not self._fused():
            return self.model.decode_step(tokens, cache, need_weights, packed=self.packed, logits=logits)
        step = self._step if self._step is not None else self.fused_step()
        out, self_w, cross_w = step.step(tokens, cache, need_weights, logits)
        return StepOutput(out, self_w, cross_w) if logits else StepOutput(None, self_w, cross_w, out)

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden: (N, D) one position of `decode_step(logits=False)`'s `hidden` -> logits (N, V), as the one-token
        step of these rows computes them."""
        if not self._fused():
            return self.model.logits(hidden, self.packed)
        step = self._step if self._step is not None else self.fused_step()
        return step.output_layer(hidden)
