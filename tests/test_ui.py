"""The app, driven with Pilot against a fake translator (and once against a real tiny model)."""

from __future__ import annotations

import csv
import os
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import FakeTranslator, fake_loader
from tui_translate.config import DecodeConfig
from tui_translate.ui.app import TranslateApp
from tui_translate.ui.store import Store
from tui_translate.ui.widgets.exchange import TokenStrip, model_confidence
from tui_translate.ui.widgets.inspector import AttentionGrid, MatrixView, cell_weights

FR = Path("/models/fr-en")
EN = Path("/models/en-fr")


@dataclass
class Notice:
    message: str
    severity: str


@pytest.fixture(autouse=True)
def record_notifications(monkeypatch):
    """Every notification an app shows is recorded as it passes through the app's own `notify`."""
    original = TranslateApp.notify

    def notify(self, message: str, **kw) -> None:
        self.__dict__.setdefault("recorded_notices", []).append(Notice(message, kw.get("severity", "information")))
        original(self, message, **kw)

    monkeypatch.setattr(TranslateApp, "notify", notify)


def notices(app: TranslateApp) -> list[Notice]:
    return app.__dict__.get("recorded_notices", [])


def make_app(tmp_path: Path, store: bool = False, **kw) -> TranslateApp:
    return TranslateApp(fake_loader(**kw), FR, [FR, EN], store=Store(tmp_path / "data" if store else None),
                        export_dir=tmp_path / "exports")


async def wait_for(pilot, predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not reached in time")


async def submit(pilot, app, text: str) -> None:
    await wait_for(pilot, lambda: app.translator is not None)
    n = len(app.exchanges)
    app.query_one("#prompt").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(app.exchanges) > n and app.exchanges[-1].status == "done")


def test_ui_package_imports_no_torch():
    code = ("import sys, importlib, pkgutil, tui_translate.ui as ui\n"
            "for m in pkgutil.walk_packages(ui.__path__, 'tui_translate.ui.'): importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


async def test_translate_select_token_and_grid_matches_translator(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        ex = app.exchanges[-1]
        assert ex.text == "i am a student"
        assert "greedy" in app.sub_title and "fr-en" in app.sub_title
        # keyboard: leave the input, move right twice -> third token ("a")
        await pilot.press("escape", "right", "right")
        assert app.selection == (ex.id, 0, 2)
        grid = app.query_one("#grid", AttentionGrid)
        cross = ex.translation.best.attention.cross  # (L, H, T, S)
        np.testing.assert_allclose(grid.weights, cross[:, :, 2, :])
        # focus the grid and move to layer 1, head 2: the focused values are that head's row
        grid.focus()
        await pilot.press("down", "right", "right")
        assert grid.cursor == (1, 2)
        np.testing.assert_allclose(grid.focused_values(), cross[1, 2, 2])
        # the aggregate column is the mean over heads, max after F8
        grid.cursor = (0, 3)
        np.testing.assert_allclose(grid.focused_values(), cross[0, :, 2].mean(0))
        await pilot.press("f8")
        np.testing.assert_allclose(grid.focused_values(), cross[0, :, 2].max(0))
        # mouse: clicking a token of the strip selects it
        strip = app.query(TokenStrip).last()
        await pilot.click(strip, offset=(2, 0))
        assert app.selection == (ex.id, 0, 0)


async def test_full_matrix_views(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await submit(pilot, app, "le chat dort")
        await pilot.press("f4")
        matrix = app.query_one("#matrix", MatrixView)
        m, rows, cols, title = matrix.matrix()
        att = app.exchanges[-1].translation.best.attention
        np.testing.assert_allclose(m, att.cross[0, 0])
        assert cols == ["le", "chat", "dort", "</s>"] and "cross-attention" in title
        await pilot.press("f9")
        m, rows, cols, _ = matrix.matrix()
        np.testing.assert_allclose(m, att.encoder_self[0, 0])
        await pilot.press("f9")
        m, rows, cols, _ = matrix.matrix()
        np.testing.assert_allclose(m, att.decoder_self[0, 0])
        assert np.all(np.triu(m, 1) == 0)
        assert cols[0] == "<s>"


async def test_strategy_panel_beam_nbest_side_by_side(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 36)) as pilot:
        await submit(pilot, app, "le chat dort")
        await pilot.press("f2")
        screen = app.screen
        await pilot.click("#strategy-beam")
        screen.query_one("#top_beams").value = "3"
        await pilot.click("#rerun")
        await wait_for(pilot, lambda: len(app.exchanges) == 2 and app.exchanges[-1].status == "done")
        assert app.decode_config.strategy == "beam" and app.decode_config.top_beams == 3
        first, second = app.exchanges
        assert first.label == "greedy" and second.label.startswith("beam k=5")
        assert len(second.translation.hypotheses) == 3
        strips = [s for s in app.query(TokenStrip) if s.exchange_id == second.id]
        assert len(strips) == 3
        # any hypothesis is inspectable
        strips[2].action_select(1)
        await pilot.pause()
        assert app.selection == (second.id, 2, 1)
        np.testing.assert_allclose(app.query_one("#grid", AttentionGrid).weights,
                                   second.translation.hypotheses[2].attention.cross[:, :, 1, :])


async def test_the_output_rules_are_switched_in_the_strategy_panel_and_the_palette(tmp_path):
    """The panel's two checkboxes and the palette's two commands turn the output rules off and on; the translator
    receives them in its config and the exchange's label names a rule that is off."""
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 36)) as pilot:
        await submit(pilot, app, "le chat dort")
        assert app.translator.calls[-1][1].keep_numbers and app.translator.calls[-1][1].block_repeats
        await pilot.press("f2")
        await pilot.click("#keep_numbers")
        await pilot.click("#rerun")
        await wait_for(pilot, lambda: len(app.exchanges) == 2 and app.exchanges[-1].status == "done")
        config = app.translator.calls[-1][1]
        assert not config.keep_numbers and config.block_repeats
        assert app.exchanges[-1].label == "greedy free-numbers"
        app.toggle_rule("keep_numbers")
        app.toggle_rule("block_repeats")
        assert app.decode_config.keep_numbers and not app.decode_config.block_repeats
        await submit(pilot, app, "le chien mange")
        assert app.translator.calls[-1][1].block_repeats is False
        assert app.exchanges[-1].label == "greedy allow-repeats"


async def test_invalid_strategy_value_is_reported_in_the_panel(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 36)) as pilot:
        await pilot.press("f2")
        await pilot.click("#strategy-sample")
        app.screen.query_one("#temperature").value = "-1"
        await pilot.click("#apply")
        assert "temperature" in str(app.screen.query_one("#decode-error").render())
        await pilot.press("escape")
        assert app.decode_config.strategy == "greedy"


