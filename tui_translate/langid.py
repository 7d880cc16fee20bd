"""Which language a text is in, with lingua (a language identifier made for short text). Torch-free.

The detector knows only a handful of languages: a few common ones, so that "a language no model
handles" can be recognised instead of being translated into invented output, plus the languages of
the models the app has (`want`, from each model's own language pair: a Hub model's
tokenizer_config.json may say `deu` or `rus`, which are mapped to the codes lingua answers with).
Loading its language models takes seconds and about 200 MB (lingua's high-accuracy mode, the one
that works on a few words; its low-accuracy mode needs a tenth of that but answers "unsure" for short
sentences), so the app warms it in a worker thread and `detect` answers nothing until the detector
covers every wanted language.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

BASE = ("en", "fr", "de", "es", "it", "pt", "nl")  # recognised even when no model has them
NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch"}
MIN_RELATIVE_DISTANCE = 0.25  # lingua answers None when the two likeliest languages are closer than this
MIN_CONFIDENCE = 0.5

_lock = threading.Lock()
_wanted: frozenset[str] = frozenset(BASE)  # ISO 639-1 codes; only grows (a detector with extra languages is still right)
_ready: tuple[frozenset[str], object] | None = None  # (the languages it covers, the detector)


def _language(code: str):
    """lingua's Language for an ISO 639-1 or 639-3 code (any case), or None (a group such as ROMANCE, `mul`)."""
    from lingua import IsoCode639_1, IsoCode639_3, Language

    code = code.strip().lower()
    for iso, make in ((IsoCode639_1, Language.from_iso_code_639_1), (IsoCode639_3, Language.from_iso_code_639_3)):
        try:
            return make(iso.from_str(code))
        except ValueError:
            pass
    return None


def code(lang: str | None) -> str | None:
    """The ISO 639-1 code `detect` answers with for a model's language code (`deu` -> `de`); None when
    lingua does not know the language, so text in it can never be recognised."""
    language = _language(lang) if lang else None
    return language.iso_code_639_1.name.lower() if language is not None else None


def want(codes: Iterable[str | None]) -> None:
    """Recognise these languages too (the loaded models' pairs); codes lingua does not know are ignored.
    `is_warm()` is False until `warm_up` has run for them."""
    global _wanted
    extra = {c for c in map(code, (c for c in codes if c)) if c}
    with _lock:
        _wanted = _wanted | extra


def warm_up() -> None:
    """Build the detector for the wanted languages with their models loaded (slow; call from a thread)."""
    global _ready
    from lingua import LanguageDetectorBuilder

    wanted = _wanted
    languages = [_language(c) for c in sorted(wanted)]
    detector = (LanguageDetectorBuilder.from_languages(*languages).with_minimum_relative_distance(MIN_RELATIVE_DISTANCE)
                .with_preloaded_language_models().build())
    with _lock:
        if wanted == _wanted:  # else a later warm-up, for more languages, publishes its own
            _ready = (wanted, detector)


def is_warm() -> bool:
    ready = _ready
    return ready is not None and ready[0] == _wanted


def detect(text: str, wait: bool = False) -> str | None:
    """The ISO 639-1 code of `text`'s language, or None when unsure (short or mixed text) — and, unless
    `wait`, None while the detector does not yet cover every wanted language, so a caller on the UI
    thread never blocks on it."""
    if wait and not is_warm():
        warm_up()
    ready = _ready
    if ready is None or (not wait and ready[0] != _wanted):
        return None
    detector = ready[1]
    language = detector.detect_language_of(text)
    if language is None:
        return None
    confidence = detector.compute_language_confidence(text, language)
    if confidence < MIN_CONFIDENCE:
        return None
    return language.iso_code_639_1.name.lower()


def name(lang: str) -> str:
    if lang in NAMES:
        return NAMES[lang]
    language = _language(lang)
    return language.name.title() if language is not None else lang
