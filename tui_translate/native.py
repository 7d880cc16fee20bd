"""The optional compiled decoder step (csrc/decoder_step.cpp): built once per machine, loaded when ready.

A one-token decoder step of a small model is mostly the cost of issuing its ATen calls from Python, so
`fused.FusedDecoderStep` hands one-token steps to a C++ version of itself that issues the same calls
with the same arguments (bit-identical logits and attention), and `fused.FusedEncoder` its pass without
attention weights (bit-identical memory). It is optional and never waited for:

* `start_build()` starts the build in a detached background process (torch's C++ extension builder:
  a C++ compiler and ninja) unless the artifact is there; the caller goes on with the Python step.
  The artifact is cached per machine under the user cache directory, keyed by the source, torch and
  Python, and put in place atomically; a lock keeps concurrent builders to one.
* `module()` returns the loaded extension once the artifact exists (a file check until then), or None.
* Where there is no compiler, or the build fails, `status()` says why in one line and decoding stays on
  the Python step. TUI_TRANSLATE_NATIVE=0 turns the compiled step off; TUI_TRANSLATE_CACHE moves the cache.

`python -m tui_translate.native build` builds in the foreground (what the background process runs).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import torch
from platformdirs import user_cache_path

SOURCE = Path(__file__).resolve().parent / "csrc" / "decoder_step.cpp"

_lock = threading.Lock()
_module: ModuleType | None = None
_failed: str | None = None  # why the artifact could not be loaded


def enabled() -> bool:
    return os.environ.get("TUI_TRANSLATE_NATIVE", "1") not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    env = os.environ.get("TUI_TRANSLATE_CACHE")
    return (Path(env) if env else user_cache_path("tui-translate", appauthor=False)) / "native"


@functools.cache
def _key() -> str:
    """The source, torch and Python the artifact is built for."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(f"{torch.__version__}|{sys.version}|{sysconfig.get_platform()}".encode())
    return h.hexdigest()[:16]


def module_name() -> str:
    return f"tui_translate_step_{_key()}"


def artifact() -> Path:
    return cache_dir() / f"{module_name()}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"


def _log() -> Path:
    return cache_dir() / f"{module_name()}.log"


def _path() -> str:
    """PATH with this environment's scripts directory, where the `ninja` dependency puts its binary (a virtual
    environment's bin/ is not on PATH unless it is activated)."""
    scripts, path = sysconfig.get_path("scripts"), os.environ.get("PATH", "")
    return path if scripts in path.split(os.pathsep) else os.pathsep.join([scripts, path])


def compiler() -> str | None:
    """The C++ compiler torch's extension builder would use, if there is one with ninja (which it needs)."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    return cxx if cxx is not None and shutil.which("ninja", path=_path()) is not None else None


def module() -> ModuleType | None:
    """The loaded extension, or None while it is not built (or cannot be: see `status`)."""
    global _module, _failed
    if _module is not None or _failed is not None or not enabled():
        return _module
    path = artifact()
    if not path.exists():
        return None
    with _lock:
        if _module is None and _failed is None:
            try:
                spec = importlib.util.spec_from_file_location(module_name(), path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                _module = mod
            except Exception as e:  # noqa: BLE001 - a broken artifact means the Python step, said once
                _failed = f"the compiled decoder step did not load ({type(e).__name__}: {e}); using the Python step"
    return _module


def report_failure(why: str) -> None:
    """A model the extension could not take: decoding stays on the Python step, and `status` says why."""
    global _failed
    _failed = f"{why}; using the Python step"


def status() -> str:
    """One line: whether decoding uses the compiled step, and why not."""
    if not enabled():
        return "compiled decoder step off (TUI_TRANSLATE_NATIVE=0)"
    if module() is not None:
        return "compiled decoder step in use"
    if _failed:
        return _failed
    if compiler() is None:
        return "no C++ compiler (or ninja) found: using the Python decoder step"
    log = _log()
    if log.exists():
        if "FAILED" in log.read_text(errors="replace"):
            return f"building the compiled decoder step failed (log: {log}); using the Python step"
        return "building the compiled decoder step in the background (once per machine); using the Python step meanwhile"
    return "compiled decoder step not built yet: using the Python step"


def notice() -> str | None:
    """`status()` when it is worth telling a user (compiling, no compiler, failed), None when the compiled step is
    in use or turned off."""
    if not enabled() or module() is not None:
        return None
    return status()


def build(verbose: bool = False) -> Path:
    """Compile the extension in the foreground and put it in place atomically; returns the artifact."""
    from filelock import FileLock
    from torch.utils.cpp_extension import load

    dest = artifact()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            return dest
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
            os.environ["PATH"] = _path()  # torch runs `ninja` from PATH
            load(module_name(), [str(SOURCE)], extra_cflags=["-O2"], build_directory=tmp, verbose=verbose)
            built = next(Path(tmp).glob(f"{module_name()}*.so"))
            staged = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(built, staged)
            os.replace(staged, dest)  # atomic: a reader sees no artifact or the whole of it
    return dest


def build_now() -> str | None:
    """Build in the foreground unless it is off, built, or impossible here; returns why it failed, or None."""
    if not enabled() or compiler() is None or artifact().exists():
        return None
    try:
        build()
    except Exception as e:  # noqa: BLE001 - the Python step still decodes; the caller says why
        return f"building the compiled decoder step failed ({type(e).__name__}: {e}); using the Python step"
    return None


def start_build() -> bool:
    """Start building in a detached background process unless the artifact exists, building is off, or
    there is no compiler. Returns whether a build was started. Its output goes to a log beside the artifact."""
    if not enabled() or artifact().exists() or compiler() is None:
        return False
    log = _log()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        if log.exists() and "FAILED" in log.read_text(errors="replace"):
            return False  # failed before on this machine with this source: not again at every start
        with open(log, "w") as out:
            subprocess.Popen([sys.executable, "-m", "tui_translate.native", "build"], stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except OSError as e:  # an unwritable cache directory, say: decoding goes on with the Python step
        report_failure(f"the compiled decoder step cannot be built here ({type(e).__name__}: {e})")
        return False
    return True


def _main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m tui_translate.native build", file=sys.stderr)
        return 2
    if hasattr(os, "nice"):  # POSIX: a background job, the app or the translation that started it goes first
        os.nice(10)
    try:
        print(build(verbose=True), flush=True)
    except Exception as e:  # noqa: BLE001 - recorded for status()
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