async def test_picking_an_alternative_redecodes_with_forced_prefix(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        ex = app.exchanges[-1]
        app.select_token(ex.id, 0, 1)
        alts = app.query_one("#alternatives")
        alts.focus()
        alts.highlighted = 1  # "maybe"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.exchanges) == 2 and app.exchanges[-1].status == "done")
        new = app.exchanges[-1]
        fake: FakeTranslator = app.translator
        prefix = fake.calls[-1][2]
        assert [fake.vocab[i] for i in prefix] == ["▁i", "▁maybe"]
        assert new.translation.best.pieces[:2] == ["▁i", "▁maybe"]
        assert new.translation.best.prefix_length == 2
        assert "forced" in new.label
        assert fake.drafts[-1] == ex.translation.best.token_ids  # the hypothesis it changes, as a draft of the rest


async def test_swap_direction(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "en-fr")
        assert "en-fr" in app.sub_title and "en→fr" in app.sub_title
        await submit(pilot, app, "the cat sleeps")
        assert app.exchanges[-1].text == "le chat dort"


async def test_exports_and_copy(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "le chat dort")
        app.select_token(app.exchanges[-1].id, 0, 1)
        await pilot.press("ctrl+o")
        await pilot.press("ctrl+s")
        await pilot.press("ctrl+y")
        await pilot.pause()
    files = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert any(f.endswith(".svg") for f in files) and any(f.endswith(".html") for f in files)
    assert any(f.startswith("transcript") and f.endswith(".md") for f in files)
    data = json.loads(next((tmp_path / "exports").glob("attention-*.json")).read_text())
    cross = app.exchanges[-1].translation.best.attention.cross[:, :, 1, :]
    np.testing.assert_allclose(np.array(data["layers_heads_source"]), cross)
    rows = list(csv.reader(next((tmp_path / "exports").glob("attention-*.csv")).open()))
    assert rows[0] == ["layer", "head", "le", "chat", "dort", "</s>"]
    assert float(rows[1][3]) == pytest.approx(cross[0, 0, 1])
    md = next((tmp_path / "exports").glob("transcript-*.md")).read_text()
    assert "le chat dort" in md and "the cat sleeps" in md
    assert app.clipboard == "the cat sleeps"


async def test_history_and_transcript_persist_and_clean_flag(tmp_path):
    app = make_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "le chat dort")
        await submit(pilot, app, "bonjour")
    app2 = make_app(tmp_path, store=True)
    async with app2.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert [e.source for e in app2.exchanges] == ["le chat dort", "bonjour"]
        assert app2.exchanges[0].status == "restored" and app2.exchanges[0].text == "the cat sleeps"
        await pilot.press("up")
        assert app2.query_one("#prompt").value == "bonjour"
        await pilot.press("up")
        assert app2.query_one("#prompt").value == "le chat dort"
        await pilot.press("down", "down")
        assert app2.query_one("#prompt").value == ""
        await pilot.click(".restored", offset=(4, 0))  # a restored exchange translates again, inspectable
        await wait_for(pilot, lambda: app2.exchanges[-1].status == "done")
        assert app2.exchanges[-1].source == "le chat dort" and app2.exchanges[-1].translation is not None
    clean = make_app(tmp_path, store=False)
    async with clean.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert clean.exchanges == []


async def test_new_request_cancels_previous_and_no_stale_result(tmp_path):
    gate = threading.Event()
    app = make_app(tmp_path, gate=gate)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        for text in ["le chat dort", "je suis étudiant", "bonjour"]:
            app.query_one("#prompt").value = text
            await pilot.press("enter")
        gate.set()
        await wait_for(pilot, lambda: app.exchanges[-1].status == "done")
        await app.workers.wait_for_complete()
        await pilot.pause(0.1)
        assert [e.status for e in app.exchanges] == ["cancelled", "cancelled", "done"]
        assert app.exchanges[-1].text == "hello"
        assert all(e.translation is None for e in app.exchanges[:2])
        assert not [w for w in app.workers if w.is_running]


async def test_live_mode_translates_while_typing(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        await pilot.press("f6")
        assert app.live
        await pilot.press(*"le chat")
        preview = app.query_one("#live-preview")
        await wait_for(pilot, lambda: "the cat" in str(preview.render()))
        assert app.exchanges == []  # live results do not enter the transcript until Enter
        fake: FakeTranslator = app.translator
        assert fake.drafts[0] is None  # nothing translated before the first request
        shown = fake.drafts.copy()
        await pilot.press(*" dort")
        await wait_for(pilot, lambda: "sleeps" in str(preview.render()))
        # the next request had the previous live translation as its draft
        drafted = [fake.vocab[i] for i in fake.drafts[len(shown)]]
        assert [p for p in drafted if p != "</s>"] == ["▁the", "▁cat"]
        # the preview keeps the partial text as its draft until the final translation's ids arrive
        await wait_for(pilot, lambda: isinstance(preview.draft[1], list))
        preview_ids = preview.draft[1]
        before_enter = len(fake.drafts)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.exchanges and app.exchanges[-1].status == "done")
        # Enter's request verifies the preview's translation instead of decoding from scratch
        assert fake.drafts[before_enter:] == [preview_ids]
        assert [p for p in (fake.vocab[i] for i in preview_ids) if p != "</s>"] == ["▁the", "▁cat", "▁sleeps"]
        assert app.exchanges[-1].text == "the cat sleeps"


async def test_live_keystroke_after_the_preview_is_gone_is_ignored(tmp_path):
    """A debounced keystroke can be delivered while the app shuts down, after the preview is unmounted."""
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        await pilot.press("f6")
        await app.query_one("#live-preview").remove()
        prompt = app.query_one("#prompt")
        prompt.post_message(prompt.LiveText("le chat"))
        await pilot.pause(0.1)
        assert app.is_running


async def test_empty_input_and_load_failure_notify_without_crashing(tmp_path):
    app = TranslateApp(fake_loader(), Path("/models/broken"), [], store=Store(None), export_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any("Could not load" in n.message for n in notices(app)))
        app.query_one("#prompt").value = "   "
        await pilot.press("enter")
        assert app.exchanges == []
        assert any("empty" in n.message for n in notices(app))
        app.query_one("#prompt").value = "bonjour"
        await pilot.press("enter")  # no model and none loading: said at once, nothing queued forever
        assert app.exchanges == [] and app.query_one("#prompt").value == "bonjour"
        assert any("No model is loaded" in n.message and "F3" in n.message for n in notices(app))


