"""A sentence splitter for French and English (torch-free).

A boundary is sentence-final punctuation (. ! ? … possibly repeated, possibly
preceded by the French space), optionally followed by closing quotes or
brackets, then whitespace, then something that can start a sentence (after a full stop:
an upper-case letter or a digit, possibly behind an opening quote, bracket,
¿ ¡ or a dash, or lower case when the sentence before it started in lower case
too (text typed without capitals); after ! ? … lower case too, as people type it).
It is not a boundary after a known abbreviation (M. Mme Dr. etc. e.g. …),
after a single capital letter (initials: J. K. Rowling), or inside numbers
(3.14, 1.000.000 have no space after the point).
"""

from __future__ import annotations

import re

ABBREVIATIONS = {
    # French
    "m", "mm", "mme", "mmes", "mlle", "mlles", "dr", "pr", "me", "st", "ste", "cf", "etc", "env", "av", "apr", "j.-c",
    "vol", "chap", "p", "pp", "n°", "no", "tél", "ex", "fig", "éd", "hab", "min", "max", "bd", "c.-à-d",
    # English
    "mr", "mrs", "ms", "messrs", "jr", "sr", "prof", "gen", "gov", "sen", "rep", "rev", "vs", "e.g", "i.e", "u.s", "u.k",
    "a.m", "p.m", "approx", "dept", "est", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "mt", "ft", "no", "nos", "op", "vol", "ed", "eds",
}

_BOUNDARY = re.compile(
    r"""(?P<end>[ \u00a0\u202f]?(?:[.!?…]+|\.\.\.))   # final punctuation (French may put a space before ! ?)
        (?P<close>(?:[ \u00a0\u202f]?[»"”’')\]])*)        # closing quotes / brackets
        (?P<space>\s+)                                   # whitespace
        (?=[«"“‘'(\[¿¡\-–—]?\s?\w)                       # the next sentence's start
    """,
    re.VERBOSE,
)
_LAST_WORD = re.compile(r"([\w.\-°]+)$", re.UNICODE)


def _is_abbreviation(text_before: str) -> bool:
    m = _LAST_WORD.search(text_before)
    if not m:
        return False
    word = m.group(1).rstrip(".").lower()
    if word in ABBREVIATIONS:
        return True
    return len(word) == 1 and word.isalpha() and m.group(1)[0].isupper()  # an initial: "J. K. Rowling"


def _starts_lower(piece: str) -> bool:
    """The piece's first letter is lower case (its writer does not capitalise sentences)."""
    first = next((c for c in piece if c.isalpha()), "")
    return first.islower()


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences; whitespace between them is dropped, nothing else is lost."""
    pieces: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end_punct = m.group("end")
        if end_punct.strip() == ".":
            nxt = text[m.end("space") :].lstrip("«\"“‘'([¿¡-–— ")
            before = text[start : m.start("end")]
            if _is_abbreviation(before):
                continue  # "M. Dupont", "e.g. this"
            # In capitalised text a point before lower case does not end a sentence ("5 km. and more");
            # someone who types all in lower case ("je suis étudiant. il pleut.") does mean two sentences,
            # and one merged segment loses the second in translation.
            if nxt[:1].islower() and not _starts_lower(before):
                continue
        stop = m.end("close")
        piece = text[start:stop].strip()
        if piece:
            pieces.append(piece)
        start = m.end("space")
    rest = text[start:].strip()
    if rest:
        pieces.append(rest)
    return pieces
