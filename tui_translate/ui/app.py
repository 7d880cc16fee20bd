"""The chat-style translator app: layout, keys, model loading, and routing between the widgets.

The app receives a `loader(path) -> translator` (protocols.TranslatorLike), so tests inject a fake and this
package never imports torch. Widgets: ui/widgets; request ids, progress coalescing, the decode worker's body
and the GC policy: ui/requests.py; key actions: ui/actions.py; the palette: ui/commands.py. Each request has
an id; results of superseded requests are dropped.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input
from textual.worker import get_current_worker

from .. import hub, langid
from ..config import DecodeConfig
from ..errors import TranslateError
from ..protocols import TranslatorLike
from .actions import NO_MODEL_HINT, AppActions
from .commands import HubModelCommands, app_commands
from .messages import ModelDownload, ModelFailed, ModelLoaded, TokenSelected, TranslationDone, TranslationFailed, TranslationProgress
from .models import hub_ref, language_pair, model_key, model_label
from .screens.main import MainScreen
from .requests import Draft, Exchange, GcPolicy, Pending, ProgressSlot, RequestTracker, decode_request, resolve_seed
from .store import Store
from .widgets.inspector import Inspector
from .widgets.live import LivePreview
from .widgets.prompt import MAX_INPUT_CHARS, Prompt
from .widgets.transcript import Transcript

WIDE_COLUMNS = 120
FOOTER_PALETTE_COLUMNS = 90  # narrower, ctrl+p (the prompt's placeholder names it) would push keys off the footer
PROGRESS_INTERVAL = 1 / 30  # seconds between redraws of a growing translation


class TranslateApp(AppActions, App):
    CSS_PATH = "app.tcss"
    TITLE = "tui-translate"
    COMMANDS = App.COMMANDS | {HubModelCommands}

    # The footer holds the keys of this list with show=True in one line at 80 columns: the attention view's
    # keys and the two exports are grouped (each key's own description is its tooltip); re-run and live mode
    # are in the help, the palette and the strategy dialog (Apply & re-run).
    VIEW_KEYS = Binding.Group("view")
    EXPORT_KEYS = Binding.Group("export")
    BINDINGS = [
        Binding("f1", "help", "help"),
        Binding("f2", "strategy", "strategy"),
        Binding("f3", "swap_model", "model"),
        Binding("f4", "toggle_matrix", "full matrix", group=VIEW_KEYS),
        Binding("f8", "toggle_aggregate", "mean / max", group=VIEW_KEYS),
        Binding("f9", "cycle_matrix_kind", "cross / self attention", group=VIEW_KEYS),
        Binding("f7", "toggle_confidence", "confidence"),
        Binding("ctrl+y", "copy", "copy"),
        Binding("ctrl+s", "export_transcript", "export the transcript", group=EXPORT_KEYS),
        Binding("ctrl+o", "export_attention", "export the attention view", group=EXPORT_KEYS),
        Binding("f5", "rerun", "re-run", show=False),
        Binding("f6", "toggle_live", "live", show=False),
        Binding("ctrl+z", "direction_back", "undo direction", show=False),
        Binding("escape", "leave_input", show=False),
    ]

    live: reactive[bool] = reactive(False)
    decode_config: reactive[DecodeConfig] = reactive(DecodeConfig, init=False)

    def __init__(self, loader: Callable[[Path], TranslatorLike], model_path: Path, models: Iterable[Path] = (),
                 store: Store | None = None, export_dir: Path | None = None, decode_config: DecodeConfig | None = None,
                 remember_model: bool = True, detect_language: bool = True,
                 catalog: Callable[[], Iterable[hub.ModelEntry]] | None = None) -> None:
        """catalog: lists the models to switch between besides `models` (hub.list_models: shipped,
        converted and cached Hub models); read at start and whenever the command palette opens."""
        super().__init__()
        self.detect_language = detect_language  # see AppActions.switch_direction_for (bench turns it off)
        self.remember_model = remember_model  # False when the user named a model: the saved one does not replace it
        self.loader = loader
        self.model_path = Path(model_path)
        self.models = [Path(m) for m in models] or [self.model_path]
        if self.model_path not in self.models:
            self.models.insert(0, self.model_path)
        self.catalog, self.model_entries = catalog, {}  # model_entries: Path in self.models -> its catalog entry
        self._pairs: dict[Path, tuple[str, str] | None] = {}  # language pairs read from the models' files
        self._download: tuple[int, int] | None = None  # bytes of the Hub model being downloaded, for the subtitle
        self._last_notice: str | None = None  # the translator's last notice shown: said once, not at every model switch
        self.store, self.export_dir = store or Store(None), export_dir or Path.cwd()
        self.translator: TranslatorLike | None = None
        self.loading, self.load_error = False, ""  # load_error: why the last model failed, told when a request finds none
        self.requests, self.progress, self.gc_policy = RequestTracker(), ProgressSlot(PROGRESS_INTERVAL), GcPolicy()
        self.last_input = ""
        self._store_failed = False  # a write to the data directory failed and the user was told
        self._refused_text, self._direction_back = "", None  # see AppActions.refused_language / switch_direction_for
        self.set_reactive(TranslateApp.decode_config, decode_config or DecodeConfig())

    # -- layout ---------------------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        # Widgets are looked up on this screen, not on `self.screen`, which is a dialog while one is open.
        self.main_screen = MainScreen(id="_default")
        return self.main_screen

    def compose(self) -> ComposeResult:
        yield Header()
        with Container(id="main"):
            yield Transcript(id="transcript")
            yield Inspector(id="inspector")
        yield LivePreview(id="live-preview")
        yield Prompt(id="prompt", placeholder="Type a sentence and press Enter  (F1 help · ctrl+p commands)")
        # every key that matters fits at 80 columns; the palette's key joins them where there is room
        yield Footer(compact=True, show_command_palette=False)

    @property
    def transcript(self) -> Transcript:
        return self.main_screen.query_one(Transcript)

    @property
    def inspector(self) -> Inspector:
        return self.main_screen.query_one(Inspector)

    @property
    def prompt(self) -> Prompt:
        return self.main_screen.query_one(Prompt)

    @property
    def exchanges(self) -> list[Exchange]:
        return self.requests.exchanges

    @property
    def selection(self) -> tuple[int, int, int] | None:
        return self.inspector.selection

    def on_mount(self) -> None:
        for item in self.store.load_history():
            self.prompt.remember(item)
        self.requests.restore(self.store.load_transcript())
        self.refresh_models()
        self.restore_settings()
        self.transcript.show(self.exchanges)
        self.prompt.focus()
        self.on_resize()
        self.use_model(self.model_path)

    def on_resize(self, event: events.Resize | None = None) -> None:
        # The event's size: the app's own size is still the previous one while this handler runs.
        width = event.size.width if event is not None else self.size.width
        self.main_screen.set_class(width >= WIDE_COLUMNS, "wide")
        self.main_screen.query_one(Footer).show_command_palette = width >= FOOTER_PALETTE_COLUMNS
        # A new width re-wraps the transcript; keep its newest exchange in view once that layout is done.
        self.call_after_refresh(self.transcript.scroll_end, animate=False)

    def notify(self, message: str, *, markup: bool = False, **kw) -> None:
        """Notifications carry model names, paths, errors and translations: plain text, never markup."""
        super().notify(message, markup=markup, **kw)

    def _update_subtitle(self) -> None:
        if self.translator is None and self.loading and self._download is not None:
            done, total = self._download
            model = f"downloading {model_label(self.model_path)}" + (f" {100 * done // total}%…" if total else "…")
        elif self.translator is None:
            model = f"loading {model_label(self.model_path)}…" if self.loading else "no model"
        else:
            model = f"{self.translator.name} ({self.translator.source_lang}→{self.translator.target_lang})"
        self.sub_title = f"{model} · {self.decode_config.describe()}{' · live' if self.live else ''}"

    def watch_decode_config(self) -> None:
        self._update_subtitle()
        self.save_settings()

    # -- model loading --------------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """Add what the catalog lists now to the models to switch between (none are dropped: one removed
        since fails to load with a notice)."""
        if self.catalog is None:
            return
        try:
            entries = list(self.catalog())
        except (OSError, TranslateError) as e:  # an unreadable cache directory: the models already known stay
            self.notify(f"Could not list the models: {e}", severity="warning", timeout=6)
            return
        known = {model_key(p): p for p in self.models}
        for entry in entries:
            key = model_key(Path(entry.spec))
            if key not in known:
                known[key] = Path(entry.spec)
                self.models.append(known[key])
            path = known[key]
            self.model_entries[path] = entry
            self._pairs.pop(path, None)  # a pulled update may name another pair

    def model_pair(self, path: Path) -> tuple[str, str] | None:
        """(source, target) of a listed model, from its own files."""
        if path not in self._pairs:
            self._pairs[path] = language_pair(path, self.model_entries.get(path))
        return self._pairs[path]

    def use_model(self, path: Path) -> None:
        # Requests queued for the previous model are not fed to this one (French input to en-fr).
        for ex in self.requests.drop_pending("cancelled"):
            self.transcript.refresh_exchange(ex)
        self.model_path, self.translator, self.loading, self._download = Path(path), None, True, None
        self.load_model(self.model_path)
        self._update_subtitle()

    def open_hub_model(self, spec: str) -> None:
        """A repo id typed into the command palette. Offline, one that is not cached is refused here with
        the line saying what to run, and the model in use stays; else it loads (downloading first)."""
        ref = hub.parse_repo_id(spec)
        if ref is None:
            self.notify(f"{spec}: not a Hugging Face Hub repo id (owner/name[@revision])", severity="error", timeout=8)
            return
        if hub.offline():
            try:
                hub.resolve(ref)  # offline it reads the cache only, and says what is missing
            except hub.HubError as e:
                self.notify(str(e), severity="error", timeout=12)
                return
        self.use_model(Path(str(ref)))

    @work(thread=True, exclusive=True, group="load")
    def load_model(self, path: Path) -> None:
        start, worker = time.perf_counter(), get_current_worker()
        try:
            ref = hub_ref(path)
            translator = self.loader(self._download_model(ref, worker) if ref is not None else path)
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification
            if not worker.is_cancelled:
                self.post_message(ModelFailed(str(path), str(e).splitlines()[0] if str(e) else type(e).__name__))
            return
        if not worker.is_cancelled:  # else another model was chosen while this one loaded
            self.post_message(ModelLoaded(translator, time.perf_counter() - start))

    def _download_model(self, ref: hub.HubRef, worker) -> Path:
        """The loading worker's first step for a repo id: its cached snapshot, downloaded when missing,
        with a notification and the progress in the subtitle. Another model chosen meanwhile stops it."""
        shown = -1

        def progress(done: int, total: int, name: str) -> None:
            nonlocal shown
            if worker.is_cancelled:
                raise RuntimeError("another model was chosen")  # ends the download; nothing half-done is used
            percent = 100 * done // total if total else 0
            if percent != shown:  # one message per percent, not per chunk
                shown = percent
                self.post_message(ModelDownload(done, total))

        def announce(line: str) -> None:
            self.call_from_thread(self.notify, line[:1].upper() + line[1:] + "…", timeout=10)

        return hub.resolve(ref, progress, announce)

    def on_model_download(self, message: ModelDownload) -> None:
        if self.loading:
            self._download = (message.done, message.total)
            self._update_subtitle()

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.translator, self.loading, self._download = message.translator, False, None
        gc.freeze()  # libraries, model, widgets: see requests.GcPolicy
        if hub_ref(self.model_path) is None:  # a repo id stays the id (F3 and the settings know it), not its snapshot
            self.model_path = Path(getattr(self.translator, "path", self.model_path))
        if self.model_path not in self.models:  # a repo id typed into the palette joins the list
            self.models.append(self.model_path)
        self._update_subtitle()
        self.notify(f"Model {self.translator.name} ready ({message.seconds:.1f} s)", timeout=3)
        notice = self.translator.notice  # e.g. the compiled decoder step still being built
        if notice and notice != self._last_notice:
            self._last_notice = notice
            self.notify(notice[:1].upper() + notice[1:] + ".", timeout=6)
        self.save_settings()
        # The detector learns the languages of the models from their own files (a Hub de-en model: German).
        langid.want([self.translator.source_lang, self.translator.target_lang,
                     *(lang for p in self.models for lang in (self.model_pair(p) or ()))])
        if self.detect_language and not langid.is_warm():  # after the model: the first frame and load come first
            self.run_worker(langid.warm_up, thread=True, exclusive=True, group="langid")
        pending, self.requests.pending = self.requests.pending, None
        if pending is not None:
            self._start(pending)

    def on_model_failed(self, message: ModelFailed) -> None:
        self.loading, self._download = False, None
        self.load_error = f"could not load {model_label(Path(message.path))}: {message.error}"
        self._update_subtitle()
        self.notify(f"Could not load the model: {message.error}", severity="error", timeout=10)
        for ex in self.requests.drop_pending("failed", f"{self.load_error}. {NO_MODEL_HINT}"):
            self.transcript.refresh_exchange(ex)  # requests that waited for this model will not get it

    # -- translating ----------------------------------------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value
        if not text.strip():
            self.notify("Type a sentence to translate (empty input is not translated).", severity="warning", timeout=3)
        elif len(text) > MAX_INPUT_CHARS:
            self.notify(f"Input is {len(text):,} characters; the limit is {MAX_INPUT_CHARS:,}. Nothing was translated.",
                        severity="error", timeout=6)
        elif not self._no_model() and not self.refused_language(text):  # else the input stays in the prompt
            if self.prompt.remember(text):
                self._persist(self.store.add_history, text)
            self.prompt.value = ""
            draft = self.live_draft(text)
            self._cancel_live()
            self.switch_direction_for(text)
            self.translate(text, drafts=draft)

    def translate(self, text: str, config: DecodeConfig | None = None, prefix: list[int] | None = None, note: str = "",
                  compare: dict[str, tuple[str, str]] | None = None, drafts: dict[str, Draft] | None = None) -> list[Exchange]:
        """Add exchanges for `text` (one per sentence) and start decoding them in order; queued until the
        model is loaded. compare: source -> (label, text) of an earlier result, shown beneath the new one.
        drafts: source -> a guess of its translation (an earlier one), which makes decoding faster where right."""
        if self._no_model():
            return []
        config = resolve_seed(config or self.decode_config)
        self.last_input = text
        segments = [text]
        if self.translator is not None and prefix is None:
            try:
                segments = self.translator.segments(text)
            except TranslateError as e:  # the input is over the limit
                self.notify(str(e), severity="error", timeout=8)
                return []
        self.transcript.flush()  # the previous request's finished sentences are shown before it is superseded
        for ex in self.requests.supersede():
            self.transcript.refresh_exchange(ex)
        model = self.translator.name if self.translator is not None else model_label(self.model_path)
        exchanges = self.requests.new_exchanges(segments, config, model, note, compare)
        self.transcript.show(exchanges)
        request = Pending(exchanges, config, prefix, dict(drafts or {}))
        if self.translator is None:
            self.requests.queue(request)
        else:
            self._start(request)
        return exchanges

    def _start(self, request: Pending) -> None:
        request_id = self.requests.start(request.exchanges)
        for ex in request.exchanges:
            ex.model = self.translator.name
        self.decode(request_id, self.translator, [ex.source for ex in request.exchanges], request.config, request.prefix,
                    request.drafts)

    @work(thread=True, exclusive=True, group="decode")
    def decode(self, request_id: int, translator: TranslatorLike, texts: list[str], config: DecodeConfig, prefix: list[int] | None,
               drafts: dict[str, Draft] | None = None) -> None:
        decode_request(self.post_message, get_current_worker(), request_id, translator, texts, config, prefix, self.progress, drafts)

    def on_translation_progress(self, message: TranslationProgress) -> None:
        message = self.progress.take(message)  # the newest step, which may be past the posted one
        ex = self.requests.exchange_for(message.request_id, message.index)
        if ex is not None:
            self.transcript.update_partial(ex, message.partial.text, message.partial.step)

    def on_translation_done(self, message: TranslationDone) -> None:
        ex = self.requests.exchange_for(message.request_id, message.index)
        if ex is not None:
            ex.translation, ex.status = message.translation, "done"
            self.transcript.finished(ex, request_done=not self.requests.busy())

    def on_translation_failed(self, message: TranslationFailed) -> None:
        ex = self.requests.exchange_for(message.request_id, message.index)
        if ex is not None:
            ex.status, ex.error = "failed", message.error
            self.transcript.refresh_exchange(ex)
            self.notify(f"Translation failed: {message.error}", severity="error", timeout=8)

    def on_transcript_shown(self, message: Transcript.Shown) -> None:
        self._persist(self.store.add_transcript, [e.to_record() for e in message.exchanges if e.status == "done"])
        delay = self.gc_policy.finished(len(message.exchanges), request_finished=not self.requests.busy())
        if delay is not None:
            self.set_timer(delay, lambda: self.gc_policy.collect_if_idle(self.requests.busy()))
        if not self.main_screen.query(Inspector):
            return  # the app is closing and its widgets are gone (the finished exchanges were saved above)
        for ex in message.exchanges:
            # The inspector follows the first finished sentence of a request; later sentences of a long
            # paste do not yank it away (and do not re-render it each time).
            if ex.has_tokens() and not (self.selection and self.requests.find_running(self.selection[0])):
                self.select_token(ex.id, 0, 0)

    # -- selection ------------------------------------------------------------------------------------------
    def on_token_selected(self, message: TokenSelected) -> None:
        self.select_token(message.exchange_id, message.hypothesis, message.token)

    def select_token(self, exchange_id: int, hypothesis: int, token: int) -> None:
        ex = self.requests.find(exchange_id)
        if ex is not None and self.inspector.show(ex, hypothesis, token):
            self.transcript.mark_selected(exchange_id, hypothesis, token)

    def on_inspector_source_weights(self, message: Inspector.SourceWeights) -> None:
        self.transcript.highlight_source(message.exchange, message.weights)

    def on_inspector_alternative_chosen(self, message: Inspector.AlternativeChosen) -> None:
        if message.alternative.piece == "</s>":
            self.notify("Choosing </s> would end the translation here; nothing to re-translate.", timeout=3)
        elif self.translator is not None:
            t = message.exchange.translation
            # the hypothesis the alternative replaces a token of: its later tokens may well come back
            draft = t.hypotheses[message.hypothesis].token_ids
            self.translate(t.source, t.config, prefix=message.prefix, note=message.note, drafts={t.source: draft})

    def action_command_palette(self) -> None:
        self.refresh_models()  # a model pulled or converted while the app runs is listed
        super().action_command_palette()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from app_commands(self)
