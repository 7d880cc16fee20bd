"""Warm-starting a model with a deeper decoder from a trained one (`train --init-from` with more `--decoder-layers`).

The trained layers are copied as they are and the new ones go on top, started so that the grown model
translates as the trained one does: every branch of a new layer ends in a zero projection (the attention
output projections and the feed-forward's second linear, weights and biases), so a new layer only adds zero
to its input. Pre-norm then passes its input through unchanged, and the grown model is the trained one
exactly. Post-norm (the Marian layout the shipped models use) still normalises after each zero branch; a
LayerNorm whose gain and bias are the mean per-position standard deviation and mean of the trained top layer's
outputs gives those outputs back nearly unchanged, because what a post-norm layer emits already has nearly the
same mean and spread at every position. The new layers' other weights keep their fresh initialisation, which
is what lets the zero projections learn (their gradient is the incoming error times the fresh values).

Shapes: B batch, S source length, T target length, D d_model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import Tensor

from .config import ModelConfig
from .model import Transformer

_ZEROED = ("self_attn.out_proj", "cross_attn.out_proj", "ffn.fc2")
_NORMS = ("self_attn_res", "cross_attn_res", "ffn_res")


def can_grow(trained: ModelConfig, target: ModelConfig) -> bool:
    """True when `target` is `trained` with more decoder layers and nothing else changed."""
    return (target.n_decoder_layers > trained.n_decoder_layers
            and replace(trained, n_decoder_layers=target.n_decoder_layers) == target)


@torch.no_grad()
def top_output_statistics(model: Transformer, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> tuple[float, float]:
    """Mean over real target positions of the per-position mean and standard deviation of what the top
    decoder layer emits, teacher-forced on batches of (src (B, S), tgt_in (B, T), tgt_out (B, T))."""
    was_training = model.training
    model.eval()
    outputs: list[Tensor] = []
    hook = model.decoder_layers[-1].register_forward_hook(lambda _m, _i, out: outputs.append(out[0]))
    means, stds = [], []
    try:
        for src, tgt_in, tgt_out in batches:
            outputs.clear()
            model(src, tgt_in)
            h = outputs[-1][tgt_out != model.config.pad_id]  # (N real positions, D)
            means.append(h.mean(-1))
            stds.append(h.std(-1, unbiased=False))
    finally:
        hook.remove()
        model.train(was_training)
    if not means:
        raise ValueError("no batch to measure the top decoder layer on")
    return torch.cat(means).mean().item(), torch.cat(stds).mean().item()


@torch.no_grad()
def grow_decoder(model: Transformer, trained: Transformer, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> int:
    """Load `trained` into `model`, whose decoder has more layers, and start the extra top layers as described
    in the module docstring. `model` keeps its own initialisation of the new layers' other weights.
    Returns the number of layers added."""
    if not can_grow(trained.config, model.config):
        raise ValueError("the model to grow into must be the trained one with more decoder layers")
    own = model.state_dict()
    for name, value in trained.state_dict().items():
        own[name].copy_(value)
    added = range(trained.config.n_decoder_layers, model.config.n_decoder_layers)
    if model.config.norm_placement == "post":
        mean, std = top_output_statistics(trained, batches)
    for j in added:
        layer = f"decoder_layers.{j}."
        for proj in _ZEROED:
            own[layer + proj + ".weight"].zero_()
            own[layer + proj + ".bias"].zero_()
        if model.config.norm_placement == "post":
            for norm in _NORMS:
                own[layer + norm + ".norm.weight"].fill_(std)
                own[layer + norm + ".norm.bias"].fill_(mean)
    return len(added)
