"""Which exceptions are the user's problem (one-line message) rather than a bug (traceback)."""

from __future__ import annotations

import sys


class TranslateError(Exception):
    """Base of every error caused by the user's input, flags, files or model rather than by a bug
    (ConfigError, ModelLoadError, InputTooLong, DecodingError): the command line prints it as one line
    and exits non-zero, the app shows it as a notification."""


def is_user_error(e: BaseException) -> bool:
    # HubError, DataError (data.py) and plain ValueError remain until their raises derive from
    # TranslateError: train.py and oneshot.py still raise ValueError for bad flags and run directories.
    # hub is looked up, not imported (a HubError exists only once hub was imported; an import here
    # would close a circle atomic -> errors -> hub -> atomic).
    hub = sys.modules.get(f"{__package__}.hub")
    hub_errors = (hub.HubError,) if hub is not None else ()
    if isinstance(e, (TranslateError, *hub_errors, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                      ValueError)):
        return True
    # the disk is full, read-only, a path is too long or loops: the user's to fix, in one line
    import errno

    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP,
                                                   errno.EEXIST, errno.ENOTEMPTY, errno.EDQUOT)


def one_line(message: object) -> str:
    """A message as one line (a file's error text can hold newlines)."""
    return " ".join(str(message).split())


def warn(message: str) -> None:
    """One warning, one line on stderr, never wrapped (a log file or a pipe keeps it whole)."""
    print(f"tui-translate: warning: {one_line(message)}", file=sys.stderr, flush=True)
