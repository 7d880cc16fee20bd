"""Help screen (F1)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# tui-translate

Type a sentence and press **Enter**. The translation grows token by token while it decodes.
Click any output token — or press **Esc** to leave the input and use **←/→** — and the
inspector shows what every attention head of every layer looked at to produce it.

| Key | Action |
|---|---|
| Enter | translate the input |
| ↑ / ↓ (in the input) | recall earlier inputs |
| Esc | from the input, go to the last translation; again, back to the draft |
| Tab / Shift+Tab | move focus: input → translations → grid → alternatives |
| ← / → | previous / next output token (translation focused) |
| arrows (grid focused) | move the focused layer × head cell; its exact weights show below the grid |
| Enter (alternatives focused) | force that token and re-translate the rest |
| F1 | this help |
| F2 | decoding strategy: greedy, beam (size, α, n-best), sampling (T, top-k, top-p, seed); the output rules (numbers from the source, no word 3× in a row) |
| F3 | swap direction / next model |
| ctrl+z | undo a direction switch made by language detection |
| F4 | grid ↔ full matrix view |
| F5 | re-translate the last input with the current strategy (the earlier result is shown beneath) |
| F6 | live mode: re-translate while typing |
| F7 | confidence colours on output tokens |
| F8 | mean ↔ max aggregation |
| F9 | matrix kind: cross / encoder self / decoder self |
| ctrl+y | copy the selected translation |
| ctrl+s | export the transcript (Markdown + JSONL) |
| ctrl+o | export the current attention view (SVG + HTML + CSV + JSON) |
| ctrl+p | command palette: every action, models, themes |
| ctrl+q | quit |

**Reading the grid.** Rows are layers (L0 is closest to the input), columns are heads; the
last row and column aggregate (mean or max, F8). Each cell lists the source tokens, shaded by
the weight that head gave them (viridis: dark = 0, yellow = 1); the focused cell also shades the
words of the source line. Subword pieces that continue a word start with `·`.

Printable keys typed anywhere go to the input. Typed text in the other model's language switches
direction (ctrl+z goes back); a translation the model doubts is marked "low confidence".

Transcript, input history and settings are kept in your data directory; `tui-translate --clean`
starts without them.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "close"), Binding("f1", "dismiss", "close"), Binding("q", "dismiss", "close", show=False)]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Markdown(HELP)

    def action_dismiss(self) -> None:
        self.dismiss(None)
