"""Which language a text is in, with lingua (a language identifier made for short text). Torch-free.

The detector knows only a handful of languages: the ones the shipped models translate, plus a few
common others so that "a language no model handles" can be recognised instead of being translated
into invented output. It is built on first use; its language models load on the first detection
(seconds, and about 200 MB of memory: lingua's high-accuracy mode, the one that works on a few words;
its low-accuracy mode needs a tenth of that but answers "unsure" for short sentences), so the app warms
it in a worker thread and checks nothing until it is ready.
"""

from __future__ import annotations

import threading

# ISO 639-1 code -> lingua Language name
LANGUAGES = {"en": "ENGLISH", "fr": "FRENCH", "de": "GERMAN", "es": "SPANISH", "it": "ITALIAN", "pt": "PORTUGUESE",
             "nl": "DUTCH"}
NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch"}
MIN_RELATIVE_DISTANCE = 0.25  # lingua answers None when the two likeliest languages are closer than this
MIN_CONFIDENCE = 0.5

_lock = threading.Lock()
_detector = None
_warm = False


def _build():
    global _detector
    with _lock:
        if _detector is None:
            from lingua import Language, LanguageDetectorBuilder

            languages = [getattr(Language, name) for name in LANGUAGES.values()]
            _detector = LanguageDetectorBuilder.from_languages(*languages).with_minimum_relative_distance(MIN_RELATIVE_DISTANCE).build()
        return _detector


def warm_up() -> None:
    """Build the detector and load its language models (slow the first time; call from a thread)."""
    global _warm
    detect("Ceci est une phrase. This is a sentence.", wait=True)
    _warm = True


def is_warm() -> bool:
    return _warm


def detect(text: str, wait: bool = False) -> str | None:
    """The ISO 639-1 code of `text`'s language, or None when unsure (short or mixed text) — and, unless
    `wait`, None while the detector is still loading, so a caller on the UI thread never blocks on it."""
    if not wait and not _warm:
        return None
    detector = _build()
    language = detector.detect_language_of(text)
    if language is None:
        return None
    confidence = detector.compute_language_confidence(text, language)
    if confidence < MIN_CONFIDENCE:
        return None
    return language.iso_code_639_1.name.lower()


def name(code: str) -> str:
    return NAMES.get(code, code)
