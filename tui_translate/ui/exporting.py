"""Exports: the transcript (Markdown + JSONL) and the current attention view (SVG + HTML + CSV + JSON).

Every file is written atomically; the paths are returned so the app can show them.
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from ..atomic import write_text
from ..render import heatmap_table
from ..results import display_piece


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"


def _md(text: str) -> str:
    """Text as Markdown shows it: raw HTML (`<script>`) in a source or a model's output is escaped, never run."""
    return html.escape(str(text), quote=False)


def transcript_markdown(exchanges) -> str:
    lines = ["# tui-translate transcript", ""]
    for ex in exchanges:
        lines.append(f"**{_md(ex.source)}**")
        lines.append("")
        lines.append(f"> {_md(ex.text)}")
        t = ex.translation
        if t is not None and len(t.hypotheses) > 1:
            for k, h in enumerate(t.hypotheses[1:], 2):
                lines.append(f">  {k}. {_md(h.text)} (score {h.score:.3f})")
        meta = f"*{_md(ex.model)} · {_md(ex.label)}"
        if t is not None:
            meta += f" · {t.elapsed_s * 1000:.0f} ms"
            if t.hypotheses:
                meta += f" · score {t.best.score:.3f}"
        lines += ["", meta + "*", ""]
    return "\n".join(lines)


def export_transcript(exchanges, directory: Path) -> tuple[Path, Path]:
    stamp = _stamp()
    directory = Path(directory)
    md = write_text(directory / f"transcript-{stamp}.md", transcript_markdown(exchanges))
    jsonl = write_text(directory / f"transcript-{stamp}.jsonl",
                       "".join(json.dumps(ex.to_record(), ensure_ascii=False) + "\n" for ex in exchanges))
    return md, jsonl


def attention_view_data(selection, grid, matrix, show_matrix: bool) -> dict:
    """The numbers behind the current view, with their labels."""
    ex, t, hi, ti = selection
    h = t.hypotheses[hi]
    if show_matrix:
        got = matrix.matrix()
        if got is None:
            raise OSError("no matrix to export")
        m, rows, cols, title = got
        return {"view": "matrix", "kind": matrix.kind, "title": title, "rows": rows, "columns": cols,
                "values": np.asarray(m).tolist(), "source": t.source, "translation": h.text}
    weights = grid.weights  # (L, H, S)
    return {"view": "grid", "title": f"cross-attention for output token {display_piece(h.pieces[ti])!r} (position {ti})",
            "target_token": h.pieces[ti], "target_index": ti, "source_tokens": t.source_labels(),
            "layers_heads_source": np.asarray(weights).tolist(), "source": t.source, "translation": h.text}


def export_attention(selection, grid, matrix, show_matrix: bool, directory: Path) -> list[Path]:
    data = attention_view_data(selection, grid, matrix, show_matrix)
    stamp = _stamp()
    directory = Path(directory)
    base = directory / f"attention-{stamp}"
    # numbers
    buf = io.StringIO()
    w = csv.writer(buf)
    if data["view"] == "matrix":
        w.writerow(["", *data["columns"]])
        for label, row in zip(data["rows"], data["values"]):
            w.writerow([label, *(f"{v:.6f}" for v in row)])
        renderable = heatmap_table(np.asarray(data["values"]), data["rows"], data["columns"], data["title"])
    else:
        w.writerow(["layer", "head", *data["source_tokens"]])
        weights = np.asarray(data["layers_heads_source"])
        for layer in range(weights.shape[0]):
            for head in range(weights.shape[1]):
                w.writerow([layer, head, *(f"{v:.6f}" for v in weights[layer, head])])
        rows = [f"L{layer} H{head}" for layer in range(weights.shape[0]) for head in range(weights.shape[1])]
        renderable = heatmap_table(weights.reshape(-1, weights.shape[-1]), rows, data["source_tokens"], data["title"])
    paths = [write_text(base.with_suffix(".csv"), buf.getvalue()),
             write_text(base.with_suffix(".json"), json.dumps(data, ensure_ascii=False, indent=1))]
    console = Console(record=True, width=max(80, 8 + 7 * (len(data.get("columns", data.get("source_tokens", []))) + 1)),
                      file=io.StringIO(), color_system="truecolor")
    console.print(renderable)
    paths.append(write_text(base.with_suffix(".svg"), console.export_svg(title="tui-translate attention", clear=False)))
    paths.append(write_text(base.with_suffix(".html"), console.export_html(inline_styles=True)))
    return paths
