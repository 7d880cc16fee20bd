"""Bulk translation of many sentences and sacreBLEU scoring (BLEU, chrF).

Translation goes through `Translator.translate_batch`, the path `translate` uses: the same sentence
splitting, truncation and batching, so `eval`'s BLEU measures what users get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sacrebleu.metrics import BLEU, CHRF

from .config import DecodeConfig
from .model import Transformer
from .tokenizer import Tokenizer
from .translator import Translator


def translate_texts(
    model: Transformer | Translator,
    tokenizer: Tokenizer | None,
    texts: list[str],
    config: DecodeConfig = DecodeConfig(),
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Translate many texts on the fast path (no attention captured), through the translator.

    `model` is a Translator, or a bare model with its tokenizer (training validation). Returns one string per
    input, in input order. `progress(n_done)` is called after each batch with the number of texts done
    (approximate for texts of several sentences)."""
    translator = model if isinstance(model, Translator) else Translator.for_model(model.eval(), tokenizer)
    report = None if progress is None else (lambda fraction: progress(round(fraction * len(texts))))
    # Only the text is returned: one alternative per position (the chosen token) is all the search needs to keep,
    # and with the output rules it lets greedy decoding check the compiled loop's tokens alone (search.py)
    config = replace(config, n_alternatives=1)
    return [t.text for t in translator.translate_batch(texts, config, attention=False, batch_size=batch_size, progress=report)]


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
    model: Transformer | Translator,
    tokenizer: Tokenizer | None,
    pairs: list[tuple[str, str]],
    config: DecodeConfig = DecodeConfig(),
    batch_size: int = 32,
    progress=None,
) -> tuple[Scores, list[str]]:
    start = time.perf_counter()
    hyps = translate_texts(model, tokenizer, [s for s, _ in pairs], config, batch_size, progress)
    elapsed = time.perf_counter() - start
    return score(hyps, [t for _, t in pairs], elapsed), hyps