async def test_real_tiny_model_end_to_end(tmp_path, model_dir):
    from tui_translate.translator import load_translator

    app = TranslateApp(load_translator, model_dir, [model_dir], store=Store(None), export_dir=tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None, timeout=30)
        await submit(pilot, app, "le chat dort")
        t = app.exchanges[-1].translation
        assert t.text == app.translator.translate("le chat dort").text
        app.select_token(app.exchanges[-1].id, 0, 0)
        grid = app.query_one("#grid", AttentionGrid)
        np.testing.assert_allclose(grid.weights, t.best.attention.cross[:, :, 0, :])
        np.testing.assert_allclose(cell_weights(grid.weights, 2, 4, "mean"), t.best.attention.cross[:, :, 0, :].mean((0, 1)), atol=1e-6)


DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "fr-en"


@pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").exists(), reason="the default model is not shipped in this checkout")
async def test_shipped_default_model_in_the_app(tmp_path):
    from tui_translate.translator import load_translator

    app = TranslateApp(load_translator, DEFAULT_MODEL, [DEFAULT_MODEL], store=Store(None), export_dir=tmp_path,
                       decode_config=DecodeConfig(strategy="beam"))
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None, timeout=60)
        await submit(pilot, app, "Je suis étudiant.")
        assert "student" in app.exchanges[-1].text.lower()


async def test_long_input_becomes_one_inspectable_exchange_per_sentence(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        app.query_one("#prompt").value = "Le chat dort. Il est petit ! Je suis étudiant et le chat est bon."
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.exchanges) == 3 and all(e.status == "done" for e in app.exchanges))
        assert [e.source for e in app.exchanges] == ["Le chat dort.", "Il est petit !", "Je suis étudiant et le chat est bon."]
        assert [e.label.split(" · ")[-1] for e in app.exchanges] == ["sentence 1/3", "sentence 2/3", "sentence 3/3"]
        assert app.exchanges[1].text == "he is small"
        app.select_token(app.exchanges[1].id, 0, 1)
        np.testing.assert_allclose(app.query_one("#grid", AttentionGrid).weights,
                                   app.exchanges[1].translation.best.attention.cross[:, :, 1, :])
        app.query_one("#prompt").value = "x" * 6000
        await pilot.press("enter")
        assert len(app.exchanges) == 3 and any("limit" in n.message for n in notices(app))


async def test_inspector_stays_on_first_sentence_and_gc_is_kept_short(tmp_path, monkeypatch):
    import gc

    import tui_translate.ui.requests as requests_module

    monkeypatch.setattr(requests_module, "GC_EVERY_SENTENCES", 3)
    monkeypatch.setattr(requests_module, "GC_IDLE_SECONDS", 0.05)
    app = make_app(tmp_path)
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_for(pilot, lambda: app.translator is not None)
            assert gc.get_freeze_count() > 0  # libraries and model are out of the collector's view
            app.query_one("#prompt").value = "Le chat dort. Il est petit ! Je suis étudiant et le chat est bon."
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(app.exchanges) == 3 and all(e.status == "done" for e in app.exchanges))
            # later sentences of the paste did not take the inspector away from the first one
            assert app.selection == (app.exchanges[0].id, 0, 0)
            # 3 finished sentences and an idle app: one real collection ran and reset the count
            await wait_for(pilot, lambda: app.gc_policy.sentences_since_collect == 0)
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def test_finished_sentences_of_a_long_paste_are_shown_together(tmp_path, monkeypatch):
    """Showing a finished sentence lays out the whole transcript, so during a long paste finished sentences
    are shown in batches (at most every DONE_INTERVAL) and all of them at once when the request ends."""
    import tui_translate.ui.widgets.transcript as transcript_module

    monkeypatch.setattr(transcript_module, "DONE_INTERVAL", 60.0)  # no timer flush inside the test: only the edges
    app = make_app(tmp_path)
    batches: list[list[int]] = []

    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        transcript = app.transcript
        original = transcript.flush

        def flush() -> None:
            if transcript.pending:
                batches.append([ex.id for ex in transcript.pending])
            original()

        monkeypatch.setattr(transcript, "flush", flush)
        text = " ".join(["Le chat dort.", "Il est petit !", "Je suis étudiant.", "Le chat est bon.", "Il dort."])
        app.query_one("#prompt").value = text
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.exchanges) == 5 and all(e.status == "done" for e in app.exchanges))
        await pilot.pause()
        ids = [e.id for e in app.exchanges]
        # the first sentence at once, the three middle ones held back, then everything with the last
        assert batches == [ids[:1], ids[1:]] and transcript.pending == [] and not transcript.flush_scheduled
        for ex in app.exchanges:  # every view shows its tokens, none is left "translating…"
            view = app.query_one(f"#ex-{ex.id}")
            assert [s.hypothesis.text for s in view.query(TokenStrip)] == [ex.text]
        assert app.selection == (ids[0], 0, 0)


async def test_transcript_keeps_at_most_the_visible_limit_on_screen(tmp_path, monkeypatch):
    """A restored transcript longer than the limit shows only its newest exchanges (every layout costs time in
    proportion to the widgets on screen), and new requests, even two in quick succession or a paste longer
    than the limit, never leave more than the limit mounted; all exchanges stay in the transcript."""
    import tui_translate.ui.widgets.transcript as transcript_module
    from tui_translate.ui.widgets.exchange import ExchangeView

    monkeypatch.setattr(transcript_module, "MAX_VISIBLE_EXCHANGES", 4)
    store = Store(tmp_path / "data")
    store.save_transcript([{"source": f"phrase {i}", "translation": f"sentence {i}", "strategy": "greedy", "model": "fr-en"}
                           for i in range(10)])
    app = make_app(tmp_path, store=True)

    def shown() -> list[str]:
        return [v.exchange.source for v in app.query(ExchangeView) if v.display]

    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert len(app.exchanges) == 10 and shown() == [f"phrase {i}" for i in range(6, 10)]
        await submit(pilot, app, "le chat dort")
        assert shown() == ["phrase 7", "phrase 8", "phrase 9", "le chat dort"]
        await wait_for(pilot, lambda: app.translator is not None)
        for text in ("Il dort. Le chat dort.", "Le chat dort. Il est petit ! Je suis étudiant. Il dort. Bonjour."):
            app.query_one("#prompt").value = text
            await pilot.press("enter")  # the second request supersedes the first before it is laid out
        await wait_for(pilot, lambda: app.exchanges[-1].status == "done")
        await pilot.pause()
        assert shown() == ["Il est petit !", "Je suis étudiant.", "Il dort.", "Bonjour."]
        assert len(list(app.query(ExchangeView))) == 4 and len(app.exchanges) == 10 + 1 + 2 + 5


