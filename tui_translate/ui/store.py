"""Persistence of the input history, the transcript and the settings in the user's data directory.

Several app instances may share one data directory, so history and transcript are append-only JSON
Lines: each new entry is appended as one line while holding a lock file (filelock), and two apps
interleave their entries instead of overwriting each other's file on quit. When a file grows past
twice its limit it is compacted under the same lock: re-read (with whatever the other instance
appended) and rewritten atomically (temporary file, fsync, rename) with its newest entries. A line
torn by a crash is skipped when reading. The settings file is small and rewritten atomically.

Every method may raise OSError (the directory is a file, read-only, full); the app catches it,
says so once and keeps working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..atomic import write_text

HISTORY_FILE = "history.jsonl"
TRANSCRIPT_FILE = "transcript.jsonl"
SETTINGS_FILE = "settings.json"
LOCK_FILE = ".store.lock"
MAX_HISTORY = 500
MAX_TRANSCRIPT = 200
LOCK_TIMEOUT_S = 2.0  # appends hold the lock for milliseconds; a stuck lock must not freeze the app


def _read_jsonl(path: Path) -> list[Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []  # missing, unreadable or not text: nothing to restore (a failing write is reported by the app)
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a damaged line is skipped, the rest survives
    return out


def _dumps(items: list[Any]) -> str:
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items)


class Store:
    """History, transcript and settings; `directory=None` keeps nothing (--clean)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _lock(self) -> FileLock:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(self.directory / LOCK_FILE, timeout=LOCK_TIMEOUT_S)

    def _append(self, name: str, items: list[Any], keep: int) -> None:
        if not self.directory or not items:
            return
        path = self.directory / name
        with self._lock():
            with open(path, "a", encoding="utf-8") as f:
                f.write(_dumps(items))  # one write: the lines of one call stay together
            entries = _read_jsonl(path)
            if len(entries) > 2 * keep:
                write_text(path, _dumps(entries[-keep:]))

    # -- history -------------------------------------------------------------------------------------------
    def load_history(self) -> list[str]:
        if not self.directory:
            return []
        return [x for x in _read_jsonl(self.directory / HISTORY_FILE) if isinstance(x, str)][-MAX_HISTORY:]

    def add_history(self, text: str) -> None:
        self._append(HISTORY_FILE, [text], MAX_HISTORY)

    # -- transcript ----------------------------------------------------------------------------------------
    def load_transcript(self) -> list[dict]:
        if not self.directory:
            return []
        return [x for x in _read_jsonl(self.directory / TRANSCRIPT_FILE) if isinstance(x, dict) and "source" in x][-MAX_TRANSCRIPT:]

    def add_transcript(self, records: list[dict]) -> None:
        self._append(TRANSCRIPT_FILE, records, MAX_TRANSCRIPT)

    def save_transcript(self, entries: list[dict]) -> None:
        """Replace the whole transcript (the newest MAX_TRANSCRIPT entries)."""
        if self.directory:
            with self._lock():
                write_text(self.directory / TRANSCRIPT_FILE, _dumps(entries[-MAX_TRANSCRIPT:]))

    # -- settings ------------------------------------------------------------------------------------------
    def load_settings(self) -> dict:
        if not self.directory:
            return {}
        try:
            data = json.loads((self.directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing, unreadable or damaged: the defaults
        return data if isinstance(data, dict) else {}

    def save_settings(self, settings: dict) -> None:
        if self.directory:
            with self._lock():
                write_text(self.directory / SETTINGS_FILE, json.dumps(settings, ensure_ascii=False, indent=1) + "\n")
