"""The command palette's entries (ctrl+p): every action of the app, one entry per model, and a Hugging
Face Hub repo id typed in."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.command import Hit, Hits, Provider
from textual.content import Content
from textual.markup import escape

from .. import hub
from .models import describe, model_label

if TYPE_CHECKING:
    from .app import TranslateApp


def app_commands(app: "TranslateApp") -> Iterable[SystemCommand]:
    yield SystemCommand("Decoding strategy…", "Greedy, beam search or sampling and their parameters (F2)", app.action_strategy)
    for s in ("greedy", "beam", "sample"):
        yield SystemCommand(f"Strategy: {s}", f"Switch to {s} decoding with the current parameters", lambda s=s: app.set_strategy(s))
    yield SystemCommand("Output rule: numbers from the source", "Digits only as the source's numbers, copied (on/off)",
                        lambda: app.toggle_rule("keep_numbers"))
    yield SystemCommand("Output rule: no word three times in a row", "Rule out stutter such as 'orange orange orange' (on/off)",
                        lambda: app.toggle_rule("block_repeats"))
    yield SystemCommand("Re-translate last input", "Run the last input again with the current strategy (F5)", app.action_rerun)
    yield SystemCommand("Swap direction / next model", "Load the next model directory (F3)", app.action_swap_model)
    for path in app.models:
        entry = app.model_entries.get(path)
        yield SystemCommand(f"Use model: {model_label(path)}", escape(describe(entry) if entry else str(path)), lambda p=path: app.use_model(p))
    yield SystemCommand("Toggle full-matrix view", "Grid of heads ↔ target × source matrix (F4)", app.action_toggle_matrix)
    yield SystemCommand("Cycle matrix kind", "Cross / encoder self / decoder self attention (F9)", app.action_cycle_matrix_kind)
    yield SystemCommand("Toggle mean/max aggregation", "How the extra row and column combine heads and layers (F8)", app.action_toggle_aggregate)
    yield SystemCommand("Toggle live mode", "Re-translate as you type (F6)", app.action_toggle_live)
    yield SystemCommand("Toggle confidence colours", "Colour output tokens by probability (F7)", app.action_toggle_confidence)
    yield SystemCommand("Copy translation", "Copy the selected translation to the clipboard (ctrl+y)", app.action_copy)
    yield SystemCommand("Export transcript", "Markdown and JSONL (ctrl+s)", app.action_export_transcript)
    yield SystemCommand("Export attention view", "SVG, HTML, CSV and JSON of the current view (ctrl+o)", app.action_export_attention)
    yield SystemCommand("Help", "Keys and how to read the grid (F1)", app.action_help)


class HubModelCommands(Provider):
    """`owner/name[@revision]` typed into the palette: open that Hub model (cached, or downloaded by the
    loading worker)."""

    async def search(self, query: str) -> Hits:
        ref = hub.parse_repo_id(query.strip())
        if ref is None:
            return
        state, _ = hub.cache_state(ref)
        if state == "complete":
            help_text = "In the Hugging Face cache: opens without the network"
        elif hub.offline():
            help_text = f"Not in the Hugging Face cache and HF_HUB_OFFLINE is set: run `tui-translate models pull {ref}` online"
        else:
            help_text = f"Downloads it into the Hugging Face cache ({hub.hub_cache_dir()}), then opens it"
        yield Hit(1.0, Content(f"Open Hugging Face model: {ref}"), partial(self.app.open_hub_model, str(ref)),
                  help=escape(help_text))  # help is markup; a cache path may hold [
