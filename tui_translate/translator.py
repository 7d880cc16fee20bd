"""The facade between the engine and its users: text + DecodeConfig in, torch-free results out.

Torch stops here: the app and the CLI receive `Translation` / `PartialTranslation`
objects made of lists and numpy arrays.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .checkpoint import LoadedModel
from .config import DecodeConfig, ModelConfig
from .constraints import PieceTable, SourceRules
from . import native
from .engine import InferenceEngine
from .loading import load_model
from .model import Transformer
from .results import Alternative, AttentionMaps, Cancelled, Hypothesis, InputTooLong, PartialTranslation, Translation
from .sentences import split_sentences
from .search import SearchDone, SearchHypothesis, SearchStep, search, search_in_batches
from .tokenizer import Encoded, Tokenizer

__all__ = ["Cancelled", "InputTooLong", "Translator", "interactive_threads", "load_translator"]

# Hard cap for the translator's callers (the command line): longer input is refused with a message, never cut.
# The app refuses sooner (ui/app.py) because each sentence of its input becomes an exchange on screen.
MAX_INPUT_CHARS = 20_000


class Translator:
    def __init__(self, loaded: LoadedModel, threads: int = 0, int8: bool = False) -> None:
        if threads:
            torch.set_num_threads(threads)  # process-wide; threads that start decoding later pick it up
        self.threads = threads or torch.get_num_threads()  # torch CPU threads decoding uses
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.int8 = int8
        # the decoding weights (packed, int8 when asked) and the fused encoder and step: the model itself stays as loaded
        self.engine = InferenceEngine(self.model, "int8" if int8 else "fp32")
        self._pieces: PieceTable | None = None  # the target vocabulary as the output rules see it, built on first use

    @classmethod
    def load(cls, path: str | Path, threads: int = 0, int8: bool = False) -> "Translator":
        """threads: torch CPU threads (0: leave torch's setting). int8: decode with int8 weights (faster, about
        the same BLEU; docs/performance.md)."""
        return cls(load_model(path), threads, int8)

    @classmethod
    def for_model(cls, model: Transformer, tokenizer: Tokenizer, name: str = "model", int8: bool = False) -> "Translator":
        """A translator over a model in memory (training validation)."""
        loaded = LoadedModel(model, tokenizer, model.config, Path(name), {"name": name})
        return cls(loaded, int8=int8)

    # -- description --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def source_lang(self) -> str:
        return str(self.loaded.meta.get("source_lang", "?"))

    @property
    def target_lang(self) -> str:
        return str(self.loaded.meta.get("target_lang", "?"))

    @property
    def config(self) -> ModelConfig:
        return self.loaded.config

    @property
    def notice(self) -> str | None:
        """One line for the user when decoding runs slower than it could (the compiled decoder step being
        built, or unavailable here, and why); None when there is nothing to say."""
        return native.notice()

    # -- segmentation -------------------------------------------------------------------------
    def check_length(self, text: str) -> None:
        if len(text) > MAX_INPUT_CHARS:
            raise InputTooLong(f"input of {len(text):,} characters is over the {MAX_INPUT_CHARS:,}-character limit; nothing was translated")

    def segments(self, text: str) -> list[str]:
        """The pieces `text` is translated in: its sentences (the models are trained on single
        sentences and garble several at once: "Je suis étudiant. Le chat dort." came out as
        "I'm a cat's sleeping"); a sentence longer than the model's positions is cut at word
        boundaries into chunks that fit."""
        self.check_length(text)
        sentences = split_sentences(text)
        hard = self.config.max_positions - 1
        if len(sentences) <= 1 and len(self.tokenizer.encode_ids([text])[0]) <= hard:
            return [text]
        out = []
        for sentence in sentences:
            words, chunk = sentence.split(), []
            for word in words:
                candidate = chunk + [word]
                if chunk and len(self.tokenizer.encode_ids([" ".join(candidate)])[0]) > hard:
                    out.append(" ".join(chunk))
                    chunk = [word]
                else:
                    chunk = candidate
            if chunk:
                out.append(" ".join(chunk))
        return out or [text]

    # -- translation --------------------------------------------------------------------------
    def stream(
        self,
        text: str,
        config: DecodeConfig = DecodeConfig(),
        attention: bool = True,
        prefix: list[int] | None = None,
        cancelled: Callable[[], bool] | None = None,
        draft: list[int] | str | None = None,
    ) -> Iterator[PartialTranslation | Translation]:
        """Translate one text, yielding a `PartialTranslation` after every decoding step and the
        final `Translation` last. `prefix`: target ids forced at the start. `cancelled()` is polled
        between steps; when it answers True the stream raises `Cancelled`.

        `draft`: a guess of the whole output, as target ids (e.g. an earlier `Hypothesis.token_ids`) or text
        (e.g. the previous live translation): the positions the prefix forces are skipped and the rest is
        verified in one pass (search.py's drafts). The result is the one translating without it; greedy
        and sampling are faster when the guess is right, beam search ignores it."""
        start = time.perf_counter()
        self.check_length(text)
        enc = self._encode(text)
        if enc is None:
            yield self._empty(text, config, "empty input: nothing to translate")
            return
        src = torch.tensor([enc.ids], dtype=torch.long)
        first_token = None
        final = None
        guess = self._draft_ids(draft)[len(prefix or []):]
        for event in search(self.engine, src, config, prefix=prefix, need_weights=attention, draft=guess,
                            rules=[self.rules(text, config)]):
            if cancelled is not None and cancelled():
                raise Cancelled()
            if isinstance(event, SearchStep):
                now = time.perf_counter()
                if first_token is None:
                    first_token = now - start
                ids = event.partial[0]
                yield PartialTranslation(text, self.tokenizer.decode(ids), self.tokenizer.pieces(ids), event.step, now - start)
            else:
                final = event
        assert isinstance(final, SearchDone)
        elapsed = time.perf_counter() - start
        yield self._translation(text, enc, final, 0, config, elapsed, first_token if first_token is not None else elapsed, prefix)

    def translate(self, text: str, config: DecodeConfig = DecodeConfig(), attention: bool = True, prefix: list[int] | None = None,
                  draft: list[int] | str | None = None) -> Translation:
        result = None
        for result in self.stream(text, config, attention, prefix, draft=draft):
            pass
        assert isinstance(result, Translation)
        return result

    def translate_batch(
        self, texts: list[str], config: DecodeConfig = DecodeConfig(), attention: bool = False, batch_size: int = 32,
        progress: Callable[[float], None] | None = None,
    ) -> list[Translation]:
        """Translate many texts, `batch_size` sentences at a time (similar lengths grouped together).
        Results come back in input order and equal one-by-one translation. This is the one bulk path:
        `translate` on standard input, `eval` and training validation all go through it.
        `progress(fraction)` is called after each batch with the fraction of sentences done."""
        pieces: list[str] = []
        owner: list[tuple[int, int]] = []  # (text index, number of segments)
        for i, text in enumerate(texts):
            segs = self.segments(text) if text.strip() else [text]
            owner.append((len(pieces), len(segs)))
            pieces.extend(segs)
        flat = self._translate_pieces(pieces, config, attention, batch_size, progress)
        results = []
        for i, (start, n) in enumerate(owner):
            if n == 1:
                results.append(flat[start])
            else:
                segs = flat[start : start + n]
                merged = Translation(texts[i], [], [], [], [Hypothesis(" ".join(s.text for s in segs if s.text), [], [], [], [],
                                     sum(s.best.logprob for s in segs), sum(s.best.score for s in segs), all(s.best.finished for s in segs))],
                                     config, self.name, sum(s.elapsed_s for s in segs), None, sum(s.steps for s in segs),
                                     note=f"translated as {n} sentences", segments=segs)
                results.append(merged)
        return results

    def _translate_pieces(self, texts: list[str], config: DecodeConfig, attention: bool, batch_size: int,
                          progress: Callable[[float], None] | None = None) -> list[Translation]:
        results: list[Translation | None] = [None] * len(texts)
        encoded = []
        for i, text in enumerate(texts):
            enc = self._encode(text)
            if enc is None:
                results[i] = self._empty(text, config, "empty input: nothing to translate")
            else:
                encoded.append((i, enc))
        done = 0
        rules = [self.rules(texts[i], config) for i, _ in encoded]
        for rows, final, seconds in search_in_batches(self.engine, [e.ids for _, e in encoded], config, batch_size, attention,
                                                      rules):
            for row, k in enumerate(rows):
                i, enc = encoded[k]
                results[i] = self._translation(texts[i], enc, final, row, config, seconds / len(rows), None, None)
            done += len(rows)
            if progress is not None:
                progress(done / len(encoded))
        return results  # type: ignore[return-value]

    def rules(self, text: str, config: DecodeConfig) -> SourceRules | None:
        """The output rules `config` asks for on the translation of `text` (constraints.py), or None."""
        if not (config.keep_numbers or config.block_repeats):
            return None
        if self._pieces is None:
            self._pieces = PieceTable.from_tokenizer(self.tokenizer)
        return SourceRules(self._pieces, self.tokenizer.normalize(text), config.keep_numbers, config.block_repeats)

    # -- helpers ------------------------------------------------------------------------------
    def _draft_ids(self, draft: list[int] | str | None) -> list[int]:
        if isinstance(draft, str):
            return self.tokenizer.encode_target_ids([draft])[0] if draft.strip() else []
        return list(draft or [])

    def _encode(self, text: str) -> Encoded | None:
        if not self.tokenizer.normalize(text).strip():
            return None
        enc = self.tokenizer.encode(text)
        limit = self.config.max_positions
        if len(enc.ids) > limit:  # keep the start; the caller splits long input into sentences first
            enc = Encoded(enc.ids[: limit - 1] + [enc.ids[-1]], enc.pieces[: limit - 1] + [enc.pieces[-1]],
                          enc.offsets[: limit - 1] + [enc.offsets[-1]])
        return enc

    def _empty(self, text: str, config: DecodeConfig, note: str) -> Translation:
        return Translation(text, [], [], [], [Hypothesis("", [], [], [], [], 0.0, 0.0, True)], config, self.name, note=note)

    def _translation(self, text, enc: Encoded, final: SearchDone, row: int, config, elapsed, first_token, prefix) -> Translation:
        enc_attn = final.encoder_attention[row].float().numpy() if final.encoder_attention is not None else None
        hyps = [self._hypothesis(h, enc_attn, len(prefix or [])) for h in final.hypotheses[row]]
        return Translation(text, list(enc.ids), list(enc.pieces), [tuple(o) for o in enc.offsets], hyps, config,
                           self.name, elapsed, first_token, final.steps)

    def _hypothesis(self, h: SearchHypothesis, enc_attn: np.ndarray | None, prefix_length: int) -> Hypothesis:
        tok = self.tokenizer
        alt_probs = h.alt_logprobs.exp().tolist()
        alternatives = [
            [Alternative(int(i), tok.piece(int(i)), float(p)) for i, p in zip(ids, probs)]
            for ids, probs in zip(h.alt_ids.tolist(), alt_probs)
        ]
        attention = None
        if h.cross_attention is not None and enc_attn is not None:
            attention = AttentionMaps(h.cross_attention.float().numpy(), h.self_attention.float().numpy(), enc_attn)
        return Hypothesis(tok.decode(h.tokens), list(h.tokens), tok.pieces(h.tokens), list(h.token_logprobs), alternatives,
                          h.logprob, h.score, h.finished, prefix_length, attention)


def interactive_threads() -> int:
    """Torch threads for decoding behind an interactive interface: all cores but one, which is left to the
    interface (at least one thread): with every core busy with torch (one thread spinning between products)
    keystrokes wait behind decoding, while one-row decoding loses little with a thread fewer (most one-row
    work is single-threaded anyway). Measurements: docs/performance.md."""
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


def load_translator(path: str | Path | None = None, threads: int = 0, int8: bool = False) -> Translator:
    from .paths import default_model_dir

    translator = Translator.load(path or default_model_dir(), threads, int8)
    native.start_build()  # once per machine, in the background: decoding starts on the Python step
    freeze_startup_objects()
    return translator


def freeze_startup_objects() -> None:
    """Move every object alive now (torch, the model, the tokenizer: well over 100,000 of them) out of the
    garbage collector's view. Decoding allocates many small objects, which triggers Python's full
    collections now and then, and each would traverse them all: a pause in the middle of a batch.
    Frozen objects are still freed by reference counting, only never as part of a garbage cycle."""
    gc.freeze()
