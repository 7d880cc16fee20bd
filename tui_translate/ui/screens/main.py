"""The app's main screen (the widgets are composed by the app)."""

from __future__ import annotations

from textual import events
from textual.screen import Screen
from textual.widgets import Input

from ..widgets.prompt import Prompt


class MainScreen(Screen):
    """The app's screen. Printable keys typed while a translation, the grid or the alternatives have focus
    (or nothing has) go to the prompt: only the prompt takes text, and they were lost or, for `?`, opened
    the help."""

    def on_key(self, event: events.Key) -> None:
        if event.is_printable and event.character is not None and not isinstance(self.focused, Input):
            event.stop()
            event.prevent_default()
            self.query_one(Prompt).take_character(event.character)
