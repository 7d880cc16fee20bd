"""Hub repo ids, offline: a fake Hugging Face Hub on 127.0.0.1 (HF_ENDPOINT) serving the tiny random Marian
model, and huggingface_hub's own cache layout (HF_HUB_CACHE) checked with huggingface_hub itself."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from tests.test_marian import marian_dir  # noqa: E402,F401 - the tiny random MarianMTModel fixture
from tui_translate import hub  # noqa: E402

REPO = "tiny/marian-test"  # the name says no language: the pair must come from tokenizer_config.json
SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "89abcdef0123456789abcdef0123456789abcdef"


class FakeHub:
    """Enough of the Hub API for HfApi.model_info and hf_hub_download: repo listings with sizes, and
    HEAD/GET of /{repo}/resolve/{revision}/{file} with ETag, X-Repo-Commit and Range."""

    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.truncate: set[str] = set()  # files whose first GET body stops halfway, and the next GETs get a 500
        self.truncated: set[str] = set()
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub_.serve(self, body=False)

            def do_GET(self) -> None:
                hub_.serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, files: dict[str, bytes], sha: str = SHA) -> None:
        self.repos[repo] = (sha, files)

    def fetched(self) -> list[str]:
        return [p.rsplit("/", 1)[-1] for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def _error(self, h, status: int, code: str) -> None:
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound")
            sha, files = self.repos[repo]
            if len(parts) > 5 and parts[4] == "revision" and parts[5] not in ("main", sha):
                return self._error(h, 404, "RevisionNotFound")
            if len(parts) > 4 and parts[4] == "tree":  # list_repo_tree, as huggingface_hub's snapshot_download asks
                data = json.dumps([{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                   for n, b in files.items()])
            else:
                data = json.dumps({"id": repo, "sha": sha, "siblings": [{"rfilename": n, "size": len(b)} for n, b in files.items()]})
            payload = data.encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if body:
                h.wfile.write(payload)
            return None
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        if len(parts) < 5 or parts[2] != "resolve" or repo not in self.repos:
            return self._error(h, 404, "RepoNotFound")
        sha, files = self.repos[repo]
        if name not in files:
            return self._error(h, 404, "EntryNotFound")
        data = files[name]
        start = int(h.headers["Range"].split("=")[1].split("-")[0]) if h.headers.get("Range") else 0
        if name in self.truncated and name in self.truncate and h.command == "GET":
            return self._error(h, 500, "")
        h.send_response(206 if start else 200)
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", sha)
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if body:
            if name in self.truncate:
                self.truncated.add(name)
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return None
            h.wfile.write(data[start:])
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def repo_files(marian_dir: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in marian_dir.iterdir() if p.is_file()}
    files["tokenizer_config.json"] = json.dumps({"source_lang": "fr", "target_lang": "en"}).encode()
    files["README.md"] = b"# a model card\n"
    files["tf_model.h5"] = b"not for us" * 10
    files["pytorch_model.bin"] = b"never fetched when model.safetensors is there"
    return files


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, marian_dir):  # noqa: F811
    server = FakeHub()
    server.add(REPO, repo_files(marian_dir))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TUI_TRANSLATE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield server
    server.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tui_translate", *args], capture_output=True, text=True, env=full, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tui-translate: error: "), proc.stderr
    return lines[0]


def test_repo_ids_are_told_apart_from_paths(tmp_path, monkeypatch):
    assert hub.parse_repo_id("Helsinki-NLP/opus-mt-de-en") == hub.HubRef("Helsinki-NLP/opus-mt-de-en")
    assert hub.parse_repo_id("Helsinki-NLP/opus-mt-de-en@v1.0") == hub.HubRef("Helsinki-NLP/opus-mt-de-en", "v1.0")
    assert hub.parse_repo_id("a/b@refs/pr/1") == hub.HubRef("a/b", "refs/pr/1")
    for not_an_id in ("models/../x", "./a/b", "/abs/path", "~/a", "just-a-name", "a/b/c", "a/b@", "a/b@x y", "a/b@/etc/x", "a/b@x//y", "a/b@../x",
                       "a/b@x/", "a--b/c", None, ""):
        assert hub.parse_repo_id(not_an_id) is None, not_an_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "fr-en").mkdir(parents=True)
    assert hub.parse_repo_id("models/fr-en") is None  # an existing directory wins over a repo of that name


def our_model_dir(path: Path, source: str = "fr", target: str = "en") -> Path:
    """What list_models and language_pair read of one of our model directories: config.json's meta."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": {}, "meta": {"source_lang": source, "target_lang": target}}))
    (path / "model.safetensors").write_bytes(b"0" * 1000)
    return path


