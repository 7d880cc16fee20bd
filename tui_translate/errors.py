"""Which exceptions are the user's problem (one-line message) rather than a bug (traceback)."""

from __future__ import annotations


def is_user_error(e: BaseException) -> bool:
    from .checkpoint import ModelLoadError
    from .config import ConfigError
    from .data import DataError
    from .hub import HubError

    return isinstance(e, (ModelLoadError, ConfigError, DataError, HubError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError))
