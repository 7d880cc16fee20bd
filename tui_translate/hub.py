"""Hugging Face Hub models by repo id (`owner/name[@revision]`), kept in the standard Hub cache.

A repo id resolves to a local Marian (opus-mt) directory: a snapshot in huggingface_hub's own
cache layout (`models--owner--name/{blobs,refs,snapshots}`), so models downloaded by
transformers are found and ours are found by transformers. Only the files the Marian loader
reads are ever fetched (`REQUIRED_FILES`, `OPTIONAL_FILES`, weights as model.safetensors, or pytorch_model.bin,
which the loader reads with `torch.load(weights_only=True)`); no code from a repo is run.

Never a half model: files download one by one into the cache (huggingface_hub writes each
into a temporary file and renames it when complete), and the ref (`refs/main`) is written by
us only once every file of the commit is there. A cached model is used without the network
(`tui-translate models pull ID` updates it); offline (`HF_HUB_OFFLINE=1`) an uncached one is
a one-line error saying what to run, and every network call has a timeout.

Torch-free (the app's model list imports it); huggingface_hub is imported only to download,
list or remove (the optional `hub` extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TranslateError

REQUIRED_FILES = ("config.json", "vocab.json", "source.spm", "target.spm")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
OPTIONAL_FILES = ("tokenizer_config.json",)  # the language pair (source_lang / target_lang)
DEFAULT_TIMEOUT = 10.0  # seconds; HF_HUB_ETAG_TIMEOUT overrides it, as it does for huggingface_hub

_REPO_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?")
_REVISION = re.compile(r"[\w.\-]+(?:/[\w.\-]+)*")  # main, v1.0, refs/pr/1, a commit
_COMMIT = re.compile(r"[0-9a-f]{40}")
_PAIR = re.compile(r"(?:^|[-_])([a-z]{2,3}|[A-Z]{3,})-([a-z]{2,3}|[A-Z]{3,})$")

Progress = Callable[[int, int, str], None]  # (bytes done, bytes in all, file being fetched)


class HubError(TranslateError):
    """A Hub model cannot be resolved; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None  # None: the default branch (main)

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def ref_name(self) -> str:
        return self.revision or "main"


def parse_repo_id(spec: str | os.PathLike | None) -> HubRef | None:
    """`owner/name[@revision]` -> HubRef; None for anything else (a path, a bare name).

    An existing local path always wins: `models/fr-en` is the shipped directory, not a repo."""
    if spec is None:
        return None
    text = str(spec)
    if not text or text.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(text)):
        return None
    repo, _, revision = text.partition("@")
    if not _REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo:
        return None
    if "@" in text and not _REVISION.fullmatch(revision) or ".." in revision:
        return None  # a revision also names a file under refs/: no empty, absolute or parent components
    return HubRef(repo, revision or None)


# -- the cache, read without huggingface_hub ------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now rather than when huggingface_hub was imported."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache directory, computed as it does (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT


def repo_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _missing_files(snapshot: Path) -> list[str]:
    missing = [f for f in REQUIRED_FILES if not (snapshot / f).is_file()]
    if not any((snapshot / f).is_file() for f in WEIGHT_FILES):
        missing.append(WEIGHT_FILES[0])
    return missing


