"""The chat-style translator app.

The app receives a `loader(path) -> translator` callable; the translator is any object with
the `Translator` interface (name, source_lang, target_lang, config.n_heads, stream(...)), so
tests inject a fake and this package never imports torch.

Threads: the model loads in a thread worker; every translation runs in an exclusive thread
worker that checks for cancellation between decoding steps and talks to the UI only through
`post_message`. Each request has an id; results of superseded requests are dropped.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.reactive import Reactive, reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Header, Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from ..config import DecodeConfig
from ..results import Cancelled, PartialTranslation, Translation, display_piece
from .exporting import export_attention, export_transcript
from .messages import CellFocused, ModelFailed, ModelLoaded, TokenSelected, TranslationDone, TranslationFailed, TranslationProgress
from .screens.decode import DecodeScreen
from .screens.help import HelpScreen
from .store import Store
from .widgets.exchange import Exchange, ExchangeView, TokenStrip
from .widgets.inspector import AGGREGATES, MATRIX_KINDS, AttentionGrid, MatrixView

WIDE_COLUMNS = 120
LIVE_DEBOUNCE_S = 0.35
MAX_INPUT_CHARS = 5000
DONE_INTERVAL = 0.1  # seconds: finished sentences of a long request are shown together, at most this often
PROGRESS_INTERVAL = 1 / 30  # seconds between redraws of a growing translation
GC_EVERY_SENTENCES = 50  # see TranslateApp._keep_gc_pauses_short
GC_IDLE_SECONDS = 3.0
NO_MODEL_HINT = "Press F3 for the next model, or ctrl+p and 'Use model'."
MAX_VISIBLE_EXCHANGES = 60  # older exchanges leave the screen (they stay in the transcript file and exports)


class HistoryInput(Input):
    """The prompt: Enter submits, Up/Down recall earlier inputs."""

    BINDINGS = [Binding("up", "history(-1)", show=False), Binding("down", "history(1)", show=False)]

    # Textual's Input sets its virtual size to the text's width on every keystroke, and a change of virtual
    # size asks for a layout of the whole screen: 25-30 ms with 60 exchanges in the transcript, for every
    # key typed while a long paste decodes. The prompt scrolls its text itself (scroll_x, clamped by this
    # size) and shows no scroll bars, so a repaint is enough: one layout instead of 80 for 80 keys.
    virtual_size = Reactive(Size(0, 0), layout=False)

    def __init__(self, **kw) -> None:
        # Returning to the prompt (Esc) must keep the draft: Input selects everything on focus by default,
        # and the next key typed replaced it.
        super().__init__(select_on_focus=False, **kw)
        self.history: list[str] = []
        self._pos = 0
        self._draft = ""

    def remember(self, text: str) -> bool:
        """Add `text` to the history unless it repeats the last entry; True when added."""
        added = bool(text) and (not self.history or self.history[-1] != text)
        if added:
            self.history.append(text)
        self._pos = len(self.history)
        return added

    def _on_paste(self, event: events.Paste) -> None:
        """A multi-line paste is kept whole (Input keeps the first line only): lines are joined with spaces
        and the sentence splitter makes one exchange per sentence."""
        text = " ".join(line.strip() for line in event.text.splitlines() if line.strip())
        if text:
            if self.selection.is_empty:
                self.insert_text_at_cursor(text)
            else:
                self.replace(text, *self.selection)
        event.stop()
        event.prevent_default()  # Input's own handler would paste the first line again

    def action_history(self, delta: int) -> None:
        if not self.history:
            return
        if self._pos == len(self.history):
            self._draft = self.value
        self._pos = max(0, min(len(self.history), self._pos + delta))
        self.value = self._draft if self._pos == len(self.history) else self.history[self._pos]
        self.cursor_position = len(self.value)


class MainScreen(Screen):
    """The app's screen. Printable keys typed while a translation, the grid or the alternatives have focus
    (or nothing has) go to the prompt: only the prompt takes text, and they were lost or, for `?`, opened
    the help."""

    def on_key(self, event: events.Key) -> None:
        if not event.is_printable or event.character is None or isinstance(self.focused, Input):
            return
        prompt = self.query_one("#prompt", HistoryInput)
        event.stop()
        event.prevent_default()
        prompt.focus()
        prompt.insert_text_at_cursor(event.character)


class TranslateApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tui-translate"

    BINDINGS = [
        Binding("f1", "help", "help"),
        Binding("f2", "strategy", "strategy"),
        Binding("f3", "swap_model", "swap"),
        Binding("f4", "toggle_matrix", "matrix"),
        Binding("f5", "rerun", "re-run"),
        Binding("f6", "toggle_live", "live"),
        Binding("f7", "toggle_confidence", "confidence", show=False),
        Binding("f8", "toggle_aggregate", "mean/max", show=False),
        Binding("f9", "cycle_matrix_kind", "matrix kind", show=False),
        Binding("ctrl+y", "copy", "copy", show=False),
        Binding("ctrl+s", "export_transcript", "export", show=False),
        Binding("ctrl+o", "export_attention", "export attention", show=False),
        Binding("escape", "leave_input", show=False),
    ]

    confidence: reactive[bool] = reactive(False)
    live: reactive[bool] = reactive(False)
    show_matrix: reactive[bool] = reactive(False)
    decode_config: reactive[DecodeConfig] = reactive(DecodeConfig, init=False)

    def __init__(
        self,
        loader: Callable[[Path], Any],
        model_path: Path,
        models: Iterable[Path] = (),
        store: Store | None = None,
        export_dir: Path | None = None,
        decode_config: DecodeConfig | None = None,
    ) -> None:
        super().__init__()
        self.loader = loader
        self.model_path = Path(model_path)
        self.models = [Path(m) for m in models] or [self.model_path]
        if self.model_path not in self.models:
            self.models.insert(0, self.model_path)
        self.store = store or Store(None)
        self.export_dir = export_dir or Path.cwd()
        self.translator: Any = None
        self.loading = False
        self._store_failed = False  # a write to the data directory failed and the user was told
        self.load_error = ""  # why the last model failed to load, shown when a request finds no model
        self.exchanges: list[Exchange] = []
        self.request_id = 0
        self.live_request_id = 0
        self.running: list[Exchange] = []  # the exchanges of the current request
        self.pending: tuple | None = None
        self.selection: tuple[int, int, int] | None = None  # (exchange id, hypothesis, token)
        self.last_input = ""
        self._live_timer: Timer | None = None
        # Progress is coalesced: the decoding thread keeps only the newest partial result and posts a
        # message only when the previous one has been shown and at most PROGRESS_INTERVAL apart.
        # Decoding steps come every few milliseconds; redrawing the screen for each one kept the
        # UI thread busy, queued keystrokes behind a backlog and, holding the GIL, slowed the
        # decoder itself about tenfold in a real terminal.
        self._latest_progress: TranslationProgress | None = None
        self._progress_posted = False
        self._sentences_since_collect = 0
        self._done_pending: list[Exchange] = []  # finished sentences not yet shown (see on_translation_done)
        self._done_timer: Timer | None = None
        self._last_done_flush = 0.0
        self.set_reactive(TranslateApp.decode_config, decode_config or DecodeConfig())

    def notify(self, message: str, *, markup: bool = False, **kw) -> None:
        """Notifications carry model names, paths, errors and translations: shown as plain text, never
        parsed as markup (a model called `[/]` crashed the app)."""
        super().notify(message, markup=markup, **kw)

    # -- layout ---------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        # Widgets are looked up on this screen, not on `self.screen`, which is a dialog while one is open
        # (a live-mode timer firing under the strategy panel found no prompt).
        self.main_screen = MainScreen(id="_default")
        return self.main_screen

    def compose(self) -> ComposeResult:
        yield Header()
        with Container(id="main"):
            with VerticalScroll(id="transcript"):
                yield Static("Type French (or the model's source language) below and press Enter.\n"
                             "F1 help · F2 strategy · F3 swap direction · click any output token to inspect its attention.",
                             id="welcome")
            with Vertical(id="inspector"):
                yield Static("Attention inspector", id="inspector-title")
                with Horizontal(id="inspector-body"):
                    with ContentSwitcher(initial="grid-scroll", id="views"):
                        with VerticalScroll(id="grid-scroll"):
                            yield AttentionGrid(id="grid")
                        with VerticalScroll(id="matrix-scroll"):
                            yield MatrixView(id="matrix")
                    yield OptionList(id="alternatives")
        yield Static("", id="live-preview")
        yield HistoryInput(id="prompt", placeholder="Type a sentence and press Enter  (F1 help)")
        yield Footer()

    def on_mount(self) -> None:
        self.main_screen.query_one("#alternatives", OptionList).border_title = "alternatives"
        prompt = self.main_screen.query_one("#prompt", HistoryInput)
        for item in self.store.load_history():
            prompt.remember(item)
        for rec in self.store.load_transcript():
            meta = {k: rec[k] for k in ("elapsed_s", "score", "nbest") if k in rec}
            ex = Exchange(self._next_exchange_id(), str(rec["source"]), str(rec.get("strategy", "")), str(rec.get("model", "")),
                          status="restored", restored_text=str(rec.get("translation", "")), restored_meta=meta)
            self.exchanges.append(ex)
        if self.exchanges:
            self.main_screen.query_one("#welcome").display = False
            self._show_exchanges(self.exchanges)
        prompt.focus()
        self._update_subtitle()
        self.on_resize()
        self.use_model(self.model_path)

    def on_resize(self, event: events.Resize | None = None) -> None:
        # The event's size: the app's own size is still the previous one while this handler runs.
        width = event.size.width if event is not None else self.size.width
        self.screen.set_class(width >= WIDE_COLUMNS, "wide")
        # A new width re-wraps the transcript; keep its newest exchange in view once that layout is done.
        transcript = self.main_screen.query_one("#transcript", VerticalScroll)
        self.call_after_refresh(transcript.scroll_end, animate=False)

    def _update_subtitle(self) -> None:
        strategy = self.decode_config.describe()
        if self.translator is None:
            model = f"loading {self.model_path.name}…" if self.loading else "no model"
        else:
            model = f"{self.translator.name} ({self.translator.source_lang}→{self.translator.target_lang})"
        flags = " · live" if self.live else ""
        self.sub_title = f"{model} · {strategy}{flags}"

    def watch_decode_config(self) -> None:
        self._update_subtitle()

    # -- model loading ----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def load_model(self, path: Path) -> None:
        start = time.perf_counter()
        try:
            translator = self.loader(path)
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification
            self.post_message(ModelFailed(str(path), str(e).splitlines()[0] if str(e) else type(e).__name__))
            return
        if get_current_worker().is_cancelled:
            return  # another model was chosen while this one loaded
        self.post_message(ModelLoaded(translator, time.perf_counter() - start))

    def _drop_pending(self, status: str, error: str) -> None:
        pending, self.pending = self.pending, None
        for ex in pending[0] if pending else ():
            ex.status, ex.error = status, error
            self._refresh_view(ex)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.translator = message.translator
        gc.freeze()  # libraries, model, widgets: see _keep_gc_pauses_short
        self.loading = False
        self.model_path = Path(getattr(self.translator, "path", self.model_path))
        self._update_subtitle()
        self.notify(f"Model {self.translator.name} ready ({message.seconds:.1f} s)", timeout=3)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._start_request(*pending)

    def on_model_failed(self, message: ModelFailed) -> None:
        self.loading = False
        self.load_error = f"could not load {Path(message.path).name}: {message.error}"
        self._update_subtitle()
        self.notify(f"Could not load the model: {message.error}", severity="error", timeout=10, markup=False)
        if self.pending is not None:  # requests that waited for this model will not get it
            self._drop_pending("failed", f"{self.load_error}. {NO_MODEL_HINT}")

    # -- translating ------------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    def on_prompt_submitted(self, event: Input.Submitted) -> None:
        text = event.value
        if not text.strip():
            self.notify("Type a sentence to translate (empty input is not translated).", severity="warning", timeout=3)
            return
        if self._no_model():
            return  # the input stays in the prompt
        if len(text) > MAX_INPUT_CHARS:
            self.notify(f"Input is {len(text):,} characters; the limit is {MAX_INPUT_CHARS:,}. Nothing was translated.",
                        severity="error", timeout=6)
            return
        prompt = self.main_screen.query_one("#prompt", HistoryInput)
        if prompt.remember(text):
            self._persist(self.store.add_history, text)
        prompt.value = ""
        self._cancel_live()
        self.translate(text)

    def translate(self, text: str, config: DecodeConfig | None = None, prefix: list[int] | None = None, note: str = "",
                  compare: dict[str, tuple[str, str]] | None = None) -> list[Exchange]:
        """Add exchanges for `text` (one per sentence) and start decoding them in order; queued until the
        model is loaded. compare: source -> (label, text) of an earlier result, shown beneath the new one."""
        config = config or self.decode_config
        if self._no_model():
            return []
        if config.strategy == "sample" and config.seed is None:
            # no seed chosen: a fresh one per run, written in the label so the sample can be reproduced
            config = config.with_(seed=random.randrange(2**31))
        self.last_input = text
        segments = [text]
        if self.translator is not None and prefix is None and hasattr(self.translator, "segments"):
            try:
                segments = self.translator.segments(text)
            except ValueError as e:
                self.notify(str(e), severity="error", timeout=8)
                return []
        self._flush_done()  # the previous request's finished sentences are shown before it is superseded
        for ex in self.running:
            if ex.status == "running":
                ex.status = "cancelled"
                self._refresh_view(ex)
        model = self.translator.name if self.translator is not None else self.model_path.name
        exchanges = []
        for i, segment in enumerate(segments):
            label = config.describe() + (f" · {note}" if note else "") + (f" · sentence {i + 1}/{len(segments)}" if len(segments) > 1 else "")
            exchanges.append(Exchange(self._next_exchange_id(exchanges), segment, label, model,
                                      compare=(compare or {}).get(segment)))
        self.exchanges.extend(exchanges)
        self.main_screen.query_one("#welcome").display = False
        self._show_exchanges(exchanges)
        self.running = exchanges
        if self.translator is None:
            for ex in exchanges:
                ex.partial = "waiting for the model to load…"
            self.pending = (exchanges, config, prefix)
        else:
            self._start_request(exchanges, config, prefix)
        return exchanges

    def _no_model(self) -> bool:
        """True, after saying so, when no model is loaded and none is loading: a request would wait forever."""
        if self.translator is not None or self.loading:
            return False
        self.notify(f"No model is loaded ({self.load_error or 'none chosen'}). {NO_MODEL_HINT}",
                    severity="error", timeout=8, markup=False)
        return True

    def _show_exchanges(self, exchanges: list[Exchange]) -> None:
        """Add views of `exchanges` at the end of the transcript, keeping the last MAX_VISIBLE_EXCHANGES on screen.

        Every layout of the screen costs time in proportion to the widgets in the transcript (about 25 ms for
        60 exchanges on the 2-core VM), so older views are removed before the new ones are mounted, in one
        batch: never more than the limit at once (mounting first made 120 for a moment, 70 ms layouts), and
        a long paste or a restored transcript mounts only the views that stay."""
        transcript = self.main_screen.query_one("#transcript", VerticalScroll)
        shown = exchanges[-MAX_VISIBLE_EXCHANGES:]
        views = [v for v in transcript.query(ExchangeView) if v.display]  # not those already being removed
        excess = len(views) + len(shown) - MAX_VISIBLE_EXCHANGES
        with self.batch_update():
            if excess > 0:
                transcript.remove_children(views[:excess])
            transcript.mount_all([ExchangeView(ex, id=f"ex-{ex.id}") for ex in shown])
        transcript.scroll_end(animate=False)

    def _start_request(self, exchanges: list[Exchange], config: DecodeConfig, prefix: list[int] | None) -> None:
        self.request_id += 1
        self.running = exchanges
        for ex in exchanges:
            ex.model = self.translator.name
        self.decode(self.request_id, self.translator, [ex.source for ex in exchanges], config, prefix)

    @work(thread=True, exclusive=True, group="decode")
    def decode(self, request_id: int, translator, texts: list[str], config: DecodeConfig, prefix: list[int] | None) -> None:
        worker = get_current_worker()
        last_post = 0.0
        for index, text in enumerate(texts):
            try:
                for event in translator.stream(text, config, attention=True, prefix=prefix, cancelled=lambda: worker.is_cancelled):
                    if worker.is_cancelled:
                        return
                    if isinstance(event, Translation):
                        self.post_message(TranslationDone(request_id, event, index))
                    else:
                        self._latest_progress = TranslationProgress(request_id, event, index)
                        now = time.monotonic()
                        if not self._progress_posted and now - last_post >= PROGRESS_INTERVAL:
                            self._progress_posted = True
                            last_post = now
                            self.post_message(self._latest_progress)
            except Cancelled:
                return
            except Exception as e:  # noqa: BLE001 - errors become notifications, never crashes
                self.post_message(TranslationFailed(request_id, str(e).splitlines()[0] if str(e) else type(e).__name__, index))

    def _exchange_for(self, request_id: int, index: int) -> Exchange | None:
        if request_id != self.request_id or index >= len(self.running):
            return None  # superseded: a newer request owns the screen
        return self.running[index]

    def _view(self, ex: Exchange) -> ExchangeView | None:
        try:
            return self.main_screen.query_one(f"#ex-{ex.id}", ExchangeView)
        except Exception:
            return None

    def _refresh_view(self, ex: Exchange) -> None:
        view = self._view(ex)
        if view is not None:
            view.refresh_exchange()
            for strip in view.strips():
                strip.confidence = self.confidence

    def on_translation_progress(self, message: TranslationProgress) -> None:
        self._progress_posted = False
        message = self._latest_progress or message  # the newest step, which may be past the posted one
        ex = self._exchange_for(message.request_id, message.index)
        if ex is None:
            return
        view = self._view(ex)
        if view is not None:
            view.update_partial(message.partial.text, message.partial.step)

    def on_translation_done(self, message: TranslationDone) -> None:
        ex = self._exchange_for(message.request_id, message.index)
        if ex is None:
            return
        ex.translation = message.translation
        ex.status = "done"
        # Showing a finished sentence re-lays out the whole transcript (about 15 ms with 60 exchanges on the
        # 2-core VM, 30 ms while the decoder competes for the interpreter); a long paste finishes a sentence
        # every few tens of ms, which kept the UI thread in layouts and keystrokes waiting behind them. So
        # finished sentences are shown together, at most every DONE_INTERVAL, and at once when the request ends.
        self._done_pending.append(ex)
        since = time.monotonic() - self._last_done_flush
        if since >= DONE_INTERVAL or all(e.status != "running" for e in self.running):
            self._flush_done()
        elif self._done_timer is None:
            self._done_timer = self.set_timer(DONE_INTERVAL - since, self._flush_done)

    def _flush_done(self) -> None:
        if self._done_timer is not None:
            self._done_timer.stop()
            self._done_timer = None
        pending, self._done_pending = self._done_pending, []
        if not pending:
            return
        self._last_done_flush = time.monotonic()
        for ex in pending:
            self._refresh_view(ex)
        self.main_screen.query_one("#transcript", VerticalScroll).scroll_end(animate=False)
        self._persist(self.store.add_transcript, [e.to_record() for e in pending if e.status == "done"])
        self._keep_gc_pauses_short(len(pending), request_finished=all(e.status != "running" for e in self.running))
        for ex in pending:
            # The inspector follows the first finished sentence of a request; later sentences of a
            # long paste do not yank it away (and do not re-render it each time).
            selected_here = self.selection is not None and any(e.id == self.selection[0] for e in self.running)
            t = ex.translation
            if t is not None and t.hypotheses and t.best.pieces and not selected_here:
                self.select_token(ex.id, 0, 0)

    def _keep_gc_pauses_short(self, finished: int, request_finished: bool) -> None:
        """Python's full garbage collections traverse every live object; with the libraries, the
        model and a growing transcript that was 150-300 ms of frozen UI every second or two while
        translations streamed in (measured with `tui-translate bench`). Objects that survived until a
        sentence finished are moved out of the collector's view (gc.freeze), so collections only
        look at what is new. After 50 sentences, once nothing has been decoding for a few seconds,
        one real collection frees whatever became garbage meanwhile. finished: sentences just shown."""
        self._sentences_since_collect += finished
        gc.freeze()
        if request_finished and self._sentences_since_collect >= GC_EVERY_SENTENCES:
            self.set_timer(GC_IDLE_SECONDS, self._collect_when_idle)

    def _collect_when_idle(self) -> None:
        if self._sentences_since_collect < GC_EVERY_SENTENCES or any(e.status == "running" for e in self.running):
            return  # already done, or busy again: the next finished request schedules another try
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._sentences_since_collect = 0

    def on_translation_failed(self, message: TranslationFailed) -> None:
        ex = self._exchange_for(message.request_id, message.index)
        if ex is None:
            return
        ex.status, ex.error = "failed", message.error
        self._refresh_view(ex)
        self.notify(f"Translation failed: {message.error}", severity="error", timeout=8)

    def _persist(self, write: Callable[..., None], *args) -> None:
        """Run a write to the data directory. When it fails (the directory is a file, read-only or full) the
        app keeps working and says so once; what is on screen stays."""
        try:
            write(*args)
        except OSError as e:
            if not self._store_failed:
                self._store_failed = True
                self.notify(f"History and transcript are not being saved ({e}); everything stays on screen.",
                            severity="warning", timeout=10)

    def _next_exchange_id(self, extra: list[Exchange] = ()) -> int:
        return max((e.id for e in [*self.exchanges, *extra]), default=0) + 1

    # -- live mode --------------------------------------------------------------------------------
    @on(Input.Changed, "#prompt")
    def on_prompt_changed(self, event: Input.Changed) -> None:
        if not self.live:
            return
        if self._live_timer is not None:
            self._live_timer.stop()
        # on the prompt: the timer stops with it when the app closes
        self._live_timer = self.main_screen.query_one("#prompt").set_timer(LIVE_DEBOUNCE_S, self._live_translate)

    def _live_translate(self) -> None:
        text = self.main_screen.query_one("#prompt", HistoryInput).value
        preview = self.main_screen.query_one("#live-preview", Static)
        if not text.strip() or self.translator is None or len(text) > MAX_INPUT_CHARS:
            preview.update("")
            return
        self.live_request_id += 1
        self.live_decode(self.live_request_id, self.translator, text, self.decode_config)

    @work(thread=True, exclusive=True, group="live")
    def live_decode(self, request_id: int, translator, text: str, config: DecodeConfig) -> None:
        worker = get_current_worker()
        try:
            for event in translator.stream(text, config, attention=False, cancelled=lambda: worker.is_cancelled):
                if worker.is_cancelled:
                    return
                shown = event.text
                self.call_from_thread(self._show_live, request_id, shown, isinstance(event, PartialTranslation))
        except Cancelled:
            return
        except Exception as e:  # noqa: BLE001
            self.call_from_thread(self._show_live, request_id, f"(live translation failed: {e})", False)

    def _show_live(self, request_id: int, text: str, partial: bool) -> None:
        if request_id != self.live_request_id or not self.live:
            return
        self.main_screen.query_one("#live-preview", Static).update(Text.assemble(("live › ", "dim"), text, " …" if partial else ""))

    def _cancel_live(self) -> None:
        if self._live_timer is not None:
            self._live_timer.stop()
            self._live_timer = None
        self.live_request_id += 1
        self.workers.cancel_group(self, "live")
        self.main_screen.query_one("#live-preview", Static).update("")

    def watch_live(self, live: bool) -> None:
        self.main_screen.query_one("#live-preview", Static).display = live
        self._update_subtitle()
        if not live:
            self._cancel_live()
        else:
            self.on_prompt_changed(None)  # type: ignore[arg-type]

    # -- selection and the inspector ----------------------------------------------------------------
    def on_token_selected(self, message: TokenSelected) -> None:
        self.select_token(message.exchange_id, message.hypothesis, message.token, from_strip=True)

    def _find(self, exchange_id: int) -> Exchange | None:
        return next((e for e in self.exchanges if e.id == exchange_id), None)

    def selected_translation(self) -> tuple[Exchange, Translation, int, int] | None:
        if self.selection is None:
            return None
        ex = self._find(self.selection[0])
        if ex is None or ex.translation is None:
            return None
        return ex, ex.translation, self.selection[1], self.selection[2]

    def select_token(self, exchange_id: int, hypothesis: int, token: int, from_strip: bool = False) -> None:
        ex = self._find(exchange_id)
        if ex is None or ex.translation is None or hypothesis >= len(ex.translation.hypotheses):
            return
        self.selection = (exchange_id, hypothesis, token)
        view = self._view(ex)
        for other in self.main_screen.query(TokenStrip):
            mine = view is not None and other.parent is view and other.index == hypothesis
            other.selected = token if mine else -1
        self._update_inspector()

    def _update_inspector(self) -> None:
        got = self.selected_translation()
        grid = self.main_screen.query_one("#grid", AttentionGrid)
        matrix = self.main_screen.query_one("#matrix", MatrixView)
        alts = self.main_screen.query_one("#alternatives", OptionList)
        title = self.main_screen.query_one("#inspector-title", Static)
        if got is None:
            grid.set_data(None, [], "")
            matrix.set_data(None, 0, 0, (0, 0), grid.aggregate)
            alts.clear_options()
            return
        ex, t, hi, ti = got
        h = t.hypotheses[hi]
        ti = min(ti, len(h.pieces) - 1)
        piece = display_piece(h.pieces[ti])
        prob = h.token_probs[ti]
        forced = " (forced)" if ti < h.prefix_length else ""
        title.update(Text.assemble((piece, "bold"), f"{forced} · p={prob:.3f} · token {ti + 1}/{len(h.pieces)} · "
                     f"{'hypothesis ' + str(hi + 1) + ' · ' if len(t.hypotheses) > 1 else ''}#{ex.id} {t.config.describe()}"))
        weights = h.attention.cross[:, :, ti, :] if h.attention is not None else None  # (L, H, S)
        grid.set_data(weights, t.source_labels(), piece)
        matrix.set_data(t, hi, ti, grid.cursor, grid.aggregate)
        alts.clear_options()
        chosen = h.token_ids[ti]
        options = []
        for k, a in enumerate(h.alternatives[ti]):
            mark = "●" if a.token_id == chosen else " "
            options.append(Option(Text(f"{mark} {a.prob:6.3f}  {display_piece(a.piece)}"), id=f"alt-{k}"))
        alts.add_options(options)

    def watch_show_matrix(self, show: bool) -> None:
        self.main_screen.query_one("#views", ContentSwitcher).current = "matrix-scroll" if show else "grid-scroll"

    def on_cell_focused(self, message: CellFocused) -> None:
        self._sync_matrix()

    def _sync_matrix(self) -> None:
        grid = self.main_screen.query_one("#grid", AttentionGrid)
        matrix = self.main_screen.query_one("#matrix", MatrixView)
        got = self.selected_translation()
        if got is not None:
            matrix.set_data(got[1], got[2], got[3], grid.cursor, grid.aggregate)

    @on(OptionList.OptionSelected, "#alternatives")
    def on_alternative_selected(self, event: OptionList.OptionSelected) -> None:
        got = self.selected_translation()
        if got is None or self.translator is None:
            return
        ex, t, hi, ti = got
        h = t.hypotheses[hi]
        k = event.option_index
        if ti >= len(h.alternatives) or k >= len(h.alternatives[ti]):
            return
        alt = h.alternatives[ti][k]
        if alt.piece == "</s>":
            self.notify("Choosing </s> would end the translation here; nothing to re-translate.", timeout=3)
            return
        prefix = list(h.token_ids[:ti]) + [alt.token_id]
        self.translate(t.source, t.config, prefix=prefix, note=f"forced “{display_piece(alt.piece)}” at token {ti + 1}")

    # -- actions --------------------------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_strategy(self) -> None:
        def done(result) -> None:
            if result is None:
                return
            config, rerun = result
            self.decode_config = config
            self.notify(f"Strategy: {config.describe()}", timeout=2)
            if rerun:
                self.action_rerun()

        self.push_screen(DecodeScreen(self.decode_config), done)

    def set_strategy(self, strategy: str) -> None:
        self.decode_config = self.decode_config.with_(strategy=strategy, top_beams=self.decode_config.top_beams if strategy == "beam" else 1)

    def action_rerun(self) -> None:
        """Translate the last input again; each new exchange shows the earlier result beneath it, to compare."""
        text = self.last_input or next((e.source for e in reversed(self.exchanges)), "")
        if not text:
            self.notify("Nothing to re-translate yet.", timeout=2)
            return
        earlier = {}
        for e in self.exchanges:  # the latest result for each sentence
            if e.text and e.status in ("done", "restored"):
                earlier[e.source] = e
        self.translate(text, compare={source: (e.label, e.text) for source, e in earlier.items()})

    def action_retranslate(self, exchange_id: int) -> None:
        """Translate a restored exchange again, with the model that made it when it is available (an English
        source sent to fr-en would come back as invented output)."""
        ex = self._find(exchange_id)
        if ex is None:
            return
        current = self.translator.name if self.translator is not None else self.model_path.name
        if ex.model and ex.model != current:
            other = next((p for p in self.models if p.name == ex.model), None)
            if other is not None:
                self.notify(f"Translating with {ex.model}, the model that made this exchange (F3 to change).",
                            timeout=5, markup=False)
                self.use_model(other)
            else:
                self.notify(f"This exchange was made with {ex.model}, which is not available; translating with {current}.",
                            severity="warning", timeout=6, markup=False)
        self.translate(ex.source)

    def action_swap_model(self) -> None:
        if len(self.models) < 2:
            self.notify("No other model directory found.", severity="warning", timeout=3)
            return
        try:
            i = self.models.index(self.model_path)
        except ValueError:
            i = -1
        self.use_model(self.models[(i + 1) % len(self.models)])

    def use_model(self, path: Path) -> None:
        # Requests queued for the previous model are not fed to this one (French input to en-fr).
        self._drop_pending("cancelled", "")
        self.model_path = Path(path)
        self.translator = None
        self.loading = True
        self.load_model(self.model_path)
        self._update_subtitle()

    def action_toggle_matrix(self) -> None:
        self.show_matrix = not self.show_matrix
        self._sync_matrix()

    def action_cycle_matrix_kind(self) -> None:
        matrix = self.main_screen.query_one("#matrix", MatrixView)
        matrix.kind = MATRIX_KINDS[(MATRIX_KINDS.index(matrix.kind) + 1) % len(MATRIX_KINDS)]
        self.show_matrix = True
        self._sync_matrix()

    def action_toggle_live(self) -> None:
        self.live = not self.live
        self.notify(f"Live mode {'on' if self.live else 'off'}", timeout=2)

    def action_toggle_confidence(self) -> None:
        self.confidence = not self.confidence

    def watch_confidence(self, value: bool) -> None:
        for strip in self.main_screen.query(TokenStrip):
            strip.confidence = value

    def action_toggle_aggregate(self) -> None:
        grid = self.main_screen.query_one("#grid", AttentionGrid)
        grid.aggregate = AGGREGATES[(AGGREGATES.index(grid.aggregate) + 1) % len(AGGREGATES)]
        self._sync_matrix()

    def action_leave_input(self) -> None:
        if self.focused is not None and self.focused.id == "prompt":
            strips = list(self.main_screen.query(TokenStrip))
            if strips:  # the best hypothesis of the last translated exchange
                last = strips[-1].exchange_id
                next(s for s in strips if s.exchange_id == last and s.index == 0).focus()
        else:
            self.main_screen.query_one("#prompt").focus()

    def action_copy(self) -> None:
        got = self.selected_translation()
        text = got[1].hypotheses[got[2]].text if got else next((e.text for e in reversed(self.exchanges) if e.text), "")
        if not text:
            self.notify("Nothing to copy yet.", timeout=2)
            return
        self.copy_to_clipboard(text)
        self.notify(f"Copied: {text}", timeout=3)

    def action_export_transcript(self) -> None:
        try:
            md, jsonl = export_transcript(self.exchanges, self.export_dir)
        except OSError as e:
            self.notify(f"Export failed: {e}", severity="error")
            return
        self.notify(f"Transcript exported to {md} and {jsonl}", timeout=8)

    def action_export_attention(self) -> None:
        got = self.selected_translation()
        if got is None:
            self.notify("Select an output token first.", severity="warning", timeout=3)
            return
        grid = self.main_screen.query_one("#grid", AttentionGrid)
        matrix = self.main_screen.query_one("#matrix", MatrixView)
        try:
            paths = export_attention(self, got, grid, matrix, self.show_matrix, self.export_dir)
        except OSError as e:
            self.notify(f"Export failed: {e}", severity="error")
            return
        self.notify("Attention view exported: " + ", ".join(str(p) for p in paths), timeout=10)

    # -- command palette ----------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Decoding strategy…", "Greedy, beam search or sampling and their parameters (F2)", self.action_strategy)
        for s in ("greedy", "beam", "sample"):
            yield SystemCommand(f"Strategy: {s}", f"Switch to {s} decoding with the current parameters", lambda s=s: self.set_strategy(s))
        yield SystemCommand("Re-translate last input", "Run the last input again with the current strategy (F5)", self.action_rerun)
        yield SystemCommand("Swap direction / next model", "Load the next model directory (F3)", self.action_swap_model)
        for path in self.models:
            yield SystemCommand(f"Use model: {path.name}", str(path), lambda p=path: self.use_model(p))
        yield SystemCommand("Toggle full-matrix view", "Grid of heads ↔ target × source matrix (F4)", self.action_toggle_matrix)
        yield SystemCommand("Cycle matrix kind", "Cross / encoder self / decoder self attention (F9)", self.action_cycle_matrix_kind)
        yield SystemCommand("Toggle mean/max aggregation", "How the extra row and column combine heads and layers (F8)", self.action_toggle_aggregate)
        yield SystemCommand("Toggle live mode", "Re-translate as you type (F6)", self.action_toggle_live)
        yield SystemCommand("Toggle confidence colours", "Colour output tokens by probability (F7)", self.action_toggle_confidence)
        yield SystemCommand("Copy translation", "Copy the selected translation to the clipboard (ctrl+y)", self.action_copy)
        yield SystemCommand("Export transcript", "Markdown and JSONL (ctrl+s)", self.action_export_transcript)
        yield SystemCommand("Export attention view", "SVG, HTML, CSV and JSON of the current view (ctrl+o)", self.action_export_attention)
        yield SystemCommand("Help", "Keys and how to read the grid (F1)", self.action_help)
