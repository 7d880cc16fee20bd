"""The command palette's entries (ctrl+p): every action of the app, and one entry per model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from textual.app import SystemCommand

if TYPE_CHECKING:
    from .app import TranslateApp


def app_commands(app: "TranslateApp") -> Iterable[SystemCommand]:
    yield SystemCommand("Decoding strategy…", "Greedy, beam search or sampling and their parameters (F2)", app.action_strategy)
    for s in ("greedy", "beam", "sample"):
        yield SystemCommand(f"Strategy: {s}", f"Switch to {s} decoding with the current parameters", lambda s=s: app.set_strategy(s))
    yield SystemCommand("Re-translate last input", "Run the last input again with the current strategy (F5)", app.action_rerun)
    yield SystemCommand("Swap direction / next model", "Load the next model directory (F3)", app.action_swap_model)
    for path in app.models:
        yield SystemCommand(f"Use model: {path.name}", str(path), lambda p=path: app.use_model(p))
    yield SystemCommand("Toggle full-matrix view", "Grid of heads ↔ target × source matrix (F4)", app.action_toggle_matrix)
    yield SystemCommand("Cycle matrix kind", "Cross / encoder self / decoder self attention (F9)", app.action_cycle_matrix_kind)
    yield SystemCommand("Toggle mean/max aggregation", "How the extra row and column combine heads and layers (F8)", app.action_toggle_aggregate)
    yield SystemCommand("Toggle live mode", "Re-translate as you type (F6)", app.action_toggle_live)
    yield SystemCommand("Toggle confidence colours", "Colour output tokens by probability (F7)", app.action_toggle_confidence)
    yield SystemCommand("Copy translation", "Copy the selected translation to the clipboard (ctrl+y)", app.action_copy)
    yield SystemCommand("Export transcript", "Markdown and JSONL (ctrl+s)", app.action_export_transcript)
    yield SystemCommand("Export attention view", "SVG, HTML, CSV and JSON of the current view (ctrl+o)", app.action_export_attention)
    yield SystemCommand("Help", "Keys and how to read the grid (F1)", app.action_help)
