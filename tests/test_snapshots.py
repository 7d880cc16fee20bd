"""SVG snapshots of the main states at 80×24 and 120×40 (pytest-textual-snapshot).

Regenerate after an intended visual change with: pytest tests/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import fake_loader
from tui_translate.ui.app import TranslateApp
from tui_translate.ui.store import Store

SIZES = [(80, 24), (120, 40)]


def make_app(**kw) -> TranslateApp:
    return TranslateApp(fake_loader(), Path("/models/fr-en"), [Path("/models/fr-en"), Path("/models/en-fr")],
                        store=Store(None), export_dir=Path("/nonexistent"), **kw)


async def settle(pilot) -> None:
    app = pilot.app
    def quiet() -> bool:
        # decoded, every finished sentence shown (not waiting for the transcript's batching timer), and the
        # inspector following a translation when there is one: under CI load each of these can lag the last
        for ex in app.exchanges:
            if ex.status == "running":
                return False
        if app.translator is None or app.transcript.flush_scheduled or app.transcript.pending:
            return False
        return app.selection is not None or not any(e.has_tokens() for e in app.exchanges)

    for _ in range(400):
        if quiet():
            break
        await pilot.pause(0.02)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)
    app.clear_notifications()
    app.query_one("#prompt").cursor_blink = False
    await pilot.pause(0.05)


async def translated(pilot) -> None:
    await settle(pilot)
    pilot.app.query_one("#prompt").value = "je suis étudiant"
    await pilot.press("enter")
    await settle(pilot)
    await pilot.press("escape", "right", "right")
    await settle(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_empty(snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_translated_with_grid(snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=translated)


@pytest.mark.parametrize("size", SIZES)
def test_nbest_with_long_meta_lines(snap_compare, size):
    """Two sentences decoded with beam search, 3-best: the meta lines wrap between whole labels."""
    from tui_translate.config import DecodeConfig

    async def run(pilot):
        await settle(pilot)
        pilot.app.query_one("#prompt").value = "je suis étudiant. le chat dort."
        await pilot.press("enter")
        await settle(pilot)

    app = make_app(decode_config=DecodeConfig(strategy="beam", top_beams=3))
    assert snap_compare(app, terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", SIZES)
def test_full_matrix_view(snap_compare, size):
    async def run(pilot):
        await translated(pilot)
        await pilot.press("f4")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", SIZES)
def test_strategy_panel(snap_compare, size):
    async def run(pilot):
        await settle(pilot)
        await pilot.press("f2")
        await pilot.click("#strategy-beam")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, size):
    async def run(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run)
