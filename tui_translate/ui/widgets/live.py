"""Live mode's preview line: the translation of the prompt's text, redone whenever typing pauses.

Each request hands the translator the preview's previous translation as a draft: a keystroke changes
the end of the text, so most of the translation usually stays, and the decoder verifies it in one pass
instead of one step per token (the result is the same as without the draft)."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from ...config import DecodeConfig
from ...protocols import TranslatorLike
from ...results import Cancelled, PartialTranslation, Translation


class LivePreview(Static):
    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self.request_id = 0  # results of an older text are dropped
        # the last translation shown (its token ids when finished, else its text) and the translator that made it
        self.draft: tuple[TranslatorLike, list[int] | str] | None = None

    def translate(self, translator: TranslatorLike, text: str, config: DecodeConfig) -> None:
        self.request_id += 1
        draft = self.draft[1] if self.draft is not None and self.draft[0] is translator else None
        self._decode(self.request_id, translator, text, config, draft)

    def cancel(self) -> None:
        self.request_id += 1
        self.workers.cancel_group(self, "live")
        self.update("")

    @work(thread=True, exclusive=True, group="live")
    def _decode(self, request_id: int, translator: TranslatorLike, text: str, config: DecodeConfig,
                draft: list[int] | str | None) -> None:
        worker = get_current_worker()
        try:
            for event in translator.stream(text, config, attention=False, cancelled=lambda: worker.is_cancelled, draft=draft):
                if worker.is_cancelled:
                    return
                self.app.call_from_thread(self._show, request_id, translator, event)
        except Cancelled:
            return
        except Exception as e:  # noqa: BLE001 - shown in the preview, never a crash
            self.app.call_from_thread(self._fail, request_id, f"(live translation failed: {e})")

    def _show(self, request_id: int, translator: TranslatorLike, event: PartialTranslation | Translation) -> None:
        if request_id != self.request_id:
            return
        partial = isinstance(event, PartialTranslation)
        if event.text:
            self.draft = (translator, event.text if partial else event.best.token_ids)
        if self.display:
            self.update(Text.assemble(("live › ", "dim"), event.text, " …" if partial else ""))

    def _fail(self, request_id: int, message: str) -> None:
        if request_id == self.request_id and self.display:
            self.update(Text.assemble(("live › ", "dim"), message))
