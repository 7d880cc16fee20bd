"""The attention inspector: the (layer × head) grid for the selected output token, the full
matrix views, and the alternatives the model considered at that position."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Group
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import ContentSwitcher, OptionList, Static
from textual.widgets.option_list import Option

from ...colormap import hex_color, text_color_on
from ...render import heatmap_table, legend
from ...results import Alternative, Translation, display_piece
from ..messages import CellFocused
from ..requests import Exchange

AGGREGATES = ("mean", "max")
MATRIX_KINDS = ("cross", "encoder", "decoder")
MATRIX_TITLES = {"cross": "cross-attention: target × source", "encoder": "encoder self-attention: source × source",
                 "decoder": "masked decoder self-attention: target × decoder input"}


def _agg(x: np.ndarray, axis, how: str) -> np.ndarray:
    return x.max(axis=axis) if how == "max" else x.mean(axis=axis)


def cell_weights(weights: np.ndarray, row: int, col: int, how: str = "mean") -> np.ndarray:
    """Weights (L, H, S) of one output token -> the row of the grid cell (row, col).

    row == L is the aggregate over layers, col == H the aggregate over heads ("mean" or "max")."""
    n_layers, n_heads = weights.shape[:2]
    w = weights if row < n_layers else _agg(weights, 0, how)[None]  # (L|1, H, S)
    w = w[min(row, w.shape[0] - 1)]  # (H, S)
    return w[col] if col < n_heads else _agg(w, 0, how)


def layer_head_label(row: int, col: int, n_layers: int, n_heads: int, how: str) -> str:
    layer = f"layer {row}" if row < n_layers else f"{how} of layers"
    head = f"head {col}" if col < n_heads else f"{how} of heads"
    return f"{layer} · {head}"


class AttentionGrid(Widget, can_focus=True):
    """One cell per (layer, head) — rows are layers, columns heads, plus an aggregate row and
    column — each showing the source tokens shaded by that head's weight for the selected output
    token. Arrow keys or clicks move the focused cell; its exact values are printed below."""

    BINDINGS = [
        Binding("up", "move(-1, 0)", show=False), Binding("down", "move(1, 0)", show=False),
        Binding("left", "move(0, -1)", show=False), Binding("right", "move(0, 1)", show=False),
    ]

    cursor: reactive[tuple[int, int]] = reactive((0, 0))
    aggregate: reactive[str] = reactive("mean")

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        # Cells are clickable through `@click` meta, which makes Textual treat them as links and paint its
        # link colour over the text colour picked for each weight (grey on yellow, 1.2:1). The clicks work
        # without link styling.
        self.auto_links = False
        self.weights: np.ndarray | None = None  # (L, H, S) for the selected output token
        self.source_labels: list[str] = []
        self.target_label = ""

    def set_data(self, weights: np.ndarray | None, source_labels: list[str], target_label: str) -> None:
        self.weights = weights
        self.source_labels = source_labels
        self.target_label = target_label
        if weights is not None:
            r, c = self.cursor
            # without the watcher: the inspector updates the matrix view itself, once (CellFocused is for
            # the user's moves)
            self.set_reactive(AttentionGrid.cursor, (min(r, weights.shape[0]), min(c, weights.shape[1])))
        self.refresh(layout=True)

    @property
    def shape(self) -> tuple[int, int]:
        return (0, 0) if self.weights is None else self.weights.shape[:2]

    def watch_cursor(self, cursor: tuple[int, int]) -> None:
        self.post_message(CellFocused(*cursor))

    def watch_aggregate(self) -> None:
        self.post_message(CellFocused(*self.cursor))

    def focused_values(self) -> np.ndarray | None:
        if self.weights is None:
            return None
        return cell_weights(self.weights, *self.cursor, self.aggregate)

    def action_move(self, dr: int, dc: int) -> None:
        n_layers, n_heads = self.shape
        r, c = self.cursor
        self.cursor = (max(0, min(n_layers, r + dr)), max(0, min(n_heads, c + dc)))

    def action_cell(self, row: int, col: int) -> None:
        self.focus()
        self.cursor = (row, col)

    def render(self):
        if self.weights is None:
            return Text("Select an output token (click it, or focus a translation and use ←/→) to see what every head looked at.",
                        style="dim italic")
        n_layers, n_heads = self.shape
        label_col = 5
        avail = self.content_region.width or self.size.width
        cell_width = max(2, (avail - 1 - label_col - (n_heads + 1)) // (n_heads + 1))
        # Labels are always whole: a cell wraps between pieces onto more lines (a piece wider than the
        # cell folds), so a cut `étud` never hides which word a head looked at.
        separator = " "
        labels = self.source_labels
        table = Table(box=None, pad_edge=False, show_header=True, padding=(0, 1, 0, 0), collapse_padding=True)
        table.add_column("", no_wrap=True, style="bold", width=label_col - 1, min_width=label_col - 1)
        for h in range(n_heads + 1):
            name = f"H{h}" if h < n_heads else self.aggregate
            table.add_column(name, no_wrap=False, overflow="fold", width=cell_width,
                             header_style="bold reverse" if h == self.cursor[1] else "bold")
        for row in range(n_layers + 1):
            cells = []
            for col in range(n_heads + 1):
                values = cell_weights(self.weights, row, col, self.aggregate)
                click = Style(meta={"@click": f"cell({row},{col})"})
                focused = (row, col) == self.cursor
                cell = Text("▶" if focused else " ", style=Style(bold=True) + click)
                for k, (label, v) in enumerate(zip(labels, values)):
                    if k and separator:
                        cell.append(separator, style=click)
                    cell.append(label, style=Style.parse(f"{text_color_on(v)} on {hex_color(v)}") + click)
                cells.append(cell)
            name = f"L{row}" if row < n_layers else self.aggregate[:4]
            table.add_row(Text(name, style="reverse" if row == self.cursor[0] else ""), *cells)
        r, c = self.cursor
        values = self.focused_values()
        best = int(np.argmax(values))
        detail = Text(f"{layer_head_label(r, c, n_layers, n_heads, self.aggregate)} → ", style="bold")
        detail.append("  ".join(f"{label} {v:.3f}" for label, v in zip(self.source_labels, values)))
        detail.append(f"   (strongest: {self.source_labels[best]})", style="italic")
        return Group(table, Text.assemble(legend(16), f"   output token: {self.target_label}"), detail)


class MatrixView(Widget):
    """The full alignment matrix for the focused layer/head (or aggregate): cross-attention
    (target × source, the paper's word-to-word map), encoder self-attention or decoder self-attention."""

    kind: reactive[str] = reactive("cross")

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.translation: Translation | None = None
        self.hypothesis = 0
        self.target_index = 0
        self.cell = (0, 0)
        self.aggregate = "mean"

    def set_data(self, translation: Translation | None, hypothesis: int, target_index: int, cell: tuple[int, int], aggregate: str) -> None:
        self.translation, self.hypothesis, self.target_index, self.cell, self.aggregate = translation, hypothesis, target_index, cell, aggregate
        self.refresh(layout=True)

    def matrix(self) -> tuple[np.ndarray, list[str], list[str], str] | None:
        """(matrix, row labels, column labels, title) of the current view, or None."""
        t = self.translation
        if t is None or not t.hypotheses or t.hypotheses[self.hypothesis].attention is None:
            return None
        h = t.hypotheses[self.hypothesis]
        att = h.attention
        full = {"cross": att.cross, "encoder": att.encoder_self, "decoder": att.decoder_self}[self.kind]  # (L, H, R, C)
        n_layers, n_heads = full.shape[:2]
        row, col = self.cell
        m = full if row < n_layers else _agg(full, 0, self.aggregate)[None]
        m = m[min(row, m.shape[0] - 1)]
        m = m[col] if col < n_heads else _agg(m, 0, self.aggregate)
        targets = [display_piece(p) for p in h.pieces]
        sources = t.source_labels()
        rows, cols = {"cross": (targets, sources), "encoder": (sources, sources),
                      "decoder": (targets, [display_piece(p) for p in h.decoder_input_pieces])}[self.kind]
        if self.kind != "encoder":
            rows = [("▶" if i == self.target_index else "") + r for i, r in enumerate(rows)]
        title = f"{MATRIX_TITLES[self.kind]} · {layer_head_label(row, col, n_layers, n_heads, self.aggregate)}"
        return m, rows, cols, title

    def render(self):
        got = self.matrix()
        if got is None:
            return Text("No attention to show yet: translate something and select a token.", style="dim italic")
        m, rows, cols, title = got
        return Group(Text(title, style="bold"), heatmap_table(m, rows, cols), legend(16))


class Inspector(Vertical):
    """The attention inspector for one selected output token: a title, the (layer × head) grid or the full
    matrix (F4; F9 cycles its kind), and the alternatives at that position. It owns the selection."""

    @dataclass
    class AlternativeChosen(Message):
        """The user picked an alternative token: re-translate with it forced at that position."""

        exchange: Exchange
        hypothesis: int
        token: int
        alternative: Alternative

        @property
        def prefix(self) -> list[int]:
            """The tokens before the chosen one, then the chosen one: forced at the start of the new decode."""
            h = self.exchange.translation.hypotheses[self.hypothesis]
            return list(h.token_ids[:self.token]) + [self.alternative.token_id]

        @property
        def note(self) -> str:
            return f"forced “{display_piece(self.alternative.piece)}” at token {self.token + 1}"

    @dataclass
    class SourceWeights(Message):
        """The focused cell's weights over the source pieces (None: nothing selected), for the source line."""

        exchange: Exchange | None
        weights: np.ndarray | None

    selection: reactive[tuple[int, int, int] | None] = reactive(None)  # (exchange id, hypothesis, token)
    show_matrix: reactive[bool] = reactive(False)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.exchange: Exchange | None = None

    def compose(self) -> ComposeResult:
        yield Static("Attention inspector", id="inspector-title")
        with Horizontal(id="inspector-body"):
            with ContentSwitcher(initial="grid-scroll", id="views"):
                # the grid is the Tab stop, not its scroller; the matrix view scrolls with the mouse
                with VerticalScroll(id="grid-scroll", can_focus=False):
                    yield AttentionGrid(id="grid")
                with VerticalScroll(id="matrix-scroll", can_focus=False):
                    yield MatrixView(id="matrix")
            yield OptionList(id="alternatives")

    def on_mount(self) -> None:
        self.query_one("#alternatives", OptionList).border_title = "alternatives"

    @property
    def grid(self) -> AttentionGrid:
        return self.query_one("#grid", AttentionGrid)

    @property
    def matrix(self) -> MatrixView:
        return self.query_one("#matrix", MatrixView)

    def show(self, exchange: Exchange, hypothesis: int, token: int) -> bool:
        """Inspect `token` of `hypothesis` of a translated exchange; False when there is no such token."""
        t = exchange.translation
        if t is None or hypothesis >= len(t.hypotheses):
            return False
        self.exchange = exchange
        self.selection = (exchange.id, hypothesis, token)
        return True

    def selected(self) -> tuple[Exchange, Translation, int, int] | None:
        """(exchange, translation, hypothesis, token) of the selection, or None."""
        if self.selection is None or self.exchange is None or self.exchange.translation is None:
            return None
        return self.exchange, self.exchange.translation, self.selection[1], self.selection[2]

    def watch_selection(self) -> None:
        got = self.selected()
        grid, alts = self.grid, self.query_one("#alternatives", OptionList)
        alts.clear_options()
        if got is None:
            grid.set_data(None, [], "")
            self.matrix.set_data(None, 0, 0, (0, 0), grid.aggregate)
            self.post_message(self.SourceWeights(None, None))
            return
        ex, t, hi, ti = got
        h = t.hypotheses[hi]
        ti = min(ti, len(h.pieces) - 1)
        piece = display_piece(h.pieces[ti])
        forced = " (forced)" if ti < h.prefix_length else ""
        nbest = f"hypothesis {hi + 1} · " if len(t.hypotheses) > 1 else ""
        self.query_one("#inspector-title", Static).update(Text.assemble(
            (piece, "bold"), f"{forced} · p={h.token_probs[ti]:.3f} · token {ti + 1}/{len(h.pieces)} · {nbest}#{ex.id} {t.config.describe()}"))
        grid.set_data(h.attention.cross[:, :, ti, :] if h.attention is not None else None, t.source_labels(), piece)  # (L, H, S)
        self._sync_matrix()
        chosen = h.token_ids[ti]
        alts.add_options([Option(Text(f"{'●' if a.token_id == chosen else ' '} {a.prob:6.3f}  {display_piece(a.piece)}"), id=f"alt-{k}")
                          for k, a in enumerate(h.alternatives[ti])])

    def _sync_matrix(self) -> None:
        got = self.selected()
        if got is not None:
            self.matrix.set_data(got[1], got[2], got[3], self.grid.cursor, self.grid.aggregate)
        self.post_message(self.SourceWeights(got[0] if got else None, self.grid.focused_values() if got else None))

    def on_cell_focused(self, message: CellFocused) -> None:
        message.stop()
        self._sync_matrix()

    def watch_show_matrix(self, show: bool) -> None:
        self.query_one("#views", ContentSwitcher).current = "matrix-scroll" if show else "grid-scroll"

    def toggle_matrix(self) -> None:
        self.show_matrix = not self.show_matrix

    def cycle_matrix_kind(self) -> None:
        matrix = self.matrix
        matrix.kind = MATRIX_KINDS[(MATRIX_KINDS.index(matrix.kind) + 1) % len(MATRIX_KINDS)]
        self.show_matrix = True
        self._sync_matrix()

    def toggle_aggregate(self) -> None:
        grid = self.grid
        grid.aggregate = AGGREGATES[(AGGREGATES.index(grid.aggregate) + 1) % len(AGGREGATES)]

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        got = self.selected()
        if got is None:
            return
        ex, t, hi, ti = got
        h = t.hypotheses[hi]
        if ti < len(h.alternatives) and event.option_index < len(h.alternatives[ti]):
            self.post_message(self.AlternativeChosen(ex, hi, ti, h.alternatives[ti][event.option_index]))
