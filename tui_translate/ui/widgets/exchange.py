"""One exchange of the transcript: the source, its translation(s) as selectable tokens, a label."""

from __future__ import annotations

import math

from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from ...colormap import confidence_color, contrast_ratio, hex_color, text_color_on
from ...results import Hypothesis, WORD_START
from ..messages import TokenSelected
from ..requests import Exchange


SOURCE_HIGHLIGHT_MIN = 0.1  # source pieces with less attention than this stay unshaded in the source line
LOW_CONFIDENCE = 0.4  # geometric-mean token probability below which a translation is flagged


def model_confidence(h: Hypothesis) -> float:
    """Geometric mean of the probabilities the model gave its own tokens (forced ones left out)."""
    lps = h.token_logprobs[h.prefix_length:]
    return math.exp(sum(lps) / len(lps)) if lps else 1.0


def confidence_style(prob: float) -> Style:
    bg = Color.parse(confidence_color(prob))
    rgb = bg.triplet
    fg = "#000000" if contrast_ratio(rgb, (0, 0, 0)) >= contrast_ratio(rgb, (255, 255, 255)) else "#ffffff"
    return Style(color=fg, bgcolor=bg)


def token_label(piece: str, index: int) -> str:
    """How a target piece appears inside the running text of a translation."""
    if piece == "</s>":
        return " ⏎"
    if piece.startswith(WORD_START):
        body = piece[len(WORD_START):]
        return body if index == 0 else " " + body
    return piece


class TokenStrip(Widget, can_focus=True):
    """A hypothesis as individually selectable tokens (click, or focus and use ←/→)."""

    BINDINGS = [
        Binding("left", "move(-1)", "prev token", show=False),
        Binding("right", "move(1)", "next token", show=False),
        Binding("home", "move_to(0)", show=False),
        Binding("end", "move_to(-1)", show=False),
        Binding("up", "app.focus_previous", show=False),
        Binding("down", "app.focus_next", show=False),
    ]

    selected: reactive[int] = reactive(-1)
    confidence: reactive[bool] = reactive(False)

    def __init__(self, exchange_id: int, index: int, hypothesis: Hypothesis, rank_label: str = "", **kw) -> None:
        super().__init__(**kw)
        self.auto_links = False  # link styling would paint over the confidence colours (see AttentionGrid)
        self.exchange_id = exchange_id
        self.index = index
        self.hypothesis = hypothesis
        self.rank_label = rank_label

    def render(self) -> Text:
        h = self.hypothesis
        text = Text(self.rank_label, style="dim")
        probs = h.token_probs
        for i, piece in enumerate(h.pieces):
            style = Style(meta={"@click": f"select({i})"})
            if self.confidence:  # shaded background, black or white text: readable in dark and light themes
                style += confidence_style(probs[i])
            if piece == "</s>":
                style += Style(dim=True)
            if i < h.prefix_length:
                style += Style(underline=True)
            if i == self.selected:
                style += Style(reverse=True, bold=True)
            label = token_label(piece, i)
            if label.startswith(" "):
                text.append(" ")
                label = label[1:]
            text.append(label, style=style)
        return text

    def action_select(self, index: int) -> None:
        self.focus()
        self.selected = index
        self.post_message(TokenSelected(self.exchange_id, self.index, index))

    def action_move(self, delta: int) -> None:
        n = len(self.hypothesis.pieces)
        if n:
            self.action_select(max(0, min(n - 1, (self.selected if self.selected >= 0 else -1 if delta > 0 else n) + delta)))

    def action_move_to(self, index: int) -> None:
        n = len(self.hypothesis.pieces)
        if n:
            self.action_select(index % n)

    def on_focus(self) -> None:
        if self.selected < 0 and self.hypothesis.pieces:
            self.action_select(0)


LABEL_SEPARATOR = " · "