async def test_typing_in_the_prompt_scrolls_it_without_laying_out_the_screen(tmp_path):
    """Textual's input changes its virtual size at every key; in the prompt that only repaints (a layout of the
    screen per key cost 25-30 ms with a full transcript), and long text still scrolls to the cursor."""
    app = make_app(tmp_path)
    async with app.run_test(size=(60, 32)) as pilot:
        await submit(pilot, app, "le chat dort")
        await pilot.pause()
        layouts = []
        app.screen.screen_layout_refresh_signal.subscribe(app.screen, lambda screen: layouts.append(1), immediate=True)
        prompt = app.query_one("#prompt")
        prompt.focus()
        await pilot.press(*("abcdefghij" * 9))
        await pilot.pause()
        assert prompt.value == "abcdefghij" * 9
        assert len(layouts) <= 2, len(layouts)  # was one per key
        assert prompt.scroll_x > 0 and prompt.cursor_position == 90  # scrolled to keep the cursor in view
        await pilot.press("home")
        await pilot.pause()
        assert prompt.scroll_x == 0


# -- issue 15: what a new user met --------------------------------------------------------------------------------

def _luminance(rgb) -> float:
    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])


def _contrast(a, b) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def rendered_segments(widget):
    """The segments the widget paints, with the colours that reach the terminal (link styles included)."""
    from textual.geometry import Region

    for strip in widget.render_lines(Region(0, 0, widget.size.width, widget.size.height)):
        for seg in strip:
            if seg.text.strip() and seg.style is not None and seg.style.color and seg.style.bgcolor:
                fg, bg = seg.style.color.get_truecolor(), seg.style.bgcolor.get_truecolor()
                if seg.style.reverse:
                    fg, bg = bg, fg
                yield seg.text, fg, bg


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
async def test_grid_cells_and_confidence_colours_are_readable(tmp_path, theme):
    """Bugs 1-2: the clickable cells' link colour painted over the colour picked for each weight (grey on
    yellow, 1.2:1), and over the confidence colours (F7 changed nothing)."""
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        app.theme = theme
        await submit(pilot, app, "je suis étudiant")
        await pilot.pause()
        grid = app.query_one("#grid", AttentionGrid)
        labels = set(app.exchanges[-1].translation.source_labels())
        cells = [(t, fg, bg) for t, fg, bg in rendered_segments(grid) if t.strip() in labels]
        assert len(cells) >= 4 * len(labels)  # every (layer, head) cell shows every source piece
        for text, fg, bg in cells:
            assert _contrast(fg, bg) >= 4.5, (text, fg, bg)
        for text, fg, bg in rendered_segments(grid):
            assert _contrast(fg, bg) >= 3, (text, fg, bg)
        strip = app.query(TokenStrip).last()
        before = list(rendered_segments(strip))
        await pilot.press("f7")
        await pilot.pause()
        after = list(rendered_segments(strip))
        assert before != after
        probs = strip.hypothesis.token_probs
        from rich.color import Color

        from tui_translate.colormap import confidence_color

        shaded = {Color.parse(confidence_color(p)).get_truecolor() for p in probs}
        token_bgs = {bg for t, fg, bg in after if t.strip() in {"i", "am", "a", "student"} and fg not in shaded}
        assert len(token_bgs) >= 3 and token_bgs <= shaded  # (the selected token is drawn reversed)
        for text, fg, bg in after:
            assert _contrast(fg, bg) >= (4.5 if bg in shaded or fg in shaded else 3), (text, fg, bg)


async def test_keys_typed_outside_the_prompt_reach_it_and_the_draft_survives(tmp_path):
    """Bugs 3-4: after Esc (a translation focused), after choosing an alternative, or with nothing focused,
    printable keys were lost (`?` opened the help); going to a translation and back selected the draft and
    the next key replaced it."""
    from textual.widgets import OptionList

    app = make_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        prompt = app.query_one("#prompt")
        await pilot.press("escape")
        assert isinstance(app.focused, TokenStrip)
        await pilot.press(*"Où ?")
        assert prompt.value == "Où ?" and app.focused is prompt and app.screen is app.screen_stack[0]
        prompt.value = ""
        await pilot.press(*"Bonjour", "escape", "escape", *" toi")
        assert prompt.value == "Bonjour toi"
        prompt.value = ""
        # choose an alternative with Enter, then type the next sentence and Enter: it is translated
        ex = app.exchanges[-1]
        app.select_token(ex.id, 0, 1)
        alts = app.query_one("#alternatives", OptionList)
        alts.focus()
        alts.highlighted = 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.exchanges) == 2 and app.exchanges[-1].status == "done")
        await pilot.press(*"le chat dort", "enter")
        await wait_for(pilot, lambda: len(app.exchanges) == 3 and app.exchanges[-1].status == "done")
        assert app.exchanges[-1].source == "le chat dort"
        app.set_focus(None)
        await pilot.press(*"il dort")
        assert prompt.value == "il dort"


async def test_a_multi_line_paste_is_translated_whole(tmp_path):
    """Bug 5: Textual's Input kept only the first line of a paste."""
    from textual import events

    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        prompt = app.query_one("#prompt")
        prompt.post_message(events.Paste("Bonjour à tous.\nJe viens de Lyon.\r\n\nMerci."))
        await pilot.pause()
        assert prompt.value == "Bonjour à tous. Je viens de Lyon. Merci."
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.exchanges) == 3 and all(e.status == "done" for e in app.exchanges))
        assert [e.source for e in app.exchanges] == ["Bonjour à tous.", "Je viens de Lyon.", "Merci."]


async def test_layout_follows_the_new_width_and_the_latest_exchange_stays_in_view(tmp_path):
    """Bug 6: the side-by-side layout was decided on the size before the resize, and the transcript lost
    the latest exchange after a resize."""
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        for i in range(12):
            await submit(pilot, app, f"le chat dort {i}")
        assert app.screen.has_class("wide")
        transcript = app.query_one("#transcript")
        for width, wide in ((100, False), (121, True), (119, False), (120, True)):
            await pilot.resize_terminal(width, 40)
            await pilot.pause()
            await pilot.pause()
            assert app.screen.has_class("wide") == wide, width
            assert transcript.scroll_y == transcript.max_scroll_y > 0, width


