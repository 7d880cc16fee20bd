"""The seam between the app and the engine, torch-free: what the app needs from a translator.

`tui_translate.translator.Translator` satisfies it; so do the tests' fakes, which lets the UI be tested
without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from .config import DecodeConfig
from .results import PartialTranslation, Translation


@runtime_checkable
class TranslatorLike(Protocol):
    name: str
    source_lang: str
    target_lang: str
    path: Path
    notice: str | None  # one line worth telling the user about the decoding engine, or None

    def segments(self, text: str) -> list[str]:
        """The sentences `text` is translated as, one exchange each (raises InputTooLong past the cap)."""
        ...

    def stream(self, text: str, config: DecodeConfig = ..., attention: bool = True, prefix: list[int] | None = None,
               cancelled: Callable[[], bool] | None = None, draft: list[int] | str | None = None,
               ) -> Iterator[PartialTranslation | Translation]:
        """Partial translations after each decoding step, then the Translation; raises Cancelled when
        `cancelled()` turns true. `draft`: a guess of the output (ids or text) that may make it faster and
        never changes it."""
        ...
