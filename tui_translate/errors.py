"""Which exceptions are the user's problem (one-line message) rather than a bug (traceback)."""

from __future__ import annotations

import sys


class TranslateError(Exception):
    """Base of every error caused by the user's input, flags, files or model rather than by a bug
    (ConfigError, ModelLoadError, DataError, CorpusError, RunError, HubError, InputTooLong, DecodingError,
    OutputExistsError, NonFiniteResult): the command line prints it as one line and exits 2, the app shows
    it as a notification. Code that finds the user's mistake raises one of these; any other exception,
    a plain ValueError included, is a bug and keeps its traceback."""


class DecodingError(TranslateError, ValueError):
    """Decoding cannot give a meaningful answer: the model produced non-finite log-probabilities or
    activations (NaN or infinite weights, a NaN layer_norm_eps, an overflow at run time)."""


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, (TranslateError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
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
