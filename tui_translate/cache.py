"""Key/value cache for incremental decoding.

For every decoder layer the cache keeps (all layers in one tensor per kind)
* self-attention keys/values, which grow by one position per step; they live in
  buffers preallocated to the maximum length, so a step writes in place instead
  of concatenating (no per-step work that grows with the sequence);
* cross-attention keys/values of the encoder output, computed once per source.

Beam search reorders hypotheses through `reorder(beam_idx)` and nothing else; a draft's rejected
positions are dropped with `truncate(length)`. The cache holds state only: the computation that fills
it is the model's (`decode_step`) or the inference engine's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention import key_padding_mask


class KVCache:
    """All decoder layers' keys and values for N rows (sentences × beams), each kind in one tensor,
    so that appending a step is one copy per layer and reordering beams one gather in all."""

    def __init__(self, self_kv: Tensor, cross_kv: Tensor, source_mask: Tensor) -> None:
        self.self_kv = self_kv  # (L, 2, N, H, T_max, d_k) keys [:, 0] and values [:, 1], filled up to `length`
        self.cross_kv = cross_kv  # (L, 2, N, H, S, d_k) of the encoder output
        self.source_mask = source_mask  # (N, S) bool, True at real (non-pad) source tokens
        self.cross_mask = key_padding_mask(source_mask)  # (N, 1, 1, S) | None when nothing is padded
        self.capacity = self_kv.size(4)
        self.spare: Tensor | None = None  # the buffer `reorder` left, reused by the next reorder
        self.length = 0  # target positions already stored

    @classmethod
    def create(cls, cross_kv: Tensor, source_mask: Tensor, capacity: int) -> "KVCache":
        """cross_kv: every layer's encoder keys/values (L, 2, N, H, S, d_k); capacity: max target positions.
        The self-attention buffers are left uninitialised: only positions below `length` are ever read."""
        l, _, n, h, _, dk = cross_kv.shape
        return cls(cross_kv.new_empty(l, 2, n, h, capacity, dk), cross_kv, source_mask)

    def append(self, layer: int, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Store new self-attention keys/values kv (2, N, H, T_new, d_k) at the current length.

        Returns the keys and values of every position so far, each (N, H, length + T_new, d_k).
        The length only advances in `advance()`, after all layers have appended.
        """
        end = self.length + kv.size(3)
        if end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded")
        buf = self.self_kv[layer]  # (2, N, H, T_max, d_k)
        buf[:, :, :, self.length : end] = kv
        return buf[0, :, :, :end], buf[1, :, :, :end]

    def cross(self, layer: int) -> tuple[Tensor, Tensor]:
        """The encoder keys and values for `layer`, each (N, H, S, d_k)."""
        return self.cross_kv[layer, 0], self.cross_kv[layer, 1]

    def advance(self, steps: int) -> None:
        self.length += steps

    def truncate(self, length: int) -> None:
        """Forget the positions from `length` on (a draft's positions past the tokens the search kept): they
        are overwritten by the next append, and nothing reads past `length`."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    def reorder(self, index: Tensor, *, same_source: bool = False) -> None:
        """Keep rows `index` (N_new,), e.g. the parent beam of every surviving hypothesis.

        same_source=True promises that every row keeps its source sentence (beam
        search reorders within a sentence's beams), so the static cross-attention
        keys/values, identical across those rows, need no copy.

        The rows are gathered into a second buffer, and the old one is kept as the spare for the next
        reorder: beam search reorders at every step, and a fresh buffer each time is a fresh allocation
        the size of the whole cache (tens of MB for a batch of 32 sentences × 5 beams), which the allocator
        maps anew and the copy then faults in page by page.
        """
        old = self.self_kv
        n_new = index.numel()
        spare = self.spare if self.spare is not None and self.spare.size(2) >= n_new else old.new_empty(
            *old.shape[:2], n_new, *old.shape[3:])
        new = spare[:, :, :n_new]  # (L, 2, N_new, H, T_max, d_k), a view when the spare has more rows
        # the filled part only, gathered straight into the new buffer (no temporary)
        torch.index_select(old[..., : self.length, :], 2, index, out=new[..., : self.length, :])
        self.self_kv, self.spare = new, old
        if not same_source:
            self.cross_kv = self.cross_kv.index_select(2, index)
            self.source_mask = self.source_mask.index_select(0, index)
            self.cross_mask = key_padding_mask(self.source_mask)