async def test_the_translator_s_notice_is_shown_once_after_loading(tmp_path):
    """A translator with something to say about its engine (the compiled decoder step still being built, or no
    compiler here) says it once after loading, not again at every model switch; none says nothing."""
    said = "building the compiled decoder step in the background (once per machine); using the Python step meanwhile"

    def loader(path):
        translator = fake_loader()(path)
        translator.notice = said
        return translator

    app = TranslateApp(loader, FR, [FR, EN], store=Store(None), export_dir=tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "en-fr")
        shown = [n.message for n in notices(app) if "compiled decoder step" in n.message]
        assert shown == ["Building the compiled decoder step in the background (once per machine); using the Python step meanwhile."]
    quiet = make_app(tmp_path)
    async with quiet.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: quiet.translator is not None)
        await pilot.pause(0.05)
        assert [n.message for n in notices(quiet) if "ready" not in n.message] == []


async def test_translations_shown_while_the_app_closes_are_saved_without_a_crash(tmp_path):
    """Found by the bench: quitting while a long paste was still being shown raised NoMatches('Inspector')
    from the handler that moves the inspector to the first finished sentence."""
    from tui_translate.ui.widgets.inspector import Inspector
    from tui_translate.ui.widgets.transcript import Transcript

    app = make_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        done = app.exchanges[-1]
        await app.main_screen.query_one(Inspector).remove()  # as at exit, after the widgets are taken down
        app.post_message(Transcript.Shown([done]))
        await pilot.pause(0.05)
    assert app.return_code in (0, None)
    assert any(r["source"] == "je suis étudiant" for r in Store(tmp_path / "data").load_transcript())


async def test_requests_never_wait_for_a_model_that_failed_and_a_new_model_gets_none_of_them(tmp_path):
    """Bug 8: with a model that cannot load, requests queued forever on 'waiting for the model to load…';
    F3 then loaded en-fr and fed it the queued French input."""
    gate = threading.Event()
    loads = {"n": 0}

    def loader(path):
        loads["n"] += 1
        gate.wait(5)
        return fake_loader()(path)

    app = TranslateApp(loader, Path("/models/broken"), [Path("/models/broken"), EN], store=Store(None), export_dir=tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        app.query_one("#prompt").value = "bonjour"
        await pilot.press("enter")  # while the model loads: queued
        assert app.exchanges[-1].partial == "waiting for the model to load…"
        gate.set()
        await wait_for(pilot, lambda: app.exchanges[-1].status == "failed")
        assert "could not load broken" in app.exchanges[-1].error and "F3" in app.exchanges[-1].error
        app.query_one("#prompt").value = "le chat"
        await pilot.press("enter")
        assert len(app.exchanges) == 1
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "en-fr")
        await pilot.pause(0.1)
        assert app.translator.calls == []  # nothing queued for the broken model went to en-fr


async def test_a_restored_exchange_is_translated_again_by_the_model_that_made_it(tmp_path):
    """Bug 7: a restored English exchange, clicked after a restart, went to fr-en with no warning."""
    store = Store(tmp_path / "data")
    store.save_transcript([{"source": "the cat sleeps", "translation": "le chat dort", "strategy": "greedy", "model": "en-fr"}])
    app = make_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        await pilot.pause(0.1)
        await pilot.click(".restored", offset=(4, 0))
        await wait_for(pilot, lambda: len(app.exchanges) == 2 and app.exchanges[-1].status == "done")
        assert app.translator.name == "en-fr" and app.exchanges[-1].model == "en-fr"
        assert app.exchanges[-1].text == "le chat dort"
        assert any("en-fr" in n.message for n in notices(app))


async def test_rerun_shows_the_earlier_result_beneath_the_new_one(tmp_path):
    """Bug 9: 'Apply & re-run last' promised a comparison but only added an exchange underneath."""
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 36)) as pilot:
        await submit(pilot, app, "le chat dort. il dort.")
        app.decode_config = DecodeConfig(strategy="sample", seed=3)
        await pilot.press("f5")
        await wait_for(pilot, lambda: len(app.exchanges) == 4 and all(e.status == "done" for e in app.exchanges))
        for old, new in zip(app.exchanges[:2], app.exchanges[2:]):
            view = app.query_one(f"#ex-{new.id}")
            shown = str(view.query_one(".compare").render())
            assert "greedy" in shown and old.text in shown and new.text != old.text
        fake: FakeTranslator = app.translator
        assert fake.drafts[-2:] == [old.translation.best.token_ids for old in app.exchanges[:2]]  # earlier results as drafts


async def test_strategy_panel_starts_on_the_active_strategy_and_an_empty_seed_means_random(tmp_path):
    """Bug 10: the panel highlighted greedy with beam active (Up+Enter then picked sample); an empty seed
    gave "seed: '' is not a valid int"."""
    app = TranslateApp(fake_loader(), FR, [FR, EN], store=Store(None), export_dir=tmp_path, decode_config=DecodeConfig(strategy="beam"))
    async with app.run_test(size=(100, 36)) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        await pilot.press("up", "enter")  # the highlight moves from beam to greedy and presses it
        await pilot.pause()
        assert app.screen.query_one("#strategy").pressed_button.id == "strategy-greedy"
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        app.screen.query_one("#seed").value = ""
        await pilot.click("#apply")
        await pilot.pause()
        assert app.decode_config.strategy == "sample" and app.decode_config.seed is None
        # feature 14: each run draws a fresh seed and its label names it, so the sample can be reproduced
        await submit(pilot, app, "le chat dort")
        await submit(pilot, app, "le chat dort")
        seeds = [call[1].seed for call in app.translator.calls]
        assert all(isinstance(x, int) for x in seeds) and seeds[0] != seeds[1]
        assert [f"seed={x}" in e.label for x, e in zip(seeds, app.exchanges)] == [True, True]


async def test_strings_from_users_and_files_are_never_parsed_as_markup(tmp_path):
    """Issue 18 item 4: a transcript record with "model": "[/]" crashed the app at every start, and so did a
    model path or name containing `[/]`."""
    store = Store(tmp_path / "data")
    store.save_transcript([{"source": "[b]le chat[/", "translation": "[/]", "strategy": "[red]", "model": "[/]"}])
    app = TranslateApp(fake_loader(), Path("/models/no[/]broken"), [Path("/models/no[/]broken"), Path("/models/[b]fr-en")],
                       store=store, export_dir=tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: any("Could not load" in n.message for n in notices(app)))
        await pilot.pause()
        assert "[/]" in str(app.query_one(".exchange .meta").render())
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.translator is not None)
        await submit(pilot, app, "le [/] chat [b]")
        app.select_token(app.exchanges[-1].id, 0, 1)
        await pilot.press("f6", *" [/]")
        await pilot.pause(0.5)
        await pilot.press("f2")
        app.screen.query_one("#seed").value = "[/]"
        await pilot.click("#strategy-sample")
        await pilot.click("#apply")
        await pilot.pause()
        assert "[/]" in str(app.screen.query_one("#decode-error").render())
        app.save_screenshot(str(tmp_path / "shot.svg"))
        assert "[b]fr-en" in app.sub_title


