"""Where things live: shipped models, the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_path

PACKAGE_DIR = Path(__file__).resolve().parent


def models_root() -> Path:
    """The shipped `models/` directory.

    From a source checkout or editable install it is `<repo>/models`; a built wheel
    carries it as `tui_translate/_models` (see pyproject's force-include).
    TUI_TRANSLATE_MODELS overrides both.
    """
    env = os.environ.get("TUI_TRANSLATE_MODELS")
    if env:
        return Path(env)
    for candidate in (PACKAGE_DIR / "_models", PACKAGE_DIR.parent / "models"):
        if candidate.is_dir():
            return candidate
    return PACKAGE_DIR.parent / "models"


def default_model_dir() -> Path:
    return models_root() / "fr-en"


def available_models() -> list[Path]:
    """Every model directory (one with config.json) under the shipped models root."""
    root = models_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


def data_dir() -> Path:
    """Per-user data directory (transcript, history, exports). TUI_TRANSLATE_DATA overrides it."""
    env = os.environ.get("TUI_TRANSLATE_DATA")
    return Path(env) if env else user_data_path("tui-translate", appauthor=False)
