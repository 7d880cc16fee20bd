"""Atomic writes: a crash at any moment leaves the old file or the new one, never a torn one.

Write to a temporary file in the same directory, flush and fsync it, then
`os.replace` it over the destination and fsync the directory.

* A destination that is a symlink is written through (the link stays, its target is replaced).
* A destination that exists and is not a regular file (a pipe such as `--output >(gzip > f)`,
  /dev/stdout) cannot be replaced by a rename; it is written directly.
* Files and directories are created with the process's umask (0666 / 0777 minus the umask), like any
  other program's; a file that is replaced keeps its permission bits.
* Temporary names carry the writer's pid (`.NAME.PID-XXXXXXXX.tmp`): the ones a killed writer left
  (kill -9, power loss) are removed by the next write into the same directory.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import TranslateError

_TMP = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")
_OLD_STYLE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp/mkdtemp names of earlier versions
_OLD_STYLE_AGE_S = 3600.0  # those carry no pid: removed only once nobody can still be writing them
_active: set[str] = set()  # temporary paths this process is writing now
_lock = threading.Lock()


class OutputExistsError(TranslateError):
    """The destination of an export/import is not empty (or is the source); nothing was written."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale_temps(directory: str | Path) -> list[Path]:
    """Remove the temporary files/directories a killed writer left in `directory`; returns them.

    A temporary is stale when its writer's pid is gone, or is this process's pid but not one of its
    current writes (a restarted container often gets the same pid back)."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TMP.match(entry.name)
        if m:
            pid = int(m.group(1))
            with _lock:
                mine = entry.path in _active
            stale = not mine and (pid == os.getpid() or not _pid_alive(pid))
        elif _OLD_STYLE_TMP.match(entry.name):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > _OLD_STYLE_AGE_S
            except OSError:
                stale = False
        else:
            continue
        if not stale:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _tmp_name(parent: Path, name: str) -> Path:
    return parent / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _new_tmp(parent: Path, name: str, directory: bool) -> Path:
    """A fresh temporary sibling, created with the umask's permissions (mkstemp would make it 0600)."""
    clean_stale_temps(parent)
    while True:
        tmp = _tmp_name(parent, name)
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        with _lock:
            _active.add(str(tmp))
        return tmp


def _done(tmp: Path) -> None:
    with _lock:
        _active.discard(str(tmp))


def write_with(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call `writer(tmp_path)` to produce the file, then move it into place atomically."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows links, /dev/fd/N's included
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory")
        writer(str(path))  # a pipe or a device: nothing to rename over; written in place
        return path
    if path.is_symlink():  # replace the link's target, keep the link
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_tmp(path.parent, path.name, directory=False)
    try:
        writer(str(tmp))
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        _done(tmp)
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return write_with(path, writer)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _fsync_tree(tmp: Path) -> None:
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)


def replace_dir(build: Callable[[Path], None], dest: str | Path) -> Path:
    """Build a directory in a temporary sibling, then swap it into `dest`.

    The swap is a rename; an existing `dest` is first renamed aside and removed
    after the new one is in place, so `dest` is always complete or absent.
    For a destination the user names (export, import) use `write_dir`, which never
    deletes what it did not write.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_tmp(dest.parent, dest.name, directory=True)
    try:
        build(tmp)
        _fsync_tree(tmp)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _done(tmp)
    return dest


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_dir(dest: str | Path, force: bool = False, sources: Iterable[str | Path] = ()) -> Path:
    """Refuse a destination that is a source of the command (even with --force), a file, or a
    non-empty directory unless `force`; raises `OutputExistsError` before anything is written."""
    dest = Path(dest).expanduser()
    for src in sources:
        if _same_dir(dest, Path(src).expanduser()):
            raise OutputExistsError(f"{dest}: is the input directory; choose another output directory")
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise OutputExistsError(f"{dest}: exists and is not a directory")
        if any(os.scandir(dest)) and not force:
            raise OutputExistsError(f"{dest}: exists and is not empty; nothing was written (--force writes into it, "
                                    "replacing only the files of the same names)")
    return dest


def write_dir(build: Callable[[Path], None], dest: str | Path, force: bool = False, owned: Iterable[str] = (),
              sources: Iterable[str | Path] = ()) -> Path:
    """Write the directory `build(tmp)` produces to `dest`, which the user named: never deleting what
    this command did not write.

    An absent or empty `dest` receives the whole directory by one rename (complete or absent). A
    non-empty one is refused unless `force`; then each built file replaces its namesake atomically,
    the files of `owned` (this format's file names) that this build did not produce are removed (a
    stale one would be read with the new files), and every other file stays."""
    dest = check_output_dir(dest, force, sources)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_tmp(dest.parent, dest.name, directory=True)
    try:
        build(tmp)
        _fsync_tree(tmp)
        check_output_dir(dest, force, sources)  # it may have changed while building
        if not dest.exists() or not any(os.scandir(dest)):
            os.replace(tmp, dest)  # rename(2) replaces an empty directory
        else:
            built = {f.name for f in tmp.iterdir()}
            for name in built:
                target = dest / name
                if target.is_dir() and not target.is_symlink():
                    raise OutputExistsError(f"{target}: is a directory; nothing more was written")
                os.replace(tmp / name, target)
            for name in set(owned) - built:
                target = dest / name
                if target.is_file() or target.is_symlink():
                    target.unlink()
            _fsync_dir(dest)
            tmp.rmdir()
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _done(tmp)
    return dest
