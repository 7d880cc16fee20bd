"""Subword tokenizer: a thin wrapper over Hugging Face `tokenizers`.

The project's models use one joint BPE vocabulary for French and English with a
SentencePiece-style word-start marker "▁", so every piece is readable text (no
byte-level garbage) and offsets map each piece back into the user's string.

Normalisation (identical for training text and user input): NFKC (which turns
the French U+202F / U+00A0 spaces before ! ? : into plain spaces), typographic
apostrophes to ', control characters to spaces, runs of whitespace collapsed,
ends stripped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .results import WORD_START

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# Characters every new vocabulary holds whether or not the training text has them: printable ASCII,
# the Latin-1 and Latin Extended-A letters and the usual typographic signs, so names, URLs, codes and
# prices in any Latin-script language can be spelt (and copied) instead of becoming <unk>.
BASE_ALPHABET = (
    [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA1, 0x180) if chr(c).isprintable() and c != 0xAD]
    + list("€£¥«»“”„‘’–—…•°№™")
)


@dataclass(frozen=True)
class Encoded:
    """One encoded text: ids end with EOS; pieces/offsets are parallel to ids
    (EOS has the empty span at the end of the text)."""

    ids: list[int]
    pieces: list[str]
    offsets: list[tuple[int, int]]


def build_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace("’", "'"),
            normalizers.Replace("‘", "'"),
            normalizers.Replace(Regex(r"[\p{Cc}\p{Zl}\p{Zp}]"), " "),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )


def build_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            # one piece per digit: any number is spelt from ten pieces the model sees everywhere, so it
            # can copy "1972" or "2,50" digit by digit instead of guessing a rare merged piece
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, alphabet: int = 1000,
                    base_alphabet: bool = True) -> "Tokenizer":
    """Train a joint BPE vocabulary on `texts` (both languages). `alphabet` bounds the single characters
    kept (the most frequent ones): accented capitals, currency signs and the punctuation of names and
    URLs must survive, or they become <unk> and cannot be copied. `base_alphabet` adds BASE_ALPHABET
    (about 300 characters: only for vocabularies much larger than that, not for toy ones)."""
    tk = HFTokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = build_normalizer()
    tk.pre_tokenizer = build_pre_tokenizer()
    tk.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=alphabet,
        initial_alphabet=BASE_ALPHABET if base_alphabet else [],
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tk)


class Tokenizer:
    """Source and target tokenizers over one shared id space.

    The project's own models use a single joint tokenizer for both sides;
    imported Marian models have separate source/target segmenters over a shared
    vocabulary, hence the optional `target`.
    """

    def __init__(self, source: HFTokenizer, target: HFTokenizer | None = None) -> None:
        self.source = source
        self.target = target or source
        ids = [self.source.token_to_id(t) for t in SPECIAL_TOKENS]
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (-1 if i is None else i for i in ids)
        self._vocab_size = max(self.source.get_vocab_size(), self.target.get_vocab_size())

    # -- io -----------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(HFTokenizer.from_file(str(path)))

    def to_str(self) -> str:
        return self.source.to_str(pretty=True)

    # -- vocabulary -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def piece(self, token_id: int) -> str:
        """The target-side piece of an id, e.g. '▁student'."""
        p = self.target.id_to_token(int(token_id))
        return p if p is not None else f"<{token_id}>"

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.piece(i) for i in ids]

    @property
    def special_ids(self) -> set[int]:
        return {i for i in (self.pad_id, self.bos_id, self.eos_id, self.unk_id) if i >= 0}

    # -- encoding -----------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        norm = self.source.normalizer
        return norm.normalize_str(text) if norm is not None else text

    def encode(self, text: str) -> Encoded:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[Encoded]:
        out = []
        for text, enc in zip(texts, self.source.encode_batch(texts, add_special_tokens=False)):
            ids = list(enc.ids) + [self.eos_id]
            pieces = list(enc.tokens) + ["</s>"]
            offsets = [tuple(o) for o in enc.offsets] + [(len(text), len(text))]
            out.append(Encoded(ids, pieces, offsets))
        return out

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Fast path for training: ids with EOS, no pieces or offsets."""
        encs = self.source.encode_batch(texts, add_special_tokens=False)
        return [e.ids + [self.eos_id] for e in encs]

    def encode_target_ids(self, texts: list[str]) -> list[list[int]]:
        encs = self.target.encode_batch(texts, add_special_tokens=False)
        return [e.ids + [self.eos_id] for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        special = self.special_ids  # a property that builds the set: once per call, not once per id
        keep = [int(i) for i in ids if int(i) not in special]
        return self.target.decode(keep, skip_special_tokens=True)