def test_language_pair_comes_from_the_model(tmp_path):
    assert hub.language_pair(our_model_dir(tmp_path / "mine", "en", "fr")) == ("en", "fr")  # our config.json's meta
    d = tmp_path / "opus-mt-en-ROMANCE"
    d.mkdir()
    assert hub.language_pair(d) == ("en", "ROMANCE")
    snap = tmp_path / "models--Helsinki-NLP--opus-mt-de-en" / "snapshots" / SHA
    snap.mkdir(parents=True)
    assert hub.language_pair(snap) == ("de", "en") and hub.display_name(snap) == "Helsinki-NLP/opus-mt-de-en"
    (snap / "tokenizer_config.json").write_text(json.dumps({"source_lang": "deu", "target_lang": "eng"}))
    assert hub.language_pair(snap) == ("deu", "eng")
    assert hub.language_pair(tmp_path) is None


def test_resolve_load_translate_then_offline(fake_hub, marian_dir, monkeypatch, tmp_path):  # noqa: F811
    from huggingface_hub import try_to_load_from_cache

    from tui_translate.loading import load_model
    from tui_translate.translator import Translator

    seen: list[tuple[int, int, str]] = []
    path = hub.resolve(REPO, progress=lambda d, t, n: seen.append((d, t, n)))
    files = repo_files(marian_dir)
    # only the allow-listed files, and one weights file: the safetensors, not the pickle
    assert sorted(fake_hub.fetched()) == sorted(["config.json", "vocab.json", "source.spm", "target.spm", "model.safetensors",
                                                 "tokenizer_config.json"])
    total = sum(len(files[f]) for f in fake_hub.fetched())
    assert seen[-1] == (total, total, seen[-1][2]) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # the standard cache layout: huggingface_hub itself finds the files through the ref we wrote
    assert try_to_load_from_cache(REPO, "model.safetensors", cache_dir=os.environ["HF_HUB_CACHE"]) == str(path / "model.safetensors")
    t = Translator(load_model(path))
    reference = Translator(load_model(marian_dir))
    assert (t.name, t.source_lang, t.target_lang) == (REPO, "fr", "en")
    for text in ("je suis étudiant", "le chat dort"):
        assert t.translate(text).text == reference.translate(text).text

    from tui_translate import cli  # import-marian takes a repo id too

    assert cli.main(["import-marian", REPO, str(tmp_path / "converted")]) == 0
    assert load_model(tmp_path / "converted").meta["name"] == REPO

    # offline, and with the server gone: the cached model resolves without a request
    fake_hub.close()
    n = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve(REPO) == path
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.resolve(REPO) == path  # online too: a complete cached copy is used as is (models pull updates it)
    assert len(fake_hub.requests) == n


def test_a_cache_filled_by_huggingface_hub_itself_is_used_offline(fake_hub, monkeypatch):
    from huggingface_hub import snapshot_download

    from tui_translate.loading import load_model

    folder = snapshot_download(REPO, cache_dir=os.environ["HF_HUB_CACHE"], endpoint=fake_hub.url)  # every file, as transformers would
    assert "tf_model.h5" in os.listdir(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve(REPO) == Path(folder)
    loaded = load_model(folder)
    assert (loaded.name, loaded.meta["source_lang"], loaded.meta["target_lang"]) == (REPO, "fr", "en")


def test_cli_translate_by_repo_id_online_then_offline(fake_hub, marian_dir):  # noqa: F811
    from tui_translate.translator import Translator

    expected = Translator.load(marian_dir).translate("le chat dort").text
    online = cli("translate", "--model", REPO, "le chat dort")
    assert online.returncode == 0, online.stderr
    assert online.stdout.strip() == expected
    assert f"downloading {REPO}" in online.stderr
    fake_hub.close()
    offline = cli("translate", "--model", REPO, "le chat dort", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == expected and "downloading" not in offline.stderr


def test_offline_missing_is_one_clear_line(fake_hub):
    for command in (["translate", "--model", REPO, "bonjour"], ["eval", "x.tsv", "--model", REPO], ["bench", "--input", "x.txt", "--model", REPO]):
        line = one_line_error(cli(*command, env={"HF_HUB_OFFLINE": "1"}))
        assert f"{REPO} is not in the Hugging Face cache" in line and f"tui-translate models pull {REPO}" in line
    assert fake_hub.requests == []


def test_unknown_repo_and_revision_are_one_line(fake_hub):
    assert "no such model on the Hugging Face Hub" in one_line_error(cli("translate", "--model", "tiny/nothing", "x"))
    assert "has no revision 'v9'" in one_line_error(cli("translate", "--model", f"{REPO}@v9", "x"))


def test_a_silent_hub_times_out(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, and never answered
    try:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}", "HF_HUB_CACHE": str(tmp_path / "c"),
               "HF_HOME": str(tmp_path / "h"), "HF_HUB_ETAG_TIMEOUT": "1", "NO_PROXY": "127.0.0.1"}
        proc = cli("translate", "--model", REPO, "bonjour", env={**env, "HF_HUB_OFFLINE": ""})
        assert "did not answer within 1 s" in one_line_error(proc)
    finally:
        silent.close()


def _evil_pickle(path: Path, marker: Path) -> None:
    """A torch checkpoint whose unpickling calls open(marker, "w")."""
    import torch

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"model.shared.weight": Evil()}, path)


