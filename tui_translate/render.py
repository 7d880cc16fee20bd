"""Rich renderables for attention, shared by the CLI and the app (torch-free)."""

from __future__ import annotations

import numpy as np
from rich.table import Table
from rich.text import Text

from .colormap import hex_color, text_color_on


def heatmap_table(matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str = "",
                  vmax: float | None = None, digits: int = 2) -> Table:
    """A rows × columns heatmap, each cell the value on its viridis colour.

    vmax: value mapped to the top of the scale (default: 1.0, attention probabilities).
    """
    top = 1.0 if vmax is None else max(float(vmax), 1e-9)
    table = Table(title=title or None, show_lines=False, pad_edge=False, box=None, collapse_padding=True)
    table.add_column("", justify="right", style="bold", no_wrap=True)
    for label in col_labels:
        table.add_column(label, justify="center", no_wrap=True)
    for label, row in zip(row_labels, np.asarray(matrix)):
        cells = [Text(f"{v:.{digits}f}", style=f"{text_color_on(v / top)} on {hex_color(v / top)}") for v in row]
        table.add_row(label, *cells)
    return table


def legend(width: int = 20) -> Text:
    """A colour bar 0 → 1."""
    t = Text("0 ")
    for i in range(width):
        t.append(" ", style=f"on {hex_color(i / (width - 1))}")
    t.append(" 1")
    return t