def _commit_for(ref: HubRef) -> str | None:
    if ref.revision and _COMMIT.fullmatch(ref.revision):
        return ref.revision
    try:
        return (repo_folder(ref.repo_id) / "refs" / ref.ref_name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def cache_state(ref: HubRef) -> tuple[str, Path | None]:
    """("complete", snapshot) | ("incomplete", snapshot) | ("missing", None) for a repo id in the cache."""
    commit = _commit_for(ref)
    folder = repo_folder(ref.repo_id)
    if commit is None:  # no ref yet: never downloaded, or the first download was interrupted
        partial = [p for p in (folder / "snapshots").glob("*") if p.is_dir() and _missing_files(p)] if folder.is_dir() else []
        return ("incomplete", partial[0]) if partial else ("missing", None)
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return "missing", None
    return ("incomplete" if _missing_files(snapshot) else "complete"), snapshot


def cached_snapshot(ref: HubRef) -> Path | None:
    state, path = cache_state(ref)
    return path if state == "complete" else None


# -- metadata -------------------------------------------------------------------------------------
def _hub_repo_of(path: Path) -> str | None:
    """'owner/name' when `path` is a snapshot in the Hub cache (…/models--owner--name/snapshots/<commit>)."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--"):].replace("--", "/", 1)
    return None


def display_name(path: str | Path) -> str:
    path = Path(path)
    return _hub_repo_of(path) or path.name


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def language_pair(path: str | Path) -> tuple[str, str] | None:
    """(source, target) language codes of a model directory, from the model itself: our config.json's
    meta, a Marian tokenizer_config.json (source_lang / target_lang), else the repo or directory name
    (opus-mt-de-en -> de, en; opus-mt-en-ROMANCE -> en, ROMANCE). None when nothing says."""
    path = Path(path)
    meta = _read_json(path / "config.json").get("meta")
    tok = _read_json(path / "tokenizer_config.json")
    for d in (meta if isinstance(meta, dict) else {}, tok):
        src, tgt = d.get("source_lang"), d.get("target_lang")
        if isinstance(src, str) and isinstance(tgt, str) and src and tgt and "?" not in (src, tgt):
            return src, tgt
    m = _PAIR.search(display_name(path).rsplit("/", 1)[-1])
    return (m.group(1), m.group(2)) if m else None


def _dir_size(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size  # follows the snapshot's symlinks to the blobs
        except OSError:
            pass
    return total


# -- downloading ----------------------------------------------------------------------------------
def _hf():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("Hugging Face Hub models need huggingface_hub: pip install 'tui-translate[hub]'") from None
    return huggingface_hub


def _explain(e: BaseException, ref: HubRef) -> str:
    names = {c.__name__ for c in type(e).__mro__}
    if "RevisionNotFoundError" in names:
        return f"{ref.repo_id} has no revision {ref.revision!r} on the Hugging Face Hub"
    if "GatedRepoError" in names:
        return f"{ref.repo_id} is gated: accept its terms on the Hub and log in (`hf auth login`)"
    if "RepositoryNotFoundError" in names:
        return f"no such model on the Hugging Face Hub (or it is private: `hf auth login`), nor a local directory"
    if "OfflineModeIsEnabled" in names:
        return "HF_HUB_OFFLINE is set"
    if any("Timeout" in n for n in names):
        return f"the Hugging Face Hub ({endpoint()}) did not answer within {timeout():g} s"
    if names & {"ConnectError", "ConnectionError", "NetworkError", "ProtocolError", "RemoteProtocolError", "ReadError"}:
        return f"cannot reach the Hugging Face Hub ({endpoint()})"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"the Hugging Face Hub ({endpoint()}) answered HTTP {status}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def choose_files(ref: HubRef, repo_files: dict[str, int | None]) -> list[str]:
    """The files to fetch from a repo listing (name -> size): the Marian files and one weights file."""
    missing = [f for f in REQUIRED_FILES if f not in repo_files]
    weights = next((f for f in WEIGHT_FILES if f in repo_files), None)
    if weights is None:
        others = sorted(f for f in repo_files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack", ".ot")))
        found = f" (it has {', '.join(others[:4])}: not loaded, only safetensors or a weights-only torch state dict are)" if others else ""
        raise HubError(f"{ref}: no model.safetensors or pytorch_model.bin in the repo{found}")
    if missing:
        raise HubError(f"{ref}: not a Marian (opus-mt) model: the repo lacks {', '.join(missing)}")
    return [*REQUIRED_FILES, weights, *(f for f in OPTIONAL_FILES if f in repo_files)]


def _tqdm_class(report: Callable[[int], None]):
    """A stand-in for tqdm that huggingface_hub updates while it downloads one file."""

    class Bar:
        def __init__(self, *args: Any, initial: int = 0, **kwargs: Any) -> None:
            self.n = 0
            if initial:
                self.update(initial)

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            report(self.n)

        def __enter__(self):
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def refresh(self, *a: Any, **k: Any) -> None:
            pass

        def set_description(self, *a: Any, **k: Any) -> None:
            pass

        def set_postfix_str(self, *a: Any, **k: Any) -> None:
            pass

    return Bar


def _write_ref(ref: HubRef, commit: str) -> None:
    """Point refs/<revision> at `commit`: done last, so a ref only ever names a complete snapshot."""
    if ref.revision == commit:
        return
    from .atomic import write_text

    write_text(repo_folder(ref.repo_id) / "refs" / ref.ref_name, commit)  # no newline: huggingface_hub reads it verbatim


def download(ref: HubRef, progress: Progress | None = None, announce: Callable[[str], None] | None = None) -> Path:
    """Fetch the newest commit of `ref` into the cache (only the missing files) and return its snapshot."""
    if offline():
        raise HubError(f"{ref}: cannot download with HF_HUB_OFFLINE set; unset it (online) and run `tui-translate models pull {ref}`")
    hf = _hf()
    cache = hub_cache_dir()
    try:
        info = hf.HfApi(endpoint=endpoint()).model_info(ref.repo_id, revision=ref.revision, files_metadata=True, timeout=timeout())
    except Exception as e:  # noqa: BLE001 - every network failure becomes one line
        raise HubError(f"{ref}: {_explain(e, ref)}") from None
    commit = info.sha
    if not commit:
        raise HubError(f"{ref}: the Hub did not say which commit {ref.ref_name} is")
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    files = choose_files(ref, sizes)
    snapshot = repo_folder(ref.repo_id) / "snapshots" / commit
    todo = [f for f in files if not (snapshot / f).is_file()]
    total = sum(sizes.get(f) or 0 for f in files)
    done = sum(sizes.get(f) or 0 for f in files if f not in todo)
    if todo and announce:
        announce(f"downloading {ref} ({_human(sum(sizes.get(f) or 0 for f in todo))}) into {cache}")
    if progress:
        progress(done, total, "")
    kwargs: dict[str, Any] = {"revision": commit, "cache_dir": str(cache), "endpoint": endpoint(), "etag_timeout": timeout()}
    import inspect

    takes_bar = "tqdm_class" in inspect.signature(hf.hf_hub_download).parameters
    for name in todo:
        if progress and takes_bar:
            kwargs["tqdm_class"] = _tqdm_class(lambda n, base=done, name=name: progress(base + n, total, name))
        try:
            hf.hf_hub_download(ref.repo_id, name, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise HubError(f"{ref}: downloading {name} failed: {_explain(e, ref)}; nothing half-downloaded is kept, "
                           f"run `tui-translate models pull {ref}` again") from None
        done += sizes.get(name) or 0
        if progress:
            progress(done, total, name)
    missing = [f for f in files if not (snapshot / f).is_file()]
    if missing:  # the Hub served another commit than it listed (a push in between)
        raise HubError(f"{ref}: the download is incomplete ({', '.join(missing)} missing); run `tui-translate models pull {ref}` again")
    _write_ref(ref, commit)
    return snapshot


def resolve(spec: str | HubRef, progress: Progress | None = None, announce: Callable[[str], None] | None = None) -> Path:
    """A repo id -> the local directory of a complete snapshot, downloading it if it is not cached."""
    ref = spec if isinstance(spec, HubRef) else parse_repo_id(spec)
    if ref is None:
        raise HubError(f"{spec}: not a Hugging Face Hub repo id (owner/name[@revision]) nor an existing directory")
    state, _ = cache_state(ref)
    if state == "complete":
        return cached_snapshot(ref)  # type: ignore[return-value]
    if offline():
        what = "is only partly in" if state == "incomplete" else "is not in"
        raise HubError(f"{ref} {what} the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set (nor is it a "
                       f"local directory); run `tui-translate models pull {ref}` while online")
    try:
        return download(ref, progress, announce)
    except HubError as e:
        what = "the cached copy is incomplete and was not used" if state == "incomplete" else "it is not in the cache yet"
        raise HubError(f"{e} ({what})") from None


def resolve_model_arg(value: str | None, progress: Progress | None = None,
                      announce: Callable[[str], None] | None = None) -> str | None:
    """--model as given on the command line: a repo id becomes its local snapshot; anything else is
    returned unchanged (a directory, or None for the default model)."""
    ref = parse_repo_id(value)
    return value if ref is None else str(resolve(ref, progress, announce))


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@contextmanager
def rich_progress(console=None) -> Iterator[tuple[Progress, Callable[[str], None]]]:
    """(progress, announce) callbacks drawing a Rich download bar on stderr (a plain line when not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = console or Console(stderr=True)
    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                       console=console, transient=True, disable=not console.is_terminal)
    task = None

    def progress(done: int, total: int, name: str) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("", total=total or None)
        bar.update(task, completed=done, total=total or None, description=name or "…")

    def announce(line: str) -> None:
        console.print(f"tui-translate: {line}", highlight=False)

    with bar:
        yield progress, announce


def cli_resolve(value: str | None) -> str | None:
    """`resolve_model_arg` with the CLI's progress bar."""
    if parse_repo_id(value) is None:
        return value
    with rich_progress() as (progress, announce):
        return resolve_model_arg(value, progress, announce)


# -- the model list and removal -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    spec: str  # what --model takes
    source: str  # "shipped" | "converted" | "hub"
    path: Path
    size: int
    direction: str  # "de-en", or "?"
    complete: bool = True


def converted_models_dir() -> Path:
    """Where `import-marian` output is looked for besides the shipped models/ (listed as converted)."""
    from .paths import data_dir

    return data_dir() / "models"


def _direction(path: Path) -> str:
    pair = language_pair(path)
    return f"{pair[0]}-{pair[1]}" if pair else "?"


def _local_entries() -> list[ModelEntry]:
    from .paths import available_models

    out = []
    user = converted_models_dir()
    user_dirs = sorted(p for p in user.iterdir() if (p / "config.json").is_file()) if user.is_dir() else []
    for p in [*available_models(), *user_dirs]:
        meta = _read_json(p / "config.json").get("meta")
        converted = p.parent == user or (isinstance(meta, dict) and meta.get("imported_from")) or (p / "source.spm").exists()
        out.append(ModelEntry(str(p), "converted" if converted else "shipped", p, _dir_size(p), _direction(p)))
    return out


def _hub_entries() -> list[ModelEntry]:
    root = hub_cache_dir()
    out = []
    for folder in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        repo_id = folder.name[len("models--"):].replace("--", "/", 1)
        refs = {}
        for r in (folder / "refs").rglob("*") if (folder / "refs").is_dir() else []:
            if r.is_file():
                refs.setdefault(r.read_text(encoding="utf-8").strip(), str(r.relative_to(folder / "refs")))
        for snap in sorted((folder / "snapshots").glob("*")) if (folder / "snapshots").is_dir() else []:
            if not snap.is_dir() or not (snap / "source.spm").exists() and _read_json(snap / "config.json").get("model_type") != "marian":
                continue  # not a Marian model (another library's download): not ours to list
            ref_name = refs.get(snap.name)
            spec = repo_id if ref_name == "main" else f"{repo_id}@{ref_name or snap.name}"
            out.append(ModelEntry(spec, "hub", snap, _dir_size(snap), _direction(snap), not _missing_files(snap)))
    return out


def list_models() -> list[ModelEntry]:
    """Shipped and converted model directories, then the Marian models in the Hub cache."""
    return [*_local_entries(), *_hub_entries()]


def remove(spec: str) -> int:
    """Remove a cached Hub model (every cached revision of the repo); returns the bytes freed."""
    ref = parse_repo_id(spec)
    if ref is None:
        raise HubError(f"{spec}: not a Hugging Face Hub repo id (owner/name); only cached Hub models are removed")
    if ref.revision:
        raise HubError(f"{spec}: rm removes every cached revision of a repo; give the id without @{ref.revision}")
    folder = repo_folder(ref.repo_id)
    if not folder.is_dir():
        raise HubError(f"{ref.repo_id} is not in the Hugging Face cache ({hub_cache_dir()})")
    size = sum(f.stat().st_size for f in (folder / "blobs").glob("*") if f.is_file()) if (folder / "blobs").is_dir() else 0
    # renamed first so a reader never finds a half-deleted snapshot under the repo's name
    doomed = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed)
    return size