def test_a_pickle_is_never_run(fake_hub, marian_dir, tmp_path):  # noqa: F811
    import torch

    from tui_translate.checkpoint import ModelLoadError
    from tui_translate.loading import load_model

    oracle_marker = tmp_path / "oracle-ran"
    _evil_pickle(tmp_path / "oracle.bin", oracle_marker)
    torch.load(tmp_path / "oracle.bin", weights_only=False)  # the oracle: unpickled without protection, it runs
    assert oracle_marker.exists()

    marker = tmp_path / "pickle-ran"
    _evil_pickle(tmp_path / "evil.bin", marker)
    files = {k: v for k, v in repo_files(marian_dir).items() if k not in ("model.safetensors", "pytorch_model.bin")}
    fake_hub.add("tiny/pickled", {**files, "pytorch_model.bin": (tmp_path / "evil.bin").read_bytes()})
    path = hub.resolve("tiny/pickled")  # downloaded: a weights-only state dict would be fine ...
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_model(path)  # ... but loading refuses the objects, without running them
    assert not marker.exists()
    proc = cli("translate", "--model", "tiny/pickled", "bonjour")
    assert "cannot read weights" in one_line_error(proc)
    assert not marker.exists()

    # a repo whose weights are only in another pickle format: nothing of it is downloaded
    fake_hub.add("tiny/pkl-only", {**files, "model.pkl": (tmp_path / "evil.bin").read_bytes()})
    before = len(fake_hub.fetched())
    with pytest.raises(hub.HubError, match=r"no model.safetensors or pytorch_model.bin in the repo \(it has model.pkl"):
        hub.resolve("tiny/pkl-only")
    assert len(fake_hub.fetched()) == before and not marker.exists()


def test_an_interrupted_download_is_never_used(fake_hub, marian_dir, monkeypatch):  # noqa: F811
    from tui_translate.loading import load_model

    fake_hub.truncate.add("model.safetensors")  # the connection drops halfway, and resuming fails
    with pytest.raises(hub.HubError, match="downloading model.safetensors failed"):
        hub.resolve(REPO)
    assert hub.cache_state(hub.HubRef(REPO))[0] == "incomplete"
    assert not (hub.repo_folder(REPO) / "refs" / "main").exists()  # no ref names a half snapshot
    assert not any(p.name.endswith(".incomplete") for p in (hub.repo_folder(REPO) / "blobs").iterdir())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="is only partly in the Hugging Face cache"):
        hub.resolve(REPO)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    [entry] = [e for e in hub.list_models() if e.source == "hub"]
    assert not entry.complete

    # interrupted by the user (Ctrl-C) in the middle of the weights
    fake_hub.truncate.clear()

    def interrupt(done: int, total: int, name: str) -> None:
        if name == "model.safetensors" and done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.resolve(REPO, progress=interrupt)
    assert hub.cache_state(hub.HubRef(REPO))[0] == "incomplete"

    # once the network is back, the next resolve fetches what is missing, only that, and loads
    n = len(fake_hub.fetched())
    path = hub.resolve(REPO)
    assert fake_hub.fetched()[n:] == ["model.safetensors", "tokenizer_config.json"]
    assert load_model(path).meta["source_lang"] == "fr"