@pytest.mark.parametrize("fault", ["file", "readonly", "full"])
async def test_the_app_keeps_working_when_the_data_dir_cannot_be_written(tmp_path, monkeypatch, fault):
    """Issue 18 item 3: Enter crashed the app when the data dir was a file, read-only or full (the history
    save was outside the transcript save's guard). Now it says so once and loses nothing on screen."""
    import errno

    import tui_translate.ui.store as store_module

    data = tmp_path / "data"
    if fault == "file":
        data.write_text("x")
    else:
        code = errno.EROFS if fault == "readonly" else errno.ENOSPC

        def fail(*a, **k):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(store_module, "write_text", fail)
        monkeypatch.setattr(store_module, "open", fail, raising=False)
    app = make_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "le chat dort")
        await submit(pilot, app, "je suis étudiant")
        await pilot.press("up")
        assert app.query_one("#prompt").value == "je suis étudiant"
        assert [e.text for e in app.exchanges] == ["the cat sleeps", "i am a student"]
        warnings = [n.message for n in notices(app) if "not being saved" in n.message]
        assert len(warnings) == 1


async def test_two_apps_on_one_data_dir_keep_every_entry(tmp_path):
    """Issue 18 item 2: each instance overwrote the other's transcript and history; now both append."""
    a, b = make_app(tmp_path, store=True), make_app(tmp_path, store=True)
    async with a.run_test(size=(100, 32)) as pa, b.run_test(size=(100, 32)) as pb:
        await submit(pa, a, "le chat dort")
        await submit(pb, b, "je suis étudiant")
        await submit(pa, a, "bonjour")
        await submit(pb, b, "il est petit")
    store = Store(tmp_path / "data")
    assert [r["source"] for r in store.load_transcript()] == ["le chat dort", "je suis étudiant", "bonjour", "il est petit"]
    assert store.load_history() == ["le chat dort", "je suis étudiant", "bonjour", "il est petit"]
    c = make_app(tmp_path, store=True)
    async with c.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert [e.text for e in c.exchanges] == ["the cat sleeps", "i am a student", "hello", "he is small"]


def test_store_appends_from_many_writers_and_compacts_to_the_newest(tmp_path, monkeypatch):
    import tui_translate.ui.store as store_module

    stores = [Store(tmp_path), Store(tmp_path)]

    def write(k: int) -> None:
        for i in range(30):
            stores[k].add_history(f"{k}-{i}")

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = Store(tmp_path).load_history()
    for k in (0, 1):  # nothing lost, each writer's entries in its own order
        assert [x for x in history if x.startswith(f"{k}-")] == [f"{k}-{i}" for i in range(30)]
    monkeypatch.setattr(store_module, "MAX_HISTORY", 10)
    one = Store(tmp_path / "one")
    for i in range(25):
        one.add_history(str(i))
    assert len((tmp_path / "one" / "history.jsonl").read_text().splitlines()) <= 20  # compacted past twice the limit
    assert one.load_history() == [str(i) for i in range(15, 25)]


def test_fake_and_real_translators_satisfy_the_app_protocol(model_dir):
    from tui_translate.protocols import TranslatorLike
    from tui_translate.translator import load_translator

    assert isinstance(FakeTranslator(FR), TranslatorLike)
    assert isinstance(load_translator(model_dir), TranslatorLike)
    assert not isinstance(object(), TranslatorLike)


async def test_typed_language_picks_the_direction_and_an_unhandled_language_is_refused(tmp_path):
    """Feature 11: English typed on fr-en switches to en-fr with a notice (ctrl+z goes back and
    re-translates with fr-en); a language no model handles gets a notice instead of invented output."""
    from tui_translate import langid

    app = make_app(tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None and langid.is_warm(), timeout=60)
        await submit(pilot, app, "the cat sleeps")
        assert app.translator.name == "en-fr" and app.exchanges[-1].text == "le chat dort"
        assert any("English" in n.message and "ctrl+z" in n.message for n in notices(app))
        await pilot.press("ctrl+z")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "fr-en"
                       and app.exchanges[-1].status == "done" and app.exchanges[-1].model == "fr-en")
        assert app.exchanges[-1].source == "the cat sleeps"
        await submit(pilot, app, "je suis étudiant")  # French on fr-en: no change
        assert app.translator.name == "fr-en" and app.exchanges[-1].text == "i am a student"
        n = len(app.exchanges)
        prompt = app.query_one("#prompt")
        prompt.value = "Ich habe heute keine Zeit für dich."
        await pilot.press("enter")
        assert len(app.exchanges) == n and prompt.value.startswith("Ich")
        assert any("German" in m.message and "no model" in m.message for m in notices(app))
        await pilot.press("enter")  # again: translated anyway
        await wait_for(pilot, lambda: len(app.exchanges) == n + 1 and app.exchanges[-1].status == "done")


