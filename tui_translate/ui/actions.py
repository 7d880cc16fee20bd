"""What the keys and the command palette do, live mode, and writes to the data directory (mixed into
TranslateApp; the bindings live in app.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import langid
from ..config import DecodeConfig
from ..errors import TranslateError
from .exporting import export_attention, export_transcript
from .models import model_label
from .requests import Draft
from .screens.decode import DecodeScreen
from .screens.help import HelpScreen
from .widgets.live import LivePreview
from .widgets.prompt import MAX_INPUT_CHARS, Prompt


NO_MODEL_HINT = "Press F3 for the next model, or ctrl+p and 'Use model'."


class AppActions:
    """Actions of TranslateApp; `self` is the app."""

    def _no_model(self) -> bool:
        """True, after saying so, when no model is loaded and none is loading: a request would wait forever."""
        if self.translator is not None or self.loading:
            return False
        self.notify(f"No model is loaded ({self.load_error or 'none chosen'}). {NO_MODEL_HINT}", severity="error", timeout=8)
        return True

    # -- direction by language -------------------------------------------------------------------------------
    # Languages are the models' own (Translator.source_lang, the pair in each model's files), compared as the
    # detector's ISO 639-1 codes (a Hub model may say `deu`). A model whose source lingua does not know (a
    # group such as `mul`) may translate anything typed: then nothing is refused or switched.
    def _sources(self) -> dict[str, Path]:
        """Detector code -> the first listed model that translates from that language."""
        out: dict[str, Path] = {}
        for p in self.models:
            if (pair := self.model_pair(p)) and (src := langid.code(pair[0])):
                out.setdefault(src, p)
        return out

    def refused_language(self, text: str) -> bool:
        """True, after saying so, when `text` is clearly in a language no model translates (invented output
        otherwise). Pressing Enter again on the same text translates it anyway."""
        lang = langid.detect(text) if self.translator is not None and self.detect_language else None  # (no check while a model loads)
        if lang is None or len(text.split()) < 3 or text == self._refused_text:
            return False
        source = langid.code(self.translator.source_lang)
        if source is None or lang == source or lang in self._sources():
            return False
        self._refused_text = text
        self.notify(f"This looks like {langid.name(lang)}; no model here translates it (models: "
                    f"{', '.join(model_label(p) for p in self.models)}). Press Enter again to translate it anyway.",
                    severity="warning", timeout=8)
        return True

    def switch_direction_for(self, text: str) -> None:
        """Typed text in the current model's target language switches to the model that translates from it
        (when there is one), with a notice; ctrl+z goes back and re-translates with the previous model."""
        lang, current = langid.detect(text) if self.detect_language else None, self.translator
        if current is None or lang is None or len(text.split()) < 2:
            return
        source = langid.code(current.source_lang)
        if source is None or lang == source:
            return
        pair = (lang, source)
        other = next((p for p in self.models if (mp := self.model_pair(p)) and tuple(map(langid.code, mp)) == pair), None)
        other = other or self._sources().get(lang)
        if other is not None and other != self.model_path:
            self._direction_back = self.model_path
            self.notify(f"This looks like {langid.name(lang)}: switched to {model_label(other)}. "
                        f"ctrl+z goes back to {current.name}.", timeout=8)
            self.use_model(other)

    # -- settings -----------------------------------------------------------------------------------------------
    def restore_settings(self) -> None:
        """Model, strategy, theme, confidence colours and live mode as the last session left them; anything
        missing or invalid in the file keeps its default."""
        settings, self._settings_ready = self.store.load_settings(), False
        try:
            self.decode_config = DecodeConfig.from_dict(settings["decoding"])
        except (KeyError, TypeError, ValueError):
            pass
        if settings.get("theme") in self.available_themes:
            self.theme = settings["theme"]
        self.transcript.confidence = settings.get("confidence") is True
        self.live = settings.get("live") is True
        model = next((p for p in self.models if model_label(p) == settings.get("model")), None)
        if self.remember_model and model is not None:
            self.model_path = model
        self._settings_ready = True

    def save_settings(self) -> None:
        if getattr(self, "_settings_ready", False):  # not while restoring them
            self._persist(self.store.save_settings, {
                "model": model_label(self.model_path), "decoding": self.decode_config.to_dict(), "theme": self.theme,
                "confidence": self.transcript.confidence, "live": self.live})

    def watch_theme(self) -> None:
        self.save_settings()

    def action_direction_back(self) -> None:
        back, self._direction_back = self._direction_back, None
        if back is None:
            self.notify("No direction change to undo.", timeout=2)
            return
        self.use_model(back)
        if self.last_input:
            self.translate(self.last_input)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_strategy(self) -> None:
        def done(result) -> None:
            if result is not None:
                config, rerun = result
                self.decode_config = config
                self.notify(f"Strategy: {config.describe()}", timeout=2)
                if rerun:
                    self.action_rerun()

        self.push_screen(DecodeScreen(self.decode_config), done)

    def set_strategy(self, strategy: str) -> None:
        self.decode_config = self.decode_config.with_(strategy=strategy, top_beams=self.decode_config.top_beams if strategy == "beam" else 1)

    def toggle_rule(self, rule: str) -> None:
        """Turn one output rule (`keep_numbers`, `block_repeats`) on or off for the next translations."""
        on = not getattr(self.decode_config, rule)
        self.decode_config = self.decode_config.with_(**{rule: on})
        what = {"keep_numbers": "numbers copied from the source", "block_repeats": "no word three times in a row"}[rule]
        self.notify(f"{what}: {'on' if on else 'off (the model alone)'}", timeout=3)

    def action_rerun(self) -> None:
        """Translate the last input again; each new exchange shows the earlier result beneath it, to compare."""
        text = self.last_input or next((e.source for e in reversed(self.exchanges)), "")
        if not text:
            self.notify("Nothing to re-translate yet.", timeout=2)
            return
        earlier = [e for e in self.exchanges if e.text and e.status in ("done", "restored")]
        # the latest result for each sentence, shown beneath the new one and handed to the decoder as a draft
        # (its token ids when this model made it, else its text)
        model = self.translator.name if self.translator is not None else None
        drafts = {e.source: e.translation.best.token_ids if e.has_tokens() and e.model == model else e.text for e in earlier}
        self.translate(text, compare={e.source: (e.label, e.text) for e in earlier}, drafts=drafts)

    def action_retranslate(self, exchange_id: int) -> None:
        """Translate a restored exchange again, with the model that made it when it is available (an English
        source sent to fr-en would come back as invented output)."""
        ex = self.requests.find(exchange_id)
        if ex is None:
            return
        current = self.translator.name if self.translator is not None else model_label(self.model_path)
        if ex.model and ex.model != current:
            other = next((p for p in self.models if model_label(p) == ex.model), None)
            if other is not None:
                self.notify(f"Translating with {ex.model}, the model that made this exchange (F3 to change).", timeout=5)
                self.use_model(other)
            else:
                self.notify(f"This exchange was made with {ex.model}, which is not available; translating with {current}.",
                            severity="warning", timeout=6)
        self.translate(ex.source)

    def action_swap_model(self) -> None:
        # A Hub model only partly in the cache is skipped: offline it cannot load (the palette still opens it).
        models = [p for p in self.models if p == self.model_path or getattr(self.model_entries.get(p), "complete", True)]
        if len(models) < 2:
            self.notify("No other model found.", severity="warning", timeout=3)
            return
        i = models.index(self.model_path) if self.model_path in models else -1
        self.use_model(models[(i + 1) % len(models)])

    def action_toggle_matrix(self) -> None:
        self.inspector.toggle_matrix()

    def action_cycle_matrix_kind(self) -> None:
        self.inspector.cycle_matrix_kind()

    def action_toggle_aggregate(self) -> None:
        self.inspector.toggle_aggregate()

    def action_toggle_live(self) -> None:
        self.live = not self.live
        self.save_settings()
        self.notify(f"Live mode {'on' if self.live else 'off'}", timeout=2)

    def action_toggle_confidence(self) -> None:
        self.transcript.confidence = not self.transcript.confidence
        self.save_settings()

    def action_leave_input(self) -> None:
        if self.focused is self.prompt:
            strip = self.transcript.last_translation()
            if strip is not None:
                strip.focus()
        else:
            self.prompt.focus()

    def action_copy(self) -> None:
        got = self.inspector.selected()
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
        got, inspector = self.inspector.selected(), self.inspector
        if got is None:
            self.notify("Select an output token first.", severity="warning", timeout=3)
            return
        try:
            paths = export_attention(got, inspector.grid, inspector.matrix, inspector.show_matrix, Path(self.export_dir))
        except OSError as e:
            self.notify(f"Export failed: {e}", severity="error")
            return
        self.notify("Attention view exported: " + ", ".join(str(p) for p in paths), timeout=10)

    # -- live mode ------------------------------------------------------------------------------------------
    def on_prompt_live_text(self, message: Prompt.LiveText) -> None:
        # a debounced keystroke can arrive while the app shuts down and the preview is already unmounted
        previews = self.main_screen.query(LivePreview)
        if not previews:
            return
        text, preview = message.text, previews.first()
        if not self.live or not text.strip() or self.translator is None or len(text) > MAX_INPUT_CHARS:
            preview.cancel()
        else:
            preview.translate(self.translator, text, self.decode_config)

    def live_draft(self, text: str) -> dict[str, Draft] | None:
        """The live preview's last translation as the draft of the request Enter makes: it was made from the
        same text, or from the text a few keys ago, so the decoder mostly verifies it instead of stepping."""
        draft = self.main_screen.query_one(LivePreview).draft
        if not self.live or draft is None or draft[0] is not self.translator:
            return None
        try:
            segments = self.translator.segments(text)
        except TranslateError:
            return None
        # the preview translates the whole text; its translation is a guess for one sentence only
        return {segments[0]: draft[1]} if len(segments) == 1 else None

    def _cancel_live(self) -> None:
        self.prompt.cancel_live()
        self.main_screen.query_one(LivePreview).cancel()

    def watch_live(self, live: bool) -> None:
        self.main_screen.query_one(LivePreview).display = live
        self._update_subtitle()
        if not live:
            self._cancel_live()
        self.prompt.live = live

    def _persist(self, write: Callable[..., None], *args) -> None:
        """A write to the data directory. When it fails (the directory is a file, read-only or full) the app
        keeps working and says so once; what is on screen stays."""
        try:
            write(*args)
        except OSError as e:
            if not self._store_failed:
                self._store_failed = True
                self.notify(f"History and transcript are not being saved ({e}); everything stays on screen.",
                            severity="warning", timeout=10)