def test_models_list_pull_rm(fake_hub, marian_dir, tmp_path):  # noqa: F811
    model_dir = our_model_dir(tmp_path / "shipped" / "fr-en")
    env = {"TUI_TRANSLATE_MODELS": str(model_dir.parent)}
    pulled = cli("models", "pull", REPO, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith(f"{REPO}  fr-en  ")
    fake_hub.add(REPO, {**repo_files(marian_dir), "tokenizer_config.json": b'{"source_lang": "fr", "target_lang": "de"}'}, sha=SHA2)
    updated = cli("models", "pull", REPO, env=env)  # a new commit: pull updates, only the changed file is fetched
    assert updated.returncode == 0, updated.stderr
    assert fake_hub.fetched().count("model.safetensors") == 1 and "fr-de" in updated.stdout
    gpt2 = tmp_path / "hf-cache" / "models--openai--gpt2"  # another library's download, not a Marian model: not listed
    (gpt2 / "snapshots" / SHA).mkdir(parents=True)
    (gpt2 / "snapshots" / SHA / "config.json").write_text('{"model_type": "gpt2"}')
    (gpt2 / "refs").mkdir()
    (gpt2 / "refs" / "main").write_text(SHA)
    listed = [json.loads(line) for line in cli("models", "--json", env=env).stdout.splitlines()]
    by_model = {e["model"]: e for e in listed}
    assert by_model[REPO]["direction"] == "fr-de" and by_model[REPO]["source"] == "hub" and by_model[REPO]["complete"]
    assert by_model[f"{REPO}@{SHA}"]["direction"] == "fr-en"  # the older commit, still cached
    assert by_model[str(model_dir)]["source"] == "shipped" and by_model[str(model_dir)]["direction"] == "fr-en"
    assert not any("gpt2" in m for m in by_model)
    assert by_model[REPO]["size"] == sum(p.stat().st_size for p in Path(by_model[REPO]["path"]).iterdir())
    table = cli("models", env=env).stdout
    assert REPO in table and "hub" in table and "fr-de" in table

    removed = cli("models", "rm", REPO, env=env)
    assert removed.returncode == 0 and f"removed {REPO}" in removed.stdout
    assert not hub.repo_folder(REPO).exists()
    assert all(e["source"] != "hub" for e in map(json.loads, cli("models", "--json", env=env).stdout.splitlines()))
    assert "is not in the Hugging Face cache" in one_line_error(cli("models", "rm", REPO, env=env))
    assert "not a Hugging Face Hub repo id" in one_line_error(cli("models", "rm", str(model_dir), env=env))
    assert "without @v1" in one_line_error(cli("models", "rm", f"{REPO}@v1", env=env))


def test_the_cli_progress_bar_draws_the_download(fake_hub, marian_dir):  # noqa: F811
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with hub.rich_progress(console) as (progress, announce):
        hub.resolve(REPO, progress, announce)
    out = buf.getvalue()
    size = sum(len(repo_files(marian_dir)[f]) for f in fake_hub.fetched())
    assert f"downloading {REPO} ({hub._human(size)})" in out
    assert fake_hub.fetched()[-1] in out and f"{hub._human(size)}/{hub._human(size)}".replace(" kB", "") + " kB" in out  # done/total


def test_hub_module_is_torch_free():
    code = "import sys, tui_translate.hub; assert 'torch' not in sys.modules and 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cached_model_loads_without_huggingface_hub(fake_hub):
    path = hub.resolve(REPO)
    code = ("import sys; sys.modules['huggingface_hub'] = None  # as if not installed\n"
            f"from tui_translate import hub; print(hub.resolve({REPO!r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == str(path), run.stderr
    shutil.rmtree(hub.repo_folder(REPO))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "pip install 'tui-translate[hub]'" in run.stderr


async def test_the_app_opens_a_hub_id_in_its_loading_worker(fake_hub, monkeypatch):
    from tui_translate import cli
    from tui_translate.ui.app import TranslateApp

    made: list[TranslateApp] = []
    monkeypatch.setattr(TranslateApp, "run", lambda self, *a, **k: made.append(self))
    assert cli.main(["--model", REPO, "--clean", "--threads", "1"]) == 0
    [app] = made
    assert str(app.model_path) == REPO  # an id, not a path under the current directory
    notes: list[str] = []
    app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
    async with app.run_test() as pilot:
        for _ in range(1200):
            if app.translator is not None or any("Could not load" in n for n in notes):
                break
            await pilot.pause(0.05)
        assert app.translator is not None, notes
        assert (app.translator.name, app.translator.source_lang, app.translator.target_lang) == (REPO, "fr", "en")
    assert any(n.startswith(f"Downloading {REPO}") for n in notes), notes
