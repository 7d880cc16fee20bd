"""Output rules: tokens a translation may not take next, whatever the model prefers.

Two rules, each a `DecodeConfig` switch, both on by default:

* **Numbers are copied** (`keep_numbers`). A digit run of the output ("1972", the "2" and "50" of "2.50") must
  be one of the source's digit runs: while a run is open only digits that keep it the start of a source
  run may follow, and it may end (any other token, end of sentence included) only where it equals one. A
  model whose digits stutter ("201" for "2011", "2220" for "220") or invent numbers cannot emit them; the
  rule never adds a number the model did not start, and a number it leaves out stays left out.
* **No stutter** (`block_repeats`). A block of one to four pieces that starts a word and holds a letter may
  not follow itself twice ("orange orange orange", "Lugo Lugo Lugo"): the piece that would complete the
  third copy is ruled out, and the model's next choice is taken instead.

The search applies them as it applies the ids never generated: the ruled-out tokens' log-probabilities
become -inf before anything is chosen or shown, and every other token keeps the model's own probability
(nothing is renormalised, so scores stay the model's). Nothing here imports torch: `search.py` asks a
`SourceRules` what a row may not take and masks its tensors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .results import WORD_START

_DIGITS = re.compile(r"\d+")
MAX_BLOCK = 4  # pieces in the longest block the stutter rule looks for
# Pieces kept per row to judge the next one: three copies of the longest block, less the one being chosen.
REPEAT_WINDOW = 3 * MAX_BLOCK - 1


@dataclass(frozen=True)
class _DigitPiece:
    """A piece holding digits: its text, and where its digit runs lie in it."""

    token_id: int
    text: str  # the piece as it reads in the output (word-start marker as a space)
    runs: tuple[tuple[int, int], ...]  # (start, end) of each digit run in `text`


class PieceTable:
    """What the rules know of a target vocabulary: which pieces hold digits, which start a word and which hold a
    letter. Built once per tokenizer (`from_tokenizer`)."""

    def __init__(self, pieces: Sequence[str | None], special: set[int]) -> None:
        self.pieces = list(pieces)  # by id; None where the vocabulary has no piece
        self.digit_pieces: list[_DigitPiece] = []
        self.word_start: set[int] = set()  # starts with the word-start marker
        self.lettered: set[int] = set()  # holds a letter
        for i, piece in enumerate(pieces):
            if piece is None or i in special:
                self.pieces[i] = None
                continue
            text = piece.replace(WORD_START, " ")
            runs = tuple(m.span() for m in _DIGITS.finditer(text))
            if runs:
                self.digit_pieces.append(_DigitPiece(i, text, runs))
            if any(ch.isalpha() for ch in text):
                self.lettered.add(i)
            if text.startswith(" "):
                self.word_start.add(i)
        self.texts = {p.token_id: p.text for p in self.digit_pieces}

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "PieceTable":
        vocab = tokenizer.target.get_vocab()
        pieces: list[str | None] = [None] * tokenizer.vocab_size
        for piece, i in vocab.items():
            if 0 <= i < len(pieces):
                pieces[i] = piece
        return cls(pieces, tokenizer.special_ids)


def _text_of(table: PieceTable, ids: Sequence[int]) -> str:
    """The output text of `ids` (special ids and ids without a piece read as nothing)."""
    pieces = table.pieces
    return "".join(pieces[i] or "" for i in ids if 0 <= i < len(pieces)).replace(WORD_START, " ")


class SourceRules:
    """The rules for one source sentence. `ruled_out(tokens)` -> what a row whose output so far is `tokens`
    may not take next, as (`only`, `banned`): `only` a list of the ids it may take (every other id is ruled
    out) or None, and `banned` ids ruled out besides."""

    def __init__(self, table: PieceTable, source_text: str, keep_numbers: bool = True, block_repeats: bool = True) -> None:
        self.table = table
        self.keep_numbers, self.block_repeats = keep_numbers, block_repeats
        self.runs = frozenset(_DIGITS.findall(source_text))
        self.prefixes = frozenset(run[:i] for run in self.runs for i in range(1, len(run) + 1))
        # the digit pieces that may open a number (no run open before them), the same for every row
        openers = {p.token_id for p in table.digit_pieces if self._follows("", p) is not None}
        self._closed = [p.token_id for p in table.digit_pieces if p.token_id not in openers]
        self.window = max([REPEAT_WINDOW] + [len(r) + 2 for r in self.runs])

    @property
    def active(self) -> bool:
        return self.keep_numbers or self.block_repeats

    def _follows(self, open_run: str, piece: _DigitPiece) -> str | None:
        """The digits left open after `piece` follows an open run `open_run` ("" when none is open), or None
        when the piece breaks the rule."""
        text, runs = piece.text, piece.runs
        first_start, first_end = runs[0]
        if first_start == 0:  # the piece's first digits extend the open run
            head = open_run + text[:first_end]
        else:  # something else comes first: the open run closes before the piece
            if open_run and open_run not in self.runs:
                return None
            head = text[first_start:first_end]
        spans = [head] + [text[s:e] for s, e in runs[1:]]
        ends_open = runs[-1][1] == len(text)
        for i, run in enumerate(spans):
            last = i == len(spans) - 1
            if last and ends_open:
                return run if run in self.prefixes else None
            if run not in self.runs:
                return None
        return ""

    def open_run(self, tokens: Sequence[int]) -> str:
        """The digits the output ends with (a number still being written), "" if it ends with anything else."""
        tail = _text_of(self.table, tokens[-self.window:])
        m = re.search(r"\d+$", tail)
        return m.group(0) if m else ""

    def ruled_out(self, tokens: Sequence[int]) -> tuple[list[int] | None, list[int]]:
        only: list[int] | None = None
        banned: list[int] = []
        if self.keep_numbers:
            run = self.open_run(tokens)
            if not run:
                banned = self._closed
            else:
                allowed = {p.token_id for p in self.table.digit_pieces if self._follows(run, p) is not None}
                if run not in self.runs and allowed:
                    only = sorted(allowed)  # the number must go on: nothing else may follow an unfinished source run
                else:
                    banned = [p.token_id for p in self.table.digit_pieces if p.token_id not in allowed]
        if self.block_repeats:
            stutter = self._stutter(tokens)
            if only is not None:
                only = [t for t in only if t not in stutter] or only
            else:
                banned = banned + stutter
        return only, banned

    def _stutter(self, tokens: Sequence[int]) -> list[int]:
        """The pieces that would complete a third copy in a row of a block of 1 to MAX_BLOCK pieces that starts
        a word and holds a letter."""
        out = []
        n = len(tokens)
        for k in range(1, MAX_BLOCK + 1):
            if n < 3 * k - 1:
                break
            # copies one and two complete, copy three short of its last piece: tail == X + X + X[:-1]
            tail = list(tokens[n - (3 * k - 1):])
            x = tail[:k]
            if tail[k:2 * k] != x or tail[2 * k:] != x[:-1]:
                continue
            if x[0] in self.table.word_start and any(t in self.table.lettered for t in x):
                out.append(x[-1])
        return out