class MetaLine(Widget):
    """The line under a translation: model, strategy, time, score… as labels that wrap only between labels.

    Rich and Textual break lines at any whitespace, non-breaking spaces included, so "42 ms" or "score
    -0.727" could be split across two lines; this widget lays out whole labels per line itself (a label
    alone wider than the line is the one case broken inside)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._labels: list[Text] = []

    @property
    def labels(self) -> list[str]:
        return [label.plain for label in self._labels]

    def show(self, *labels: str | Text) -> None:
        """Replace the labels (empty ones are left out); lays the screen out again only when the number of
        lines changes (a layout arranges the whole transcript, and this runs at every decoding step)."""
        width = self.content_size.width
        before = len(self.lines(width)) if width else -1
        self._labels = [Text(label) if isinstance(label, str) else label for label in labels if label]
        self.refresh(layout=not width or len(self.lines(width)) != before)

    def lines(self, width: int) -> list[Text]:
        """The labels packed into lines of at most `width` cells, separated by LABEL_SEPARATOR."""
        lines: list[Text] = []
        line = Text()
        sep = len(LABEL_SEPARATOR)
        for label in self._labels:
            if line and line.cell_len + sep + label.cell_len > width:
                lines.append(line)
                line = Text()
            if label.cell_len > width:  # too wide even alone: broken at spaces, then folded
                lines.extend(label.wrap(self.app.console, max(width, 1), overflow="fold"))
                continue
            if line:
                line.append(LABEL_SEPARATOR)
            line.append_text(label)
        if line:
            lines.append(line)
        return lines

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.content_size.width or 1_000_000))

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self.lines(width)))


class ExchangeView(Vertical):
    """Source, translation (tokens once done, growing text while decoding), n-best, a label."""

    def __init__(self, exchange: Exchange, **kw) -> None:
        super().__init__(classes="exchange", **kw)
        self.exchange = exchange

    def compose(self) -> ComposeResult:
        # source, then the body (token strips, or a partial / note / restored text), then the meta line; the
        # body sits directly in this container: every widget on screen costs time at each layout pass
        yield Static(Text("› ", style="bold") + Text(self.exchange.source), classes="source")
        yield MetaLine(classes="meta")

    def on_mount(self) -> None:
        self.refresh_exchange()

    def highlight_source(self, weights=None) -> None:
        """Shade the source words by `weights` (one per source piece, the inspector's focused layer/head or
        aggregate for the selected output token), as BertViz does; None clears the shading."""
        text = Text(self.exchange.source)
        t = self.exchange.translation
        if weights is not None and t is not None and len(weights) == len(t.source_offsets):
            top = max(float(max(weights)), 1e-9)
            for w, (a, b) in zip(weights, t.source_offsets):
                if b > a and w >= SOURCE_HIGHLIGHT_MIN:
                    v = float(w) / top
                    text.stylize(Style.parse(f"{text_color_on(v)} on {hex_color(v)}"), a, b)
        self.query_one(".source", Static).update(Text("› ", style="bold") + text)

    def _show_compare(self, before) -> None:
        if self.exchange.compare is not None:
            label, text = self.exchange.compare
            line = Text("before · ", style="italic") + Text(label, style="italic") + Text(": ") + Text(text)
            self.mount(Static(line, classes="compare"), before=before)

    def refresh_exchange(self) -> None:
        ex = self.exchange
        meta = self.query_one(MetaLine)
        for child in list(self.children):
            if child is not meta and not child.has_class("source"):
                child.remove()
        if ex.translation is not None and ex.translation.hypotheses and ex.translation.best.pieces:
            t = ex.translation
            strips = []
            for i, h in enumerate(t.hypotheses):
                rank = f"{i + 1}. " if len(t.hypotheses) > 1 else ""
                strips.append(TokenStrip(ex.id, i, h, rank, classes="tokens" + (" nbest" if i else "")))
            self.mount_all(strips, before=meta)
            self._show_compare(meta)
            conf = model_confidence(t.best)
            low = conf < LOW_CONFIDENCE  # the model doubts its own output: likely invented, say so
            meta.show(Text(f"⚠ low confidence ({conf:.2f})", style="bold") if low else "", *self.labels(),
                      f"{t.elapsed_s * 1000:.0f} ms", f"score {t.best.score:.3f}",
                      f"{len(t.hypotheses)}-best" if len(t.hypotheses) > 1 else "",
                      "" if t.best.finished else "stopped at the length limit")
            meta.set_class(low, "low")
        elif ex.translation is not None:
            self.mount(Static(Text(ex.translation.note or "(nothing to translate)", style="italic"), classes="note"), before=meta)
            meta.show(*self.labels())
        elif ex.status == "restored":
            click = Style(meta={"@click": f"app.retranslate({ex.id})"})
            self.mount(Static(Text(ex.restored_text, style=click), classes="restored"), before=meta)
            meta.show(*self.labels(), "from an earlier session", "click it to translate again and inspect")
        else:
            status = {"running": "translating…", "cancelled": "cancelled", "failed": f"failed: {ex.error}"}.get(ex.status, ex.status)
            self.mount(Static(Text(ex.partial or "…", style="italic"), classes="partial"), before=meta)
            self._show_compare(meta)
            meta.show(*self.labels(), status)

    def update_partial(self, text: str, step: int) -> None:
        self.exchange.partial = text
        try:
            partial, meta = self.query_one(".partial", Static), self.query_one(MetaLine)
        except Exception:
            self.refresh_exchange()
            return
        _set_text(partial, Text(text or "…", style="italic"))
        meta.show(*self.labels(), f"translating… step {step}")

    def labels(self) -> list[str]:
        """The model and the exchange's label (strategy, note, sentence i/n), one label per part."""
        return [self.exchange.model, *self.exchange.label.split(LABEL_SEPARATOR)]

    def strips(self) -> list[TokenStrip]:
        return list(self.query(TokenStrip))


def _set_text(widget: Static, text: Text) -> None:
    """Update a Static, with a layout pass only when the new text wraps to a different height.

    A layout arranges every widget of the transcript (about 30 ms with 60 exchanges on the 2-core VM);
    taken at every decoding step it delayed keystrokes by up to 65 ms while tokens streamed in."""
    width, height = widget.content_size
    same_height = width > 0 and len(text.wrap(widget.app.console, width)) == height
    widget.update(text, layout=not same_height)
