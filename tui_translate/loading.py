"""The one model loader: it picks the directory's format, this project's model directory
(`checkpoint.py`) or a Hugging Face Marian (opus-mt) one (`marian.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import TOKENIZER_FILE, LoadedModel, ModelLoadError, load_model_dir
from .marian import is_marian_dir, load_marian


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load any supported model directory; errors are one-line `ModelLoadError`s naming the file."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a model directory (does not exist or is not a directory)")
    if is_marian_dir(path) and not (path / TOKENIZER_FILE).exists():
        loaded = load_marian(path)
        loaded.model.to(device)
        return loaded
    return load_model_dir(path, device)
