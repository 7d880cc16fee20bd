"""The shipped models are found from a source checkout / editable install and travel inside a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tui_translate.paths import available_models, default_model_dir, models_root

ROOT = Path(__file__).resolve().parent.parent


def test_models_root_from_checkout_and_override(tmp_path, monkeypatch):
    assert models_root() in (ROOT / "models", ROOT / "tui_translate" / "_models")
    assert default_model_dir().name == "fr-en"
    (tmp_path / "xx-yy").mkdir()
    (tmp_path / "xx-yy" / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    monkeypatch.setenv("TUI_TRANSLATE_MODELS", str(tmp_path))
    assert [p.name for p in available_models()] == ["xx-yy"]


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models" / "fr-en" / "model.safetensors").exists(), reason="no shipped model in this checkout")
def test_wheel_carries_the_models(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("tui_translate-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for d in ("fr-en", "en-fr"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
            assert f"tui_translate/_models/{d}/{f}" in names
    assert not [n for n in names if "/_models/wip/" in n]  # unfinished runs' warm starts stay in the repository
