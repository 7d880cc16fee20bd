"""The prompt: Enter submits, Up/Down recall earlier inputs, and in live mode the text is offered for
translation once typing pauses."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import Reactive, reactive
from textual.timer import Timer
from textual.widgets import Input

LIVE_DEBOUNCE_S = 0.35
MAX_INPUT_CHARS = 5000  # longer input is refused with a notice, never cut


class Prompt(Input):
    BINDINGS = [Binding("up", "history(-1)", show=False), Binding("down", "history(1)", show=False)]

    @dataclass
    class LiveText(Message):
        """Live mode: typing paused on this text (empty when the prompt was cleared)."""

        text: str

    live: reactive[bool] = reactive(False)

    # Textual's Input sets its virtual size to the text's width on every keystroke, and a change of virtual
    # size asks for a layout of the whole screen, which with a full transcript delayed every key typed
    # while a long paste decodes. The prompt scrolls its text itself (scroll_x, clamped by this size) and
    # shows no scroll bars, so a repaint is enough.
    virtual_size = Reactive(Size(0, 0), layout=False)

    def __init__(self, **kw) -> None:
        # Returning to the prompt (Esc) must keep the draft: Input selects everything on focus by default,
        # and the next key typed replaced it.
        super().__init__(select_on_focus=False, **kw)
        self.history: list[str] = []
        self._pos = 0
        self._draft = ""
        self._live_timer: Timer | None = None

    def remember(self, text: str) -> bool:
        """Add `text` to the history unless it repeats the last entry; True when added."""
        added = bool(text) and (not self.history or self.history[-1] != text)
        if added:
            self.history.append(text)
        self._pos = len(self.history)
        return added

    def action_history(self, delta: int) -> None:
        if not self.history:
            return
        if self._pos == len(self.history):
            self._draft = self.value
        self._pos = max(0, min(len(self.history), self._pos + delta))
        self.value = self._draft if self._pos == len(self.history) else self.history[self._pos]
        self.cursor_position = len(self.value)

    def on_paste(self, event: events.Paste) -> None:
        """A multi-line paste is kept whole (Input keeps the first line only): lines are joined with spaces
        and the sentence splitter makes one exchange per sentence. Handlers run subclass first, so
        preventing the default here keeps Input's own paste handler from running."""
        text = " ".join(line.strip() for line in event.text.splitlines() if line.strip())
        if text:
            if self.selection.is_empty:
                self.insert_text_at_cursor(text)
            else:
                self.replace(text, *self.selection)
        event.stop()
        event.prevent_default()  # Input's own handler would paste the first line again

    def take_character(self, character: str) -> None:
        """A printable key typed elsewhere on the screen: focus the prompt and type it here."""
        self.focus()
        self.insert_text_at_cursor(character)

    # -- live mode -----------------------------------------------------------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        if self.live:
            self._schedule_live()

    def watch_live(self, live: bool) -> None:
        self.cancel_live()
        if live:
            self._schedule_live()

    def _schedule_live(self) -> None:
        if self._live_timer is not None:
            self._live_timer.stop()
        self._live_timer = self.set_timer(LIVE_DEBOUNCE_S, lambda: self.post_message(self.LiveText(self.value)))

    def cancel_live(self) -> None:
        if self._live_timer is not None:
            self._live_timer.stop()
            self._live_timer = None
