"""Torch-free results: what the UI, the CLI and exports consume.

Everything here is plain data (dataclasses, lists, numpy arrays), so
`tui_translate.ui` never touches torch.

Attention shapes: L layers, H heads, T target tokens, S source tokens.
Target position t is the token produced at decoder step t; its decoder
self-attention row looks at decoder inputs 0..t (`<s>` then the earlier tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import DecodeConfig
from .errors import TranslateError

WORD_START = "▁"  # SentencePiece's word-start marker: the tokenizer writes it, the views read it (one definition, torch-free)


class InputTooLong(TranslateError, ValueError):
    """The input exceeds the hard cap on characters; it is refused, never silently cut."""


class Cancelled(Exception):
    """A streaming translation stopped because its `cancelled()` callback answered True."""


def display_piece(piece: str) -> str:
    """A readable label for a subword piece: the word-start marker becomes a leading space-free form.

    '▁student' -> 'student', 'ing' -> '·ing' (continuation), specials unchanged.
    """
    if piece.startswith("<") and piece.endswith(">"):
        return piece
    if piece.startswith(WORD_START):
        return piece[len(WORD_START):] or "␣"
    return "·" + piece


@dataclass(frozen=True)
class Alternative:
    token_id: int
    piece: str
    prob: float


@dataclass
class AttentionMaps:
    cross: np.ndarray  # (L, H, T, S) encoder-decoder attention
    decoder_self: np.ndarray  # (L, H, T, T) masked decoder self-attention (future = 0)
    encoder_self: np.ndarray  # (L, H, S, S) encoder self-attention

    def to_dict(self) -> dict[str, Any]:
        return {
            "cross": np.round(self.cross, 5).tolist(),
            "decoder_self": np.round(self.decoder_self, 5).tolist(),
            "encoder_self": np.round(self.encoder_self, 5).tolist(),
        }


@dataclass
class Hypothesis:
    text: str
    token_ids: list[int]  # target ids; EOS last when `finished`
    pieces: list[str]  # target pieces, parallel to token_ids
    token_logprobs: list[float]
    alternatives: list[list[Alternative]]  # per position, most probable first
    logprob: float
    score: float
    finished: bool
    prefix_length: int = 0  # leading tokens that were forced
    attention: AttentionMaps | None = None

    @property
    def token_probs(self) -> list[float]:
        return [float(np.exp(lp)) for lp in self.token_logprobs]

    @property
    def decoder_input_pieces(self) -> list[str]:
        """Labels of the decoder-self-attention columns: <s> then the earlier tokens."""
        return ["<s>"] + self.pieces[:-1]

    def to_dict(self, attention: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "text": self.text,
            "tokens": self.pieces,
            "token_ids": self.token_ids,
            "token_probs": [round(p, 5) for p in self.token_probs],
            "alternatives": [[{"token": a.piece, "id": a.token_id, "prob": round(a.prob, 5)} for a in alts] for alts in self.alternatives],
            "logprob": round(self.logprob, 5),
            "score": round(self.score, 5),
            "finished": self.finished,
            "prefix_length": self.prefix_length,
        }
        if attention and self.attention is not None:
            d["attention"] = self.attention.to_dict()
        return d


@dataclass
class Translation:
    source: str
    source_ids: list[int]
    source_pieces: list[str]  # EOS last
    source_offsets: list[tuple[int, int]]  # character span of each piece in `source`
    hypotheses: list[Hypothesis]  # n-best, best first
    config: DecodeConfig = field(default_factory=DecodeConfig)
    model: str = ""
    elapsed_s: float = 0.0
    first_token_s: float | None = None
    steps: int = 0
    note: str = ""  # e.g. why nothing was decoded
    segments: list["Translation"] = field(default_factory=list)  # per sentence, when a long input was split

    @property
    def best(self) -> Hypothesis:
        return self.hypotheses[0]

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""

    def source_labels(self) -> list[str]:
        """Readable source labels: unknown pieces show the source characters they cover."""
        labels = []
        for piece, (a, b) in zip(self.source_pieces, self.source_offsets):
            if piece == "<unk>" and b > a:
                labels.append(self.source[a:b])
            else:
                labels.append(display_piece(piece))
        return labels

    def to_dict(self, attention: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "translation": self.text,
            "source_tokens": self.source_pieces,
            "source_offsets": [list(o) for o in self.source_offsets],
            "model": self.model,
            "decoding": self.config.to_dict(),
            "elapsed_s": round(self.elapsed_s, 4),
            "steps": self.steps,
            "hypotheses": [h.to_dict(attention) for h in self.hypotheses],
        }
        if self.note:
            d["note"] = self.note
        if self.segments:
            d["segments"] = [seg.to_dict(attention) for seg in self.segments]
        return d


@dataclass
class PartialTranslation:
    """The current best hypothesis while decoding (emitted after every step)."""

    source: str
    text: str
    pieces: list[str]
    step: int
    elapsed_s: float
