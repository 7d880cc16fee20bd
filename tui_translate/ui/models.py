"""The models the app can switch between: directories and Hugging Face Hub repo ids, as `tui-translate
models` lists them (hub.list_models, passed to the app as its catalog).

A Hub model is kept in the app's list as `Path("owner/name[@revision]")`, the id itself, never as its
snapshot directory: the id is what F3 cycles through, what the settings remember and what the loading
worker resolves (downloading it when it is not cached)."""

from __future__ import annotations

from pathlib import Path

from rich.filesize import decimal

from .. import hub


def hub_ref(path: Path) -> hub.HubRef | None:
    """The repo id when `path` stands for a Hub model rather than a directory."""
    return None if path.is_absolute() else hub.parse_repo_id(str(path))


def model_label(path: Path) -> str:
    """How a model is named on screen and in the settings: a repo id whole, a directory by its name."""
    ref = hub_ref(path)
    return str(ref) if ref is not None else path.name


def model_key(path: Path) -> str:
    """Two entries for the same model (a shipped directory given as a symlink, say) are one model."""
    ref = hub_ref(path)
    return f"hub:{ref}" if ref is not None else str(path.resolve())


def language_pair(path: Path, entry: hub.ModelEntry | None = None) -> tuple[str, str] | None:
    """(source, target) from the model's own files (hub.language_pair); a Hub id is read from its
    cached snapshot."""
    if entry is not None:
        return hub.language_pair(entry.path)
    ref = hub_ref(path)
    if ref is not None:
        snapshot = hub.cached_snapshot(ref)
        return hub.language_pair(snapshot) if snapshot is not None else None
    return hub.language_pair(path)


def describe(entry: hub.ModelEntry) -> str:
    """The palette's help line for a listed model: direction, where it comes from, size."""
    state = "" if entry.complete else " · incomplete: opening it downloads the rest"
    return f"{entry.direction} · {entry.source} · {decimal(entry.size)}{state}"
