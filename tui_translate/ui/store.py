"""Persistence of the input history and the transcript in the user's data directory.

Files are JSON Lines rewritten atomically (temporary file, fsync, rename), so a crash
leaves the previous version or the new one, never a torn file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text

HISTORY_FILE = "history.jsonl"
TRANSCRIPT_FILE = "transcript.jsonl"
MAX_HISTORY = 500
MAX_TRANSCRIPT = 200


def _read_jsonl(path: Path) -> list[Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError, OSError):
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a damaged line is skipped, the rest survives
    return out


def _write_jsonl(path: Path, items: list[Any]) -> None:
    write_text(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))


class Store:
    """Input history and transcript; `directory=None` keeps everything in memory (--clean)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def load_history(self) -> list[str]:
        if not self.directory:
            return []
        return [x for x in _read_jsonl(self.directory / HISTORY_FILE) if isinstance(x, str)][-MAX_HISTORY:]

    def save_history(self, items: list[str]) -> None:
        if self.directory:
            _write_jsonl(self.directory / HISTORY_FILE, items[-MAX_HISTORY:])

    def load_transcript(self) -> list[dict]:
        if not self.directory:
            return []
        return [x for x in _read_jsonl(self.directory / TRANSCRIPT_FILE) if isinstance(x, dict) and "source" in x][-MAX_TRANSCRIPT:]

    def save_transcript(self, entries: list[dict]) -> None:
        if self.directory:
            _write_jsonl(self.directory / TRANSCRIPT_FILE, entries[-MAX_TRANSCRIPT:])
