"""Which language a text is in, with lingua (a language identifier made for short text). Torch-free.

The detector knows only a handful of languages: a few common ones, so that "a language no model
handles" can be recognised instead of being translated into invented output, plus the languages of
the models the app has (`want`, from each model's own language pair: a Hub model's
tokenizer_config.json may say `deu` or `rus`, which are mapped to the codes lingua answers with).
Loading its language models takes seconds and about 200 MB (lingua's high-accuracy mode, the one
that works on a few words; its low-accuracy mode needs a tenth of that but answers "unsure" for short
sentences), and lingua holds the GIL the whole time: in the app's process that froze the screen and the
keyboard for those seconds, just when the model was ready. So the detector lives in a helper process
(`python -m tui_translate.langid CODES...`, one JSON line per question and answer), started by `warm_up`
from a worker thread; `detect` answers nothing until the helper covers every wanted language, and nothing
if it has died.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
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


class _Helper:
    """The detector's process: one question (a JSON string) per line in, one answer (a code or null) per line out."""

    def __init__(self, codes: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([sys.executable, "-m", "tui_translate.langid", *sorted(codes)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
        atexit.register(self.close)
        if self._proc.stdout.readline().strip() != "ready":  # blocks this (worker) thread only: a pipe read releases the GIL
            self.close()
            raise RuntimeError("the language detector's process did not start")

    def ask(self, text: str) -> str | None:
        with self._lock:
            try:
                self._proc.stdin.write(json.dumps(text) + "\n")
                self._proc.stdin.flush()
                return json.loads(self._proc.stdout.readline())
            except (OSError, ValueError):  # the helper died (killed, out of memory): unsure from now on
                return None

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def warm_up() -> None:
    """Start the detector's process for the wanted languages and wait until its models are loaded (seconds;
    call from a thread). A helper that cannot start leaves detection off (`detect` answers None)."""
    global _ready
    wanted = _wanted
    try:
        helper = _Helper(wanted)
    except (OSError, RuntimeError):
        return
    with _lock:
        if wanted == _wanted:  # else a later warm-up, for more languages, publishes its own
            _ready, replaced = (wanted, helper), _ready
        else:
            replaced = (wanted, helper)
    if replaced is not None:
        replaced[1].close()


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
    return ready[1].ask(text)


def _answer(detector, text: str) -> str | None:
    """The helper's side of `detect`."""
    language = detector.detect_language_of(text)
    if language is None or detector.compute_language_confidence(text, language) < MIN_CONFIDENCE:
        return None
    return language.iso_code_639_1.name.lower()


def _serve(codes: list[str]) -> None:
    from lingua import LanguageDetectorBuilder

    languages = [lang for lang in map(_language, codes) if lang is not None]
    detector = (LanguageDetectorBuilder.from_languages(*languages).with_minimum_relative_distance(MIN_RELATIVE_DISTANCE)
                .with_preloaded_language_models().build())
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            answer = _answer(detector, json.loads(line))
        except Exception:  # e.g. a lone surrogate lingua cannot take: unsure, and the helper lives on
            answer = None
        print(json.dumps(answer), flush=True)


def name(lang: str) -> str:
    if lang in NAMES:
        return NAMES[lang]
    language = _language(lang)
    return language.name.title() if language is not None else lang


if __name__ == "__main__":
    _serve(sys.argv[1:])
