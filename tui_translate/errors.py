"""Which exceptions are the user's problem (one-line message) rather than a bug (traceback)."""

from __future__ import annotations


class TranslateError(Exception):
    """Base of every error caused by the user's input, flags, files or model rather than by a bug:
    the command line prints it as one line and exits non-zero, the app shows it as a notification."""


def is_user_error(e: BaseException) -> bool:
    from .checkpoint import ModelLoadError
    from .config import ConfigError
    from .data import DataError
    from .hub import HubError

    # ValueError stays until every user-facing raise is a TranslateError (train.py and oneshot.py still raise
    # plain ValueError for bad flags and run directories)
    return isinstance(e, (TranslateError, ModelLoadError, ConfigError, DataError, HubError, FileNotFoundError,
                          IsADirectoryError, PermissionError, ValueError))