def test_the_language_detector_runs_in_its_own_process():
    """lingua holds the GIL for the seconds its models take to load: run in the app's process it froze the
    screen and keys then. It runs in a helper process: warming and asking never import lingua here (the app
    only maps language codes with it, in milliseconds), the answers are the same, text lingua cannot take is
    "unsure" without killing the helper, and a dead helper means "unsure"."""
    code = """
import sys
from tui_translate import langid
langid.warm_up()
answers = [langid.detect(t) for t in ("the cat sleeps on the sofa", "je suis étudiant", "Ich habe heute keine Zeit für dich.",
                                      "bad \\ud800 text", "the cat sleeps on the sofa")]
print(answers, "lingua" in sys.modules)
langid._ready[1]._proc.kill()
langid._ready[1]._proc.wait()
print(langid.detect("the cat sleeps on the sofa"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert out == ["['en', 'fr', 'de', None, 'en'] False", "None"], out


def test_a_language_detector_that_cannot_start_leaves_detection_off(monkeypatch):
    from tui_translate import langid

    monkeypatch.setattr(langid, "_ready", None)
    monkeypatch.setattr(langid.sys, "executable", "/nonexistent/python")
    langid.warm_up()  # no exception: the app's worker would take the app down with it
    assert not langid.is_warm() and langid.detect("the cat sleeps on the sofa") is None


@pytest.mark.parametrize("confidence, flagged", [(1.0, False), (0.3, True)])
async def test_translations_the_model_doubts_are_flagged(tmp_path, confidence, flagged):
    """Feature 15: a translation whose tokens the model itself gave low probability is marked."""
    app = make_app(tmp_path, confidence=confidence)
    async with app.run_test(size=(100, 32)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        await pilot.pause()
        meta = app.query_one(f"#ex-{app.exchanges[-1].id} .meta")
        assert ("low confidence" in str(meta.render())) == flagged and meta.has_class("low") == flagged


async def test_settings_persist_across_restarts(tmp_path):
    """Feature 13: model/direction, strategy and its parameters, theme, confidence and live toggles."""
    app = make_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        app.decode_config = DecodeConfig(strategy="beam", beam_size=3, length_penalty=1.0)
        app.theme = "textual-light"
        await pilot.press("f7", "f6", "f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "en-fr")
    again = make_app(tmp_path, store=True)
    async with again.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: again.translator is not None)
        assert again.translator.name == "en-fr"
        assert again.decode_config == DecodeConfig(strategy="beam", beam_size=3, length_penalty=1.0)
        assert again.theme == "textual-light" and again.live and again.transcript.confidence
    named = TranslateApp(fake_loader(), FR, [FR, EN], store=Store(tmp_path / "data"), export_dir=tmp_path, remember_model=False)
    async with named.run_test(size=(100, 32)) as pilot:  # a model named on the command line wins
        await wait_for(pilot, lambda: named.translator is not None)
        assert named.translator.name == "fr-en" and named.decode_config.beam_size == 3
    (tmp_path / "data" / "settings.json").write_text('{"decoding": {"beam_size": -4}, "theme": 3, "model": [1]}')
    damaged = make_app(tmp_path, store=True)
    async with damaged.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: damaged.translator is not None)
        assert damaged.decode_config == DecodeConfig() and damaged.translator.name == "fr-en"


async def test_the_selected_tokens_attention_shades_the_source_words(tmp_path):
    """Feature 12: the source line shows which words the selected output token attends to (the grid's focused
    layer/head or aggregate), as BertViz does."""
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        ex = app.exchanges[-1]
        source = app.query_one(f"#ex-{ex.id} .source")

        def shaded() -> set[str]:
            return {t.strip() for t, fg, bg in rendered_segments(source) if t.strip() and bg == (0xFD, 0xE7, 0x25)}

        app.select_token(ex.id, 0, 2)  # layer 0, head 0 of token 3 looks at "étudiant" (0.9)
        await pilot.pause()
        assert shaded() == {"étudiant"}
        grid = app.query_one("#grid", AttentionGrid)
        grid.cursor = (0, 2)  # head 2 of token 3 looks at "je"
        await pilot.pause()
        assert shaded() == {"je"}
        await submit(pilot, app, "le chat dort")  # the selection moves on: the old line is cleared
        await pilot.pause()
        assert shaded() == set()


async def test_tab_visits_the_stops_the_help_lists_and_grid_cells_show_whole_pieces(tmp_path):
    """Feature 16: Tab goes input → translations → grid → alternatives (not the scrolling containers), and
    a grid cell shows `étudiant`, not `étud`."""
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await submit(pilot, app, "je suis étudiant")
        stops = []
        for _ in range(5):
            await pilot.press("tab")
            stops.append(type(app.focused).__name__ if app.focused.id is None else app.focused.id)
        assert stops == ["TokenStrip", "grid", "alternatives", "prompt", "TokenStrip"]
        grid = app.query_one("#grid", AttentionGrid)
        cells = [t.strip() for t, fg, bg in rendered_segments(grid)]
        assert cells.count("étudiant") >= 8 and "étud" not in cells


def widget_lines(widget) -> list[str]:
    """The text the widget paints, line by line."""
    from textual.geometry import Region

    return ["".join(seg.text for seg in strip).rstrip()
            for strip in widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))]


def screen_lines(app) -> list[str]:
    """The whole screen as text, read from the app's own SVG screenshot (App.export_screenshot): one string
    per terminal row."""
    import html
    import re

    rows: dict[int, dict[int, str]] = {}
    pattern = r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" clip-path="url\(#[^)]*?line-(\d+)\)">([^<]*)</text>'
    for m in re.finditer(pattern, app.export_screenshot()):
        column = round(float(m.group(1)) / 12.2)  # Rich's SVG export: 12.2 px per cell
        row = rows.setdefault(int(m.group(2)), {})
        for i, ch in enumerate(html.unescape(m.group(3)).replace("\xa0", " ")):
            row[column + i] = ch
    return ["".join(rows.get(y, {}).get(x, " ") for x in range(app.size.width)).rstrip() for y in range(app.size.height)]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_meta_line_wraps_only_between_labels(tmp_path, size):
    """Feature 16: the line under a translation broke inside its labels ("42" at the end of one line, "ms"
    on the next; "score" / "-0.260"; the restored hint anywhere). Labels are whole on every line."""
    store = Store(tmp_path / "data")
    store.save_transcript([{"source": "il fait beau", "translation": "it is nice", "strategy": "greedy", "model": "fr-en"}])
    app = TranslateApp(fake_loader(confidence=0.3), FR, [FR, EN], store=Store(tmp_path / "data"), export_dir=tmp_path,
                       decode_config=DecodeConfig(strategy="beam", top_beams=3))
    async with app.run_test(size=size) as pilot:
        await submit(pilot, app, "je suis étudiant. le chat dort.")
        await wait_for(pilot, lambda: all(e.status == "done" for e in app.exchanges[1:]))
        await pilot.pause()
        wrapped = 0
        for ex in app.exchanges:
            expected = [ex.model, *ex.label.split(" · ")]
            if ex.translation is None:
                expected += ["from an earlier session", "click it to translate again and inspect"]
            else:
                best = ex.translation.best
                expected = [f"⚠ low confidence ({model_confidence(best):.2f})", *expected,
                            f"{ex.translation.elapsed_s * 1000:.0f} ms", f"score {best.score:.3f}", "3-best"]
            lines = [line.strip() for line in widget_lines(app.query_one(f"#ex-{ex.id} .meta"))]
            assert [label for line in lines for label in line.split(" · ")] == expected, lines
            assert " · ".join(lines) == " · ".join(expected)  # nothing lost or added between the lines
            wrapped += len(lines) > 1
        assert wrapped >= 2  # the labels are too long for one line at this width: the test wraps them


@pytest.mark.parametrize("size", [(80, 24), (90, 24), (120, 40)])
async def test_the_footer_shows_every_key_that_matters_without_scrolling(tmp_path, size):
    """Feature 16: at 80 columns the footer scrolled, F9, copy and the exports were off screen."""
    from textual.widgets import Footer

    app = make_app(tmp_path)
    async with app.run_test(size=size) as pilot:
        await submit(pilot, app, "je suis étudiant")
        for focus in ("prompt", "translation", "grid"):
            if focus == "translation":
                await pilot.press("escape")
            elif focus == "grid":
                app.query_one("#grid").focus()
            await wait_for(pilot, lambda: "f1 help" in screen_lines(app)[-1])  # the footer recomposes on a new focus
            footer = app.query_one(Footer)
            assert footer.max_scroll_x == 0
            row = screen_lines(app)[-1]
            for key in ("f1 help", "f2 strategy", "f3 model", "f4 f8 f9 view", "f7 confidence", "^y copy", "^s ^o export"):
                assert key in row, (focus, row)
            assert ("^p palette" in row) == (size[0] >= 90), row


def test_the_help_lists_every_key():
    """The keys left out of the footer (F5, F6, ctrl+z, the palette) are in the help, with all the others."""
    from tui_translate.ui.screens.help import HELP

    keys = {b.key for b in TranslateApp.BINDINGS} | {"ctrl+p", "ctrl+q"}
    for key in keys:
        shown = {"escape": "Esc"}.get(key, key.upper() if key.startswith("f") else key)
        assert f"| {shown} |" in HELP, key


# -- the model switcher and Hugging Face Hub models (issue 17 items 3 and 4) ----------------------------------
DE_HUB, ES_HUB, RU_HUB = "Helsinki-NLP/opus-mt-de-en", "Helsinki-NLP/opus-mt-es-en", "Helsinki-NLP/opus-mt-ru-en"


def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline, and no shipped or converted models: the catalog
    (hub.list_models, as `tui-translate models` lists) holds only what a test puts in the cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUI_TRANSLATE_MODELS", str(tmp_path / "no-shipped-models"))
    monkeypatch.setenv("TUI_TRANSLATE_DATA", str(tmp_path / "no-data"))
    return tmp_path / "hf-cache"


def hub_app(tmp_path: Path, store: bool = False, **kw) -> TranslateApp:
    from tui_translate import hub

    return TranslateApp(fake_loader(), FR, [FR, EN], store=Store(tmp_path / "data" if store else None), export_dir=tmp_path,
                        catalog=hub.list_models, **kw)


async def test_the_switcher_lists_cached_hub_models_and_f3_cycles_on_after_one_loads(tmp_path, monkeypatch):
    from tests.fakes import fill_hub_cache

    cache = hub_cache(tmp_path, monkeypatch)
    fill_hub_cache(cache, DE_HUB, "deu", "eng")  # Marian's tokenizer_config may name languages in ISO 639-3
    fill_hub_cache(cache, ES_HUB, "es", "en")
    app = hub_app(tmp_path, store=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        assert app.models == [FR, EN, Path(DE_HUB), Path(ES_HUB)]
        helps = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert helps[f"Use model: {DE_HUB}"].startswith("deu-eng · hub · ") and f"Use model: {ES_HUB}" in helps
        await pilot.press("f3", "f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == DE_HUB)
        assert app.model_path == Path(DE_HUB)  # the id, not the snapshot directory it loaded from
        assert (app.translator.source_lang, app.translator.target_lang) == ("deu", "eng") and "deu→eng" in app.sub_title
        await pilot.press("f3")  # on to the next model, not back to the first
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == ES_HUB)
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "fr-en")
        await pilot.press("f3", "f3", "f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == ES_HUB)
    again = hub_app(tmp_path, store=True)
    async with again.run_test(size=(100, 32)) as pilot:  # the settings remember the Hub model by its id
        await wait_for(pilot, lambda: again.translator is not None)
        assert again.translator.name == ES_HUB and again.model_path == Path(ES_HUB)


async def palette_open(pilot, app, query: str) -> None:
    from textual.command import CommandInput, CommandList, CommandPalette

    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
    app.screen.query_one(CommandInput).value = query
    commands = app.screen.query_one(CommandList)
    await wait_for(pilot, lambda: commands.option_count and "Open Hugging Face model" in str(commands.get_option_at_index(0).prompt))
    await pilot.press("down", "enter")


async def test_a_hub_id_typed_into_the_palette_opens_and_an_uncached_one_offline_is_one_notice(tmp_path, monkeypatch):
    from tests.fakes import fill_hub_cache

    fill_hub_cache(hub_cache(tmp_path, monkeypatch), DE_HUB, "de", "en")
    app = TranslateApp(fake_loader(), FR, [FR, EN], store=Store(None), export_dir=tmp_path)  # no catalog: typed ids still open
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None)
        await palette_open(pilot, app, DE_HUB)
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == DE_HUB)
        assert app.model_path == Path(DE_HUB) and app.models == [FR, EN, Path(DE_HUB)] and "de→en" in app.sub_title
        await submit(pilot, app, "guten tag")
        assert app.exchanges[-1].model == DE_HUB
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.translator is not None and app.translator.name == "fr-en")

        missing = "Helsinki-NLP/opus-mt-fi-en"
        await palette_open(pilot, app, missing)
        await pilot.pause()
        errors = [n.message for n in notices(app) if n.severity == "error"]
        assert errors == [f"{missing} is not in the Hugging Face cache ({tmp_path / 'hf-cache'}) and HF_HUB_OFFLINE is set (nor is "
                          f"it a local directory); run `tui-translate models pull {missing}` while online"]
        assert app.translator is not None and app.translator.name == "fr-en" and not app.loading  # the model in use stays


async def test_language_detection_uses_the_models_own_language_pairs(tmp_path, monkeypatch):
    """Russian is none of the detector's usual languages: a cached ru-en Hub model (its pair written `rus`-`eng`
    in its tokenizer_config.json) makes Russian recognised, and typing it switches to that model."""
    from tests.fakes import fill_hub_cache
    from tui_translate import langid

    fill_hub_cache(hub_cache(tmp_path, monkeypatch), RU_HUB, "rus", "eng")
    app = hub_app(tmp_path)
    russian = "Я не знаю, что сказать тебе сегодня."
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.translator is not None and langid.is_warm(), timeout=60)
        await submit(pilot, app, russian)
        assert app.translator.name == RU_HUB and app.translator.source_lang == "rus" and app.exchanges[-1].model == RU_HUB
        assert [n.message for n in notices(app) if "looks like" in n.message] == [
            f"This looks like Russian: switched to {RU_HUB}. ctrl+z goes back to fr-en."]
        await submit(pilot, app, russian)  # Russian typed on the Russian model: neither refused nor switched
        assert app.translator.name == RU_HUB and len([n for n in notices(app) if "looks like" in n.message]) == 1
        n = len(app.exchanges)
        app.query_one("#prompt").value = "Ich habe heute keine Zeit für dich."
        await pilot.press("enter")
        assert len(app.exchanges) == n
        assert any("German" in m.message and "no model" in m.message and RU_HUB in m.message for m in notices(app))
