"""Key/value cache for incremental decoding.

Per decoder layer the cache keeps
* self-attention keys/values, which grow by one position per step; they live in
  buffers preallocated to the maximum length, so a step writes in place instead
  of concatenating (no per-step work that grows with the sequence);
* cross-attention keys/values of the encoder output, computed once per source.

Beam search reorders hypotheses through `reorder(beam_idx)` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .attention import key_padding_mask


@dataclass
class LayerCache:
    self_k: Tensor  # (N, H, T_max, d_k)
    self_v: Tensor  # (N, H, T_max, d_k)
    cross_k: Tensor  # (N, H, S, d_k)
    cross_v: Tensor  # (N, H, S, d_k)


class KVCache:
    """All decoder layers' keys and values for N rows (sentences × beams)."""

    def __init__(self, layers: list[LayerCache], source_mask: Tensor, capacity: int) -> None:
        self.layers = layers
        self.source_mask = source_mask  # (N, S) bool, True at real (non-pad) source tokens
        self.cross_mask = key_padding_mask(source_mask)  # (N, 1, 1, S) | None when nothing is padded
        self.capacity = capacity
        self.length = 0  # target positions already stored

    @classmethod
    def create(
        cls, cross_kv: list[tuple[Tensor, Tensor]], source_mask: Tensor, capacity: int
    ) -> "KVCache":
        """cross_kv: per layer (k, v), each (N, H, S, d_k); capacity: max target positions."""
        layers = []
        for k, v in cross_kv:
            n, h, _, dk = k.shape
            buf_k = k.new_zeros(n, h, capacity, dk)  # (N, H, T_max, d_k)
            buf_v = v.new_zeros(n, h, capacity, dk)
            layers.append(LayerCache(buf_k, buf_v, k, v))
        return cls(layers, source_mask, capacity)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new self-attention keys/values (N, H, T_new, d_k) at the current length.

        Returns the keys/values of every position so far, (N, H, length + T_new, d_k).
        The length only advances in `advance()`, after all layers have appended.
        """
        c = self.layers[layer]
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded")
        c.self_k[:, :, self.length : end] = k
        c.self_v[:, :, self.length : end] = v
        return c.self_k[:, :, :end], c.self_v[:, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def _select_rows(self, buffer: Tensor, index: Tensor) -> Tensor:
        """Rows `index` of a (N, H, T_max, d_k) buffer; only the filled positions are copied."""
        out = buffer.new_empty(index.numel(), *buffer.shape[1:])  # (N_new, H, T_max, d_k)
        out[:, :, : self.length] = buffer[:, :, : self.length].index_select(0, index)
        return out

    def reorder(self, index: Tensor, *, same_source: bool = False) -> None:
        """Keep rows `index` (N_new,), e.g. the parent beam of every surviving hypothesis.

        same_source=True promises that every row keeps its source sentence (beam
        search reorders within a sentence's beams), so the static cross-attention
        keys/values, identical across those rows, need no copy.
        """
        for c in self.layers:
            c.self_k = self._select_rows(c.self_k, index)
            c.self_v = self._select_rows(c.self_v, index)
            if not same_source:
                c.cross_k = c.cross_k.index_select(0, index)
                c.cross_v = c.cross_v.index_select(0, index)
        if not same_source:
            self.source_mask = self.source_mask.index_select(0, index)
            self.cross_mask = key_padding_mask(self.source_mask)
