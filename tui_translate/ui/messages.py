"""Messages posted from workers to the app. Each carries the request id it answers, so a
result from a cancelled or superseded request is recognised and dropped."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from ..protocols import TranslatorLike
from ..results import PartialTranslation, Translation


@dataclass
class ModelLoaded(Message):
    translator: TranslatorLike
    seconds: float


@dataclass
class ModelDownload(Message):
    """A Hub model is being downloaded by the loading worker: bytes so far and in all."""

    done: int
    total: int


@dataclass
class ModelFailed(Message):
    path: str
    error: str


@dataclass
class TranslationProgress(Message):
    request_id: int
    partial: PartialTranslation
    index: int = 0  # which sentence of a split input


@dataclass
class TranslationDone(Message):
    request_id: int
    translation: Translation
    index: int = 0


@dataclass
class TranslationFailed(Message):
    request_id: int
    error: str
    index: int = 0


@dataclass
class TokenSelected(Message):
    exchange_id: int
    hypothesis: int
    token: int


@dataclass
class CellFocused(Message):
    row: int
    col: int
