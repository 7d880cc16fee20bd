"""Live mode's preview line: the translation of the prompt's text, redone whenever typing pauses."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from ...config import DecodeConfig
from ...protocols import TranslatorLike
from ...results import Cancelled, PartialTranslation


class LivePreview(Static):
    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self.request_id = 0  # results of an older text are dropped

    def translate(self, translator: TranslatorLike, text: str, config: DecodeConfig) -> None:
        self.request_id += 1
        self._decode(self.request_id, translator, text, config)

    def cancel(self) -> None:
        self.request_id += 1
        self.workers.cancel_group(self, "live")
        self.update("")

    @work(thread=True, exclusive=True, group="live")
    def _decode(self, request_id: int, translator: TranslatorLike, text: str, config: DecodeConfig) -> None:
        worker = get_current_worker()
        try:
            for event in translator.stream(text, config, attention=False, cancelled=lambda: worker.is_cancelled):
                if worker.is_cancelled:
                    return
                self.app.call_from_thread(self._show, request_id, event.text, isinstance(event, PartialTranslation))
        except Cancelled:
            return
        except Exception as e:  # noqa: BLE001 - shown in the preview, never a crash
            self.app.call_from_thread(self._show, request_id, f"(live translation failed: {e})", False)

    def _show(self, request_id: int, text: str, partial: bool) -> None:
        if request_id == self.request_id and self.display:
            self.update(Text.assemble(("live › ", "dim"), text, " …" if partial else ""))
