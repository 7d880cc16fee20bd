"""Checks of translation output that BLEU does not show: numbers carried over and stuttering.

* `numbers_kept`: of the sources that contain digits, the share whose every digit run ("25", "1972",
  the "2" and "50" of "2,50") appears in the output. Digits are compared as runs, so "1 000" and "1000"
  differ; a translation that rewrites "3" as "three" counts as a miss.
* `repetition_rate`: the share of outputs in which the same word appears three or more times in a row,
  the usual symptom of a model that has lost its place ("orange orange orange").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"\w+")


def digit_runs(text: str) -> list[str]:
    return _DIGITS.findall(text)


def keeps_numbers(source: str, output: str) -> bool:
    """Every digit run of the source occurs in the output (as often as in the source)."""
    out = digit_runs(output)
    for run in digit_runs(source):
        if run in out:
            out.remove(run)
        else:
            return False
    return True


def numbers_kept(sources: Sequence[str], outputs: Sequence[str]) -> tuple[float, int]:
    """(share of number-bearing sources whose numbers all survive, how many sources had digits)."""
    judged = [(s, o) for s, o in zip(sources, outputs) if digit_runs(s)]
    if not judged:
        return 1.0, 0
    return sum(keeps_numbers(s, o) for s, o in judged) / len(judged), len(judged)


def has_repetition(text: str, times: int = 3) -> bool:
    """The same word `times` or more times in a row (case-insensitive)."""
    words = [w.lower() for w in _WORD.findall(text)]
    run = 1
    for a, b in zip(words, words[1:]):
        run = run + 1 if a == b else 1
        if run >= times:
            return True
    return False


def repetition_rate(outputs: Sequence[str]) -> float:
    return sum(map(has_repetition, outputs)) / len(outputs) if outputs else 0.0
