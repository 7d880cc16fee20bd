"""The transcript: one view per exchange, the newest at the bottom."""

from __future__ import annotations

import time
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static

from ..requests import Exchange
from .exchange import ExchangeView, TokenStrip

DONE_INTERVAL = 0.1  # seconds: finished sentences of a long request are shown together, at most this often
MAX_VISIBLE_EXCHANGES = 60  # older exchanges leave the screen (they stay in the transcript file and exports)
WELCOME = ("Type French (or the model's source language) below and press Enter.\n"
           "F1 help · F2 strategy · F3 swap direction · click any output token to inspect its attention.")


class Transcript(VerticalScroll, can_focus=False):  # Tab stops are the translations inside
    @dataclass
    class Shown(Message):
        """Finished exchanges are now on screen (in one batch)."""

        exchanges: list[Exchange]

    confidence: reactive[bool] = reactive(False)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.pending: list[Exchange] = []  # finished sentences not yet shown (see finished)
        self._timer: Timer | None = None
        self._last_flush = 0.0
        self._highlighted: Exchange | None = None

    def compose(self) -> ComposeResult:
        yield Static(WELCOME, id="welcome")

    def show(self, exchanges: list[Exchange]) -> None:
        """Add views of `exchanges` at the end, keeping the last MAX_VISIBLE_EXCHANGES on screen.

        Every layout of the screen costs time in proportion to the widgets in the transcript, so older views
        are removed before the new ones are mounted, in one batch: never more than the limit at once, and a
        long paste or a restored transcript mounts only the views that stay."""
        if not exchanges:
            return
        self.query_one("#welcome").display = False
        shown = exchanges[-MAX_VISIBLE_EXCHANGES:]
        views = [v for v in self.query(ExchangeView) if v.display]  # not those already being removed
        excess = len(views) + len(shown) - MAX_VISIBLE_EXCHANGES
        with self.app.batch_update():
            if excess > 0:
                self.remove_children(views[:excess])
            self.mount_all([ExchangeView(ex, id=f"ex-{ex.id}") for ex in shown])
        self.scroll_end(animate=False)

    def view(self, ex: Exchange) -> ExchangeView | None:
        try:
            return self.query_one(f"#ex-{ex.id}", ExchangeView)
        except Exception:
            return None  # scrolled off the screen (or not mounted yet)

    def refresh_exchange(self, ex: Exchange) -> None:
        view = self.view(ex)
        if view is not None:
            view.refresh_exchange()
            for strip in view.strips():
                strip.confidence = self.confidence

    def update_partial(self, ex: Exchange, text: str, step: int) -> None:
        view = self.view(ex)
        if view is not None:
            view.update_partial(text, step)

    def mark_selected(self, exchange_id: int, hypothesis: int, token: int) -> None:
        for strip in self.query(TokenStrip):
            mine = strip.exchange_id == exchange_id and strip.index == hypothesis
            strip.selected = token if mine else -1

    def highlight_source(self, ex: Exchange | None, weights) -> None:
        """Shade `ex`'s source line by `weights`; the previously shaded line is cleared."""
        if self._highlighted is not None and self._highlighted is not ex and (old := self.view(self._highlighted)):
            old.highlight_source(None)
        self._highlighted = ex
        if ex is not None and (view := self.view(ex)) is not None:
            view.highlight_source(weights)

    def watch_confidence(self, value: bool) -> None:
        for strip in self.query(TokenStrip):
            strip.confidence = value

    def last_translation(self) -> TokenStrip | None:
        """The best hypothesis of the last translated exchange on screen."""
        strips = list(self.query(TokenStrip))
        if not strips:
            return None
        last = strips[-1].exchange_id
        return next(s for s in strips if s.exchange_id == last and s.index == 0)

    # -- finished sentences --------------------------------------------------------------------------------
    def finished(self, ex: Exchange, request_done: bool) -> None:
        """Showing a finished sentence re-lays out the whole transcript, and a long paste finishes a sentence
        every few tens of ms, which kept the UI thread in layouts and keystrokes waiting behind them. So
        finished sentences are shown together, at most every DONE_INTERVAL, and at once when the request ends."""
        self.pending.append(ex)
        since = time.monotonic() - self._last_flush
        if since >= DONE_INTERVAL or request_done:
            self.flush()
        elif self._timer is None:
            self._timer = self.set_timer(DONE_INTERVAL - since, self.flush)

    @property
    def flush_scheduled(self) -> bool:
        """Finished sentences wait for a timer to be shown."""
        return self._timer is not None

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        pending, self.pending = self.pending, []
        if not pending:
            return
        self._last_flush = time.monotonic()
        for ex in pending:
            self.refresh_exchange(ex)
        self.scroll_end(animate=False)
        self.post_message(self.Shown(pending))
