"""Which exceptions are the user's problem (one-line message) rather than a bug (traceback)."""

from __future__ import annotations


class TranslateError(Exception):
    """Base of every error caused by the user's input, flags, files or model rather than by a bug
    (ConfigError, ModelLoadError, InputTooLong, DecodingError): the command line prints it as one line
    and exits non-zero, the app shows it as a notification."""


def is_user_error(e: BaseException) -> bool:
    from .hub import HubError

    # HubError, DataError (data.py) and plain ValueError remain until their raises derive from
    # TranslateError: train.py and oneshot.py still raise ValueError for bad flags and run directories.
    return isinstance(e, (TranslateError, HubError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError))
