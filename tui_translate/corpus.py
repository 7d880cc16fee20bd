"""Training corpora: several French<TAB>English files mixed with weights, cleaned once.

A corpus is given as `PATH` or `PATH:WEIGHT`. The weight is how many times the corpus is seen per
epoch: 3 repeats it three times, 0.25 takes a different random quarter of it every epoch. It keeps
short everyday pairs (Tatoeba) from being drowned by a large formal corpus (parliament debates).

Cleaning (`clean_corpora`) removes, in this order, and counts what each filter removed:

* `malformed`: a line without two non-empty columns;
* `length_ratio`: one side more than `MAX_CHAR_RATIO` times longer than the other (misalignments);
* `copy`: the "translation" is the source again (untranslated subtitles, English on both sides);
* `language`: a side that a language identifier (lingua) says is not in its language, judged only on
  sides with at least `MIN_WORDS_FOR_LANGID` lower-case words (names, numbers and interjections are
  too short to judge and are kept);
* `duplicate`: the same pair (case and spaces ignored) seen earlier in this or a previous corpus.

Before the filters, one house style is rewritten and counted (`rewritten`): the Canadian Hansard writes a
percentage "25 p. 100" in French where every other corpus and the news write "25%". Left as it is, a model
learns to answer "25%" with "25 p. 100", a number the source does not have, which the output rule that copies
numbers then cuts to "25 p." followed by whatever number comes next.

The cleaned pairs are cached next to the run with the report, so a resumed run does not clean again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_text
from .errors import TranslateError

MAX_CHAR_RATIO = 2.5
MIN_WORDS_FOR_LANGID = 3
LANGID_THRESHOLD = 0.1  # confidence of the expected language under which a judged side is dropped
FILTERS = ("malformed", "length_ratio", "copy", "language", "duplicate")
_LOWER_WORD = re.compile(r"\b[a-zà-ÿœæ]{2,}\b")
# "25 p. 100" / "6,9 p.100" (not "p. 100 000", per hundred thousand) -> "25%"
_PER_HUNDRED = re.compile(r"(?<=\d)[ \u00a0\u202f]*p\.[ \u00a0\u202f]*100(?![ \u00a0\u202f]?\d)")
REWRITES = ("percent",)


def rewrite_french(fr: str) -> tuple[str, int]:
    """The French side in the common style, and how many rewrites were made (see the module docstring)."""
    return _PER_HUNDRED.subn("%", fr)


class CorpusError(TranslateError, ValueError):
    """A training corpus (or its --train spec) that cannot be used as given."""


@dataclass(frozen=True)
class CorpusSpec:
    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "CorpusSpec":
        """'data/train.tsv' or 'data/train.tsv:2.5' (weight after the last colon, when it is a number)."""
        path, sep, weight = spec.rpartition(":")
        if sep and path:
            try:
                w = float(weight)
            except ValueError:
                return cls(spec)
            if not (w > 0 and np.isfinite(w)):
                raise CorpusError(f"{spec}: the weight must be a positive number")
            return cls(path, w)
        return cls(spec)

    def __str__(self) -> str:
        return self.path if self.weight == 1.0 else f"{self.path}:{self.weight:g}"


def _pair_key(fr: str, en: str) -> str:
    return " ".join(fr.lower().split()) + "\t" + " ".join(en.lower().split())


def _ratio_ok(fr: str, en: str) -> bool:
    a, b = len(fr) + 5, len(en) + 5  # +5: "Va !" / "Go." is not a misalignment
    return max(a, b) / min(a, b) <= MAX_CHAR_RATIO


def _judged(text: str) -> bool:
    return len(_LOWER_WORD.findall(text)) >= MIN_WORDS_FOR_LANGID


def _is_copy(fr: str, en: str) -> bool:
    nf = unicodedata.normalize("NFKC", fr).casefold().strip(" -.!?\"'")
    ne = unicodedata.normalize("NFKC", en).casefold().strip(" -.!?\"'")
    return nf == ne and _judged(fr)


@functools.cache
def _detector():
    """One lingua detector for every corpus and side (building one loads its language models)."""
    from lingua import Language, LanguageDetectorBuilder

    langs = [Language.ENGLISH, Language.FRENCH, Language.GERMAN, Language.SPANISH, Language.ITALIAN,
             Language.PORTUGUESE, Language.DUTCH]
    return LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models().build()


def language_confidences(texts: Sequence[str], language: str) -> list[float]:
    """lingua's confidence that each text is in `language` ('fr' or 'en'), among the languages most
    often mixed into French-English corpora."""
    from lingua import Language

    target = {"fr": Language.FRENCH, "en": Language.ENGLISH}[language]
    return list(_detector().compute_language_confidence_in_parallel(list(texts), target))


def read_tsv(path: str | Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.rstrip("\n").split("\t") for line in f]
    except OSError as e:
        raise CorpusError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text ({e.reason})") from None


def clean_corpora(
    specs: Sequence[CorpusSpec],
    langid: Callable[[Sequence[str], str], list[float]] = language_confidences,
) -> tuple[list[list[tuple[str, str]]], dict]:
    """Clean every corpus (French, English pairs). Returns the kept pairs per corpus and a report:
    {path: {"read": n, "kept": n, "removed": {filter: n}, "rewritten": {rewrite: pairs}}}."""
    seen: set[str] = set()
    kept_all, report = [], {}
    for spec in specs:
        rows = read_tsv(spec.path)
        removed = dict.fromkeys(FILTERS, 0)
        rewritten = dict.fromkeys(REWRITES, 0)
        candidates = []
        for cols in rows:
            if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
                if any(c.strip() for c in cols):
                    removed["malformed"] += 1
                continue
            fr, en = cols[0].strip(), cols[1].strip()
            fr, n = rewrite_french(fr)
            rewritten["percent"] += n > 0
            if not _ratio_ok(fr, en):
                removed["length_ratio"] += 1
            elif _is_copy(fr, en):
                removed["copy"] += 1
            else:
                candidates.append((fr, en))
        fr_idx = [i for i, (fr, _) in enumerate(candidates) if _judged(fr)]
        en_idx = [i for i, (_, en) in enumerate(candidates) if _judged(en)]
        bad = set()
        if fr_idx:
            conf = langid([candidates[i][0] for i in fr_idx], "fr")
            bad.update(i for i, c in zip(fr_idx, conf) if c < LANGID_THRESHOLD)
        if en_idx:
            conf = langid([candidates[i][1] for i in en_idx], "en")
            bad.update(i for i, c in zip(en_idx, conf) if c < LANGID_THRESHOLD)
        removed["language"] = len(bad)
        kept = []
        for i, (fr, en) in enumerate(candidates):
            if i in bad:
                continue
            key = _pair_key(fr, en)
            if key in seen:
                removed["duplicate"] += 1
                continue
            seen.add(key)
            kept.append((fr, en))
        kept_all.append(kept)
        report[spec.path] = {"read": sum(1 for c in rows if any(x.strip() for x in c)), "kept": len(kept), "removed": removed,
                             "rewritten": rewritten}
    return kept_all, report


def cleaned_corpora(specs: Sequence[CorpusSpec], cache_dir: Path, clean: bool = True) -> tuple[list[list[tuple[str, str]]], dict]:
    """`clean_corpora` with its output cached in cache_dir (keyed by the files' contents and the filter
    settings, not their modification times: a copy of the same corpora, re-stamped on another session's
    machine, reuses the cache); clean=False reads the files as they are."""
    if not clean:
        out = []
        for spec in specs:
            out.append([(c[0], c[1]) for c in read_tsv(spec.path) if len(c) >= 2 and c[0].strip() and c[1].strip()])
        return out, {}
    h = hashlib.sha256(json.dumps([MAX_CHAR_RATIO, MIN_WORDS_FOR_LANGID, LANGID_THRESHOLD, REWRITES]).encode())
    for spec in specs:
        with open(spec.path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    key = h.hexdigest()[:16]
    report_path = cache_dir / f"clean-{key}.json"
    data_path = cache_dir / f"clean-{key}.tsv"
    if report_path.exists() and data_path.exists():
        report = json.loads(report_path.read_text())
        sizes = report["sizes"]
        rows = [line.rstrip("\n").split("\t") for line in data_path.read_text(encoding="utf-8").splitlines()]
        out, start = [], 0
        for n in sizes:
            out.append([(a, b) for a, b in rows[start : start + n]])
            start += n
        return out, report["filters"]
    kept, report = clean_corpora(specs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_text(data_path, "".join(f"{fr}\t{en}\n" for corpus in kept for fr, en in corpus))
    write_text(report_path, json.dumps({"sizes": [len(c) for c in kept], "filters": report}, indent=2))
    return kept, report


def epoch_indices(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """Indices (into the concatenation of the corpora) of the pairs seen in one epoch: each corpus
    floor(w) times whole, plus a random fraction w - floor(w) of it, drawn anew every epoch."""
    rng = np.random.default_rng([seed, epoch, 7])
    parts, start = [], 0
    for n, w in zip(sizes, weights):
        whole = int(w)
        ids = np.arange(start, start + n, dtype=np.int64)
        parts.extend([ids] * whole)
        extra = int(round((w - whole) * n))
        if extra:
            parts.append(np.sort(rng.choice(ids, size=extra, replace=False)))
        start += n
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def format_report(report: dict) -> list[str]:
    """One line per corpus: read, kept, what each filter removed and what was rewritten."""
    lines = []
    for path, r in report.items():
        notes = []
        if removed := ", ".join(f"{k} {v:,}" for k, v in r["removed"].items() if v):
            notes.append(f"removed: {removed}")
        if rewritten := ", ".join(f"{k} {v:,}" for k, v in r.get("rewritten", {}).items() if v):
            notes.append(f"rewritten: {rewritten}")
        lines.append(f"{path}: {r['read']:,} pairs read, {r['kept']:,} kept" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines
