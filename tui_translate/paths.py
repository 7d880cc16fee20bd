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


def model_direction(path: Path) -> str | None:
    """'fr-en' from a model directory's config.json meta (None when unknown or unreadable)."""
    import json

    try:
        with open(path / "config.json", "rb") as f:
            meta = json.loads(f.read(1 << 20)).get("meta") or {}
        return f"{meta['source_lang']}-{meta['target_lang']}"
    except Exception:  # an unreadable model is reported by the loader, in one line
        return None


def resolve_model(model: str | None = None, direction: str | None = None) -> Path:
    """The model directory `--model` / `--direction` mean.

    --model: a directory, or the name of a shipped model (`--model en-fr`: models/en-fr) when no such
    directory exists here. --direction (without --model): the shipped model named so, else the one whose
    config says it translates that direction. Neither: the default model."""
    from .errors import TranslateError

    if model:
        path = Path(model).expanduser()
        if not path.exists() and "/" not in model and os.sep not in model and (models_root() / model).is_dir():
            return models_root() / model
        return path
    if direction:
        models = available_models()
        for p in models:
            if p.name == direction:
                return p
        for p in models:
            if model_direction(p) == direction:
                return p
        have = ", ".join(sorted({d for d in map(model_direction, models) if d})) or "none"
        raise TranslateError(f"no model for {direction} in {models_root()} (directions available: {have}); use --model DIR")
    return default_model_dir()
