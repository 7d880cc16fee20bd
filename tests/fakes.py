"""A torch-free fake translator with the `Translator` interface, deterministic and instant.

Its 'translation' looks words up in a tiny dictionary; its attention is a fixed, readable
pattern (each target token attends mostly to one source token), so UI tests can check the
grid's cells against exact numbers and snapshots are stable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_translate.config import DecodeConfig
from tui_translate.results import (Alternative, AttentionMaps, Cancelled, Hypothesis, PartialTranslation, Translation,
                                   WORD_START)

LEXICON = {
    "fr-en": {"je": "i", "suis": "am", "étudiant": "a student", "le": "the", "chat": "cat", "dort": "sleeps",
              "bonjour": "hello", "il": "he", "est": "is", "petit": "small", "bon": "good"},
    "en-fr": {"i": "je", "am": "suis", "a": "un", "student": "étudiant", "the": "le", "cat": "chat", "sleeps": "dort",
              "hello": "bonjour"},
}


@dataclass
class FakeConfig:
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    n_heads: int = 3
    max_positions: int = 64


class FakeTranslator:
    def __init__(self, path: Path, step_delay: float = 0.0, gate: threading.Event | None = None, confidence: float = 1.0) -> None:
        from tui_translate import hub

        self.path = Path(path)
        self.name = hub.display_name(self.path)  # a Hub snapshot is named by its repo id, as Translator names it
        pair = hub.language_pair(self.path) if self.name != self.path.name else None
        self.source_lang, self.target_lang = pair or (self.name.split("-") if "-" in self.name else ("fr", "en"))
        self.config = FakeConfig()
        self.notice: str | None = None  # what Translator.notice would say (the compiled decoder step's state)
        self.step_delay = step_delay
        self.gate = gate  # when set, decoding waits on it before every step (to test cancellation)
        self.confidence = confidence  # scales every token probability (to test the low-confidence marker)
        self.calls: list[tuple[str, DecodeConfig, list[int] | None]] = []
        self.drafts: list[list[int] | str | None] = []  # the draft of every call, parallel to `calls`
        self.vocab: list[str] = ["<pad>", "<s>", "</s>", "<unk>"]

    def segments(self, text: str) -> list[str]:
        from tui_translate.results import InputTooLong
        from tui_translate.sentences import split_sentences

        if len(text) > 20_000:
            raise InputTooLong("input is over the 20,000-character limit; nothing was translated")
        return split_sentences(text) or [text]

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab.append(piece)
        return self.vocab.index(piece)

    def _source(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        pieces, offsets, pos = [], [], 0
        for word in text.split():
            start = text.index(word, pos)
            pos = start + len(word)
            pieces.append(WORD_START + word)
            offsets.append((start, pos))
        return pieces + ["</s>"], offsets + [(len(text), len(text))]

    def _target_words(self, text: str, config: DecodeConfig, rank: int) -> list[str]:
        lex = LEXICON.get(self.name, LEXICON["fr-en"])
        words = []
        for w in text.lower().split():
            words += lex.get(w.strip(".!?"), w.strip(".!?")).split()
        if config.strategy == "sample":
            rng = np.random.default_rng(config.seed)
            words = [w.upper() if rng.random() < 0.3 else w for w in words]
        if rank:
            words = words + ["(alt%d)" % rank]
        return words

    def stream(self, text: str, config: DecodeConfig = DecodeConfig(), attention: bool = True, prefix=None, cancelled=None,
               draft=None):
        import time

        self.calls.append((text, config, prefix))
        self.drafts.append(draft)
        src_pieces, offsets = self._source(text)
        if len(src_pieces) == 1:
            yield Translation(text, [], [], [], [Hypothesis("", [], [], [], [], 0.0, 0.0, True)], config, self.name,
                              note="empty input: nothing to translate")
            return
        n_best = config.top_beams if config.strategy == "beam" else 1
        hyps = []
        for rank in range(n_best):
            words = self._target_words(text, config, rank)
            forced = [self.vocab[i] for i in (prefix or [])]
            pieces = forced + [WORD_START + w for w in words[len(forced):]] + ["</s>"]
            hyps.append(self._hypothesis(pieces, src_pieces, len(forced), rank))
        for step in range(1, len(hyps[0].pieces)):
            if self.gate is not None:
                self.gate.wait(5)
            if self.step_delay:
                time.sleep(self.step_delay)
            if cancelled is not None and cancelled():
                raise Cancelled()
            shown = hyps[0].pieces[:step]
            yield PartialTranslation(text, " ".join(p.lstrip(WORD_START) for p in shown), shown, step, 0.01 * step)
        if cancelled is not None and cancelled():
            raise Cancelled()
        yield Translation(text, [self._id(p) for p in src_pieces], src_pieces, offsets, hyps, config, self.name,
                          elapsed_s=0.042, first_token_s=0.004, steps=len(hyps[0].pieces))

    def _hypothesis(self, pieces: list[str], src: list[str], prefix_length: int, rank: int) -> Hypothesis:
        L, H, T, S = self.config.n_decoder_layers, self.config.n_heads, len(pieces), len(src)
        cross = np.full((L, H, T, S), 0.0)
        for layer in range(L):
            for head in range(H):
                for t in range(T):
                    focus = (t + head + layer) % S
                    cross[layer, head, t] = 0.1 / max(S - 1, 1)
                    cross[layer, head, t, focus] = 0.9 if S > 1 else 1.0
        cross /= cross.sum(-1, keepdims=True)
        dec = np.tril(np.ones((L, H, T, T)))
        dec /= dec.sum(-1, keepdims=True)
        enc = np.full((self.config.n_encoder_layers, H, S, S), 1.0 / S)
        ids = [self._id(p) for p in pieces]
        probs = [self.confidence * (0.9 - 0.1 * ((i + rank) % 4)) for i in range(T)]
        alternatives = []
        for i, p in enumerate(pieces):
            alts = [Alternative(ids[i], p, probs[i])]
            for k, w in enumerate(("▁maybe", "▁perhaps", "</s>")):
                alts.append(Alternative(self._id(w), w, (1 - probs[i]) / (k + 2)))
            alternatives.append(alts)
        logprobs = [float(np.log(p)) for p in probs]
        text = " ".join(p.lstrip(WORD_START) for p in pieces if p != "</s>")
        return Hypothesis(text, ids, pieces, logprobs, alternatives, sum(logprobs), sum(logprobs) / T - rank, True,
                          prefix_length, AttentionMaps(cross, dec, enc))


def fake_loader(**kw):
    def load(path):
        if not Path(path).name or "broken" in Path(path).name:
            raise ValueError(f"{path}: config.json: missing")
        return FakeTranslator(path, **kw)

    return load


def fill_hub_cache(cache: Path, repo: str, source: str, target: str, sha: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A Marian model in huggingface_hub's cache layout, as `models pull` leaves it (blobs, a snapshot of
    symlinks to them, refs/main), its language pair in tokenizer_config.json; the files are not a real model
    (the fake translator reads none of them). Returns the snapshot directory."""
    import hashlib
    import json

    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / sha
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    files = {"config.json": json.dumps({"model_type": "marian"}).encode(), "vocab.json": b"{}", "source.spm": b"spm",
             "target.spm": b"spm", "model.safetensors": b"0" * 2000,
             "tokenizer_config.json": json.dumps({"source_lang": source, "target_lang": target}).encode()}
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(sha)
    return snapshot
