"""Bulk translation of many sentences and sacreBLEU scoring (BLEU, chrF)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF

from .config import DecodeConfig
from .model import Transformer
from .search import search_in_batches
from .tokenizer import Tokenizer


def translate_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: list[str],
    config: DecodeConfig = DecodeConfig(),
    batch_size: int = 32,
    progress=None,
) -> list[str]:
    """Translate many texts on the fast path, batching sentences of similar length.

    Returns one string per input, in input order. `progress(n_done)` is called after each batch.
    """
    model.eval()
    encoded = tokenizer.encode_ids(texts)
    limit = model.config.max_positions
    encoded = [e if len(e) <= limit else e[: limit - 1] + [tokenizer.eos_id] for e in encoded]
    results: list[str] = [""] * len(texts)
    done = 0
    for idx, final, _ in search_in_batches(model, encoded, config, batch_size):
        for i, hyps in zip(idx, final.hypotheses):
            results[i] = tokenizer.decode(hyps[0].tokens)
        done += len(idx)
        if progress is not None:
            progress(done)
    return results


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int
    seconds: float

    @property
    def sentences_per_second(self) -> float:
        return self.sentences / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "bleu": round(self.bleu, 2),
            "chrf": round(self.chrf, 2),
            "bleu_signature": self.bleu_signature,
            "chrf_signature": self.chrf_signature,
            "sentences": self.sentences,
            "seconds": round(self.seconds, 3),
            "sentences_per_second": round(self.sentences_per_second, 2),
        }


def score(hypotheses: list[str], references: list[str], seconds: float = 0.0) -> Scores:
    """Corpus BLEU and chrF with sacreBLEU defaults (13a tokenisation, exp smoothing)."""
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()), len(hypotheses), seconds)


def evaluate_pairs(
    model: Transformer,
    tokenizer: Tokenizer,
    pairs: list[tuple[str, str]],
    config: DecodeConfig = DecodeConfig(),
    batch_size: int = 32,
    progress=None,
) -> tuple[Scores, list[str]]:
    start = time.perf_counter()
    hyps = translate_texts(model, tokenizer, [s for s, _ in pairs], config, batch_size, progress)
    elapsed = time.perf_counter() - start
    return score(hyps, [t for _, t in pairs], elapsed), hyps
