"""The decoding panel: pick greedy / beam / sampling and their parameters, and the output rules."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, RadioButton, RadioSet, Static

from ...config import ConfigError, DecodeConfig

FIELDS = [
    # (id, label, attribute, type, applies to)
    ("beam_size", "beam size", "beam_size", int, "beam"),
    ("length_penalty", "length penalty α", "length_penalty", float, "beam"),
    ("top_beams", "n-best", "top_beams", int, "beam"),
    ("temperature", "temperature", "temperature", float, "sample"),
    ("top_k", "top-k (0 = off)", "top_k", int, "sample"),
    ("top_p", "top-p (1 = off)", "top_p", float, "sample"),
    ("seed", "seed", "seed", int, "sample"),
]
STRATEGIES = ("greedy", "beam", "sample")
RULES = [  # (attribute = widget id, label): the output rules, for every strategy
    ("keep_numbers", "numbers from source"),
    ("block_repeats", "no word 3× in a row"),
]


class StrategySet(RadioSet):
    """A RadioSet whose keyboard highlight starts on the pressed button: RadioSet highlights the first
    button on mount, so with beam active Up+Enter picked sample."""

    def on_mount(self) -> None:
        # Textual runs RadioSet's own mount handler after this one (it highlights the first button).
        self.call_later(self._highlight_pressed)

    def _highlight_pressed(self) -> None:
        for _ in range(max(0, self.pressed_index)):  # from the first button down to the pressed one
            self.action_next_button()


class DecodeScreen(ModalScreen[tuple[DecodeConfig, bool] | None]):
    """Dismisses with (config, rerun_last) or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("ctrl+enter", "apply(True)", "apply & re-run", show=False)]

    def __init__(self, config: DecodeConfig) -> None:
        super().__init__()
        self.config = config

    def compose(self) -> ComposeResult:
        with Vertical(id="decode-dialog"):
            yield Static("Decoding strategy", classes="title")
            with StrategySet(id="strategy"):
                for s in STRATEGIES:
                    yield RadioButton(s, value=s == self.config.strategy, id=f"strategy-{s}")
            with Grid(id="decode-fields"):
                for fid, label, attr, _, group in FIELDS:
                    yield Label(label, classes=f"field-label {group}")
                    value = getattr(self.config, attr)
                    yield Input("" if value is None else str(value), id=fid, classes=group,
                                placeholder="random" if attr == "seed" else "")
            with Horizontal(id="decode-rules"):
                for attr, label in RULES:
                    yield Checkbox(label, value=getattr(self.config, attr), id=attr)
            yield Static("", id="decode-error")
            with Horizontal(id="decode-buttons"):
                yield Button("Apply", id="apply", variant="primary")
                yield Button("Apply & re-run last", id="rerun", variant="success")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self._show_fields(self.config.strategy)
        self.query_one(RadioSet).focus()

    def _strategy(self) -> str:
        pressed = self.query_one(RadioSet).pressed_button
        return str(pressed.label) if pressed is not None else self.config.strategy

    def _show_fields(self, strategy: str) -> None:
        for group in ("beam", "sample"):
            for w in self.query(f".{group}"):
                w.display = group == strategy

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self._show_fields(str(event.pressed.label))

    def build(self) -> DecodeConfig:
        values: dict = {"strategy": self._strategy()}
        for fid, label, attr, kind, _ in FIELDS:
            raw = self.query_one(f"#{fid}", Input).value.strip()
            if attr == "seed" and not raw:
                values[attr] = None  # a fresh seed for every run, shown in the exchange's label
                continue
            try:
                values[attr] = kind(raw)
            except ValueError:
                raise ConfigError(f"{label}: {raw!r} is not a valid {kind.__name__}") from None
        if values["strategy"] != "beam":
            values["top_beams"] = 1
        for attr, _ in RULES:
            values[attr] = self.query_one(f"#{attr}", Checkbox).value
        return self.config.with_(**values)

    def action_apply(self, rerun: bool = False) -> None:
        try:
            config = self.build()
        except ConfigError as e:
            self.query_one("#decode-error", Static).update(Text(str(e), style="bold red"))  # holds what was typed
            return
        self.dismiss((config, rerun))

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_cancel()
        else:
            self.action_apply(event.button.id == "rerun")
