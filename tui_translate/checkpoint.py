"""Model directories: config.json + model.safetensors + tokenizer.json + README.md.

Weights are safetensors only (never pickle). Loading validates everything and
raises `ModelLoadError` with a one-line message naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .atomic import replace_dir
from .config import ConfigError, ModelConfig
from .errors import TranslateError
from .model import Transformer
from .tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TARGET_TOKENIZER_FILE = "target_tokenizer.json"  # only when the target side segments differently (imported Marian)
CARD_FILE = "README.md"
ALLOWED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes: /dev/zero or a huge file is refused, not read
MAX_TOKENIZER_BYTES = 256 << 20  # a 250k-piece tokenizer.json is tens of MB
CHECKSUMS_KEY = "checksums"  # config.json: {"tokenizer.json": "sha256:..."} of the files saved alongside the weights


class ModelLoadError(TranslateError):
    """A model directory cannot be used; the message is one line naming file and problem."""


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.name


def tied_aliases(model: Transformer) -> dict[str, str]:
    """Parameter names that alias another (shared/tied embeddings) -> the name that is stored."""
    c = model.config
    aliases = {}
    if c.share_embeddings:
        aliases["tgt_embed.weight"] = "src_embed.weight"
    if c.tie_output:
        aliases["output_proj.weight"] = aliases.get("tgt_embed.weight", "tgt_embed.weight")
    return aliases


def unique_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    aliases = tied_aliases(model)
    return {k: v for k, v in model.state_dict().items() if k not in aliases}


def save_weights(model: Transformer, path: str | Path, dtype: torch.dtype = torch.float32, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu() for k, v in unique_state_dict(model).items()}
    write_safetensors(tensors, path, metadata)


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file creates its file 0600 whatever the umask; this one is created like any other."""
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, metadata=metadata))


def regular_file_stat(file: Path) -> os.stat_result:
    """stat() of a regular file, or a one-line `ModelLoadError` (missing, unreadable, a symlink loop, a
    device or a FIFO)."""
    try:
        st = file.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{file}: missing") from None
    except OSError as e:
        raise ModelLoadError(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{file}: not a regular file")
    return st


def read_file_bytes(file: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or a one-line `ModelLoadError`: a missing file,
    a symlink loop, a device (/dev/zero), a FIFO or an oversized file never reaches a parser."""
    st = regular_file_stat(file)
    if st.st_size > limit:
        raise ModelLoadError(f"{file}: {st.st_size:,} bytes, over the {limit:,}-byte limit for this file")
    try:
        with open(file, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ModelLoadError(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(data) > limit:
        raise ModelLoadError(f"{file}: over the {limit:,}-byte limit for this file")
    return data


def read_json_file(file: Path, limit: int = MAX_CONFIG_BYTES) -> Any:
    data = read_file_bytes(file, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{file}: not valid JSON ({e})") from None
    except RecursionError:
        raise ModelLoadError(f"{file}: not a usable JSON file (nested too deeply)") from None


def checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def save_model_dir(
    path: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    card: str | None = None,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete model directory atomically (built aside, then renamed into place)."""

    return replace_dir(lambda tmp: write_model_files(tmp, model, tokenizer, card or f"# {Path(path).name}\n", meta, dtype), path)


def write_model_files(directory: Path, model: Transformer, tokenizer: Tokenizer, card: str, meta: dict[str, Any] | None,
                      dtype: torch.dtype = torch.float32) -> None:
    """The files of a model directory. config.json records the tokenizer files' checksums, so a tokenizer
    swapped for another of the same size (ids shuffled: the weights then decode garbage) is refused at load."""
    files = {TOKENIZER_FILE: tokenizer.to_str().encode("utf-8")}
    if tokenizer.target is not tokenizer.source:
        files[TARGET_TOKENIZER_FILE] = tokenizer.target.to_str(pretty=True).encode("utf-8")
    config = {"model": model.config.to_dict(), "meta": meta or {}, CHECKSUMS_KEY: {k: checksum(v) for k, v in files.items()}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_weights(model, directory / WEIGHTS_FILE, dtype)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / CARD_FILE).write_text(card, encoding="utf-8")


MODEL_DIR_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, TARGET_TOKENIZER_FILE, CARD_FILE)


def read_config_file(path: Path) -> tuple[ModelConfig, dict[str, Any], dict[str, str]]:
    """(config, meta, checksums) of a model directory's config.json."""
    file = path / CONFIG_FILE
    if not file.exists() and not file.is_symlink():
        raise ModelLoadError(f"{file}: missing (a model directory needs {CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_FILE})")
    data = read_json_file(file)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelLoadError(f"{file}: expected an object with a 'model' section")
    if not isinstance(data.get("meta") or {}, dict) or not isinstance(data.get(CHECKSUMS_KEY) or {}, dict):
        raise ModelLoadError(f"{file}: 'meta' and '{CHECKSUMS_KEY}' must be objects")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (ConfigError, TypeError) as e:
        raise ModelLoadError(f"{file}: {e}") from None
    return config, dict(data.get("meta") or {}), dict(data.get(CHECKSUMS_KEY) or {})


_LAYER = re.compile(r"(encoder|decoder)_layers\.(\d+)\.")


def check_config_against_weights(config: ModelConfig, shapes: dict[str, tuple[str, tuple[int, ...]]], file: Path,
                                 config_file: Path, name_of=lambda k: k) -> None:
    """Refuse, in one line and before any model is allocated, a config whose sizes the weights do not have.

    `shapes`: tensor name (ours) -> (safetensors dtype, shape), read from the file's header. The checks
    run cheapest first: layer counts and the embedding's size straight from the names, so a config asking
    for a million layers never builds them; then every tensor against a model built on the meta device
    (no memory). Computed tables (positions) may not exceed the weights' own size."""
    for side in ("encoder", "decoder"):
        found = {int(m.group(2)) for k in shapes if (m := _LAYER.match(k)) and m.group(1) == side}
        n = max(found) + 1 if found else 0
        want = getattr(config, f"n_{side}_layers")
        if n != want:
            raise ModelLoadError(f"{file}: holds {n} {side} layers, {config_file.name} says n_{side}_layers={want}")
    embed = shapes.get("src_embed.weight")
    if embed is not None and tuple(embed[1]) != (config.vocab_size, config.d_model):
        raise ModelLoadError(f"{file}: tensor {name_of('src_embed.weight')} has shape {list(embed[1])}, {config_file.name} "
                             f"implies {[config.vocab_size, config.d_model]} (vocab_size, d_model)")
    total = sum(math.prod(shape) for _, shape in shapes.values())
    if config.max_positions * config.d_model > max(total, 1):
        raise ModelLoadError(f"{config_file}: max_positions={config.max_positions} asks for a position table larger than the "
                             "weights themselves")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in unique_state_dict(Transformer(config)).items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"missing tensors {[name_of(k) for k in missing[:3]]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            what.append(f"unexpected tensors {[name_of(k) for k in unexpected[:3]]}{'…' if len(unexpected) > 3 else ''}")
        raise ModelLoadError(f"{file}: does not match {config_file.name}: {'; '.join(what)}")
    for k in sorted(shapes):
        dtype, shape = shapes[k]
        if dtype not in ALLOWED_DTYPES:
            raise ModelLoadError(f"{file}: tensor {name_of(k)} has dtype {dtype}, expected one of {sorted(ALLOWED_DTYPES)}")
        if tuple(shape) != expected[k]:
            raise ModelLoadError(f"{file}: tensor {name_of(k)} has shape {list(shape)}, {config_file.name} implies {list(expected[k])}")


def safetensors_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors file's header, reading no tensor data."""
    regular_file_stat(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # safetensors raises its own errors on truncated / garbled files
        raise ModelLoadError(f"{file}: cannot read safetensors ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__


def check_finite(state: dict[str, torch.Tensor], file: Path, name_of=lambda k: k) -> None:
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelLoadError(f"{file}: tensor {name_of(k)} contains NaN or infinite values")


def load_weights(model: Transformer, file: Path) -> None:
    """Load safetensors weights into `model` (already checked against the header by the caller)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ModelLoadError(f"{file}: cannot read safetensors ({_first_line(e)})") from None
    check_finite(state, file)
    with torch.no_grad():
        params = model.state_dict()
        for k, v in state.items():
            params[k].copy_(v.to(params[k].dtype))


def load_tokenizer(path: Path, config: ModelConfig, checksums: dict[str, str] | None = None) -> Tokenizer:
    file = path / TOKENIZER_FILE
    target_file = path / TARGET_TOKENIZER_FILE
    texts = {}
    for f in (file, target_file):
        if f is file or f.exists() or f.is_symlink():
            texts[f] = read_file_bytes(f, MAX_TOKENIZER_BYTES)
    for f, data in texts.items():  # recorded at save since checksums exist; older directories have none
        want = (checksums or {}).get(f.name)
        if want is not None and want != checksum(data):
            raise ModelLoadError(f"{f}: is not the tokenizer this model was saved with (its checksum differs from the one in "
                                 f"{CONFIG_FILE}); its token ids would not match the weights")
    try:
        from tokenizers import Tokenizer as HFTokenizer

        source = HFTokenizer.from_str(texts[file].decode("utf-8"))
        target = HFTokenizer.from_str(texts[target_file].decode("utf-8")) if target_file in texts else None
        tok = Tokenizer(source, target)
    except Exception as e:
        raise ModelLoadError(f"{file}: not a valid tokenizers file ({_first_line(e)})") from None
    if tok.vocab_size != config.vocab_size:
        raise ModelLoadError(f"{file}: vocabulary has {tok.vocab_size} entries but config.json says vocab_size={config.vocab_size}")
    for name in ("pad_id", "bos_id", "eos_id", "unk_id"):
        if name == "bos_id" and tok.bos_id < 0:
            continue  # Marian vocabularies have no <s>; the decoder starts from pad
        if getattr(tok, name) != getattr(config, name):
            raise ModelLoadError(f"{file}: {name}={getattr(tok, name)} disagrees with config.json ({getattr(config, name)})")
    return tok


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """This project's model directory; `loading.load_model` also takes Hugging Face Marian ones."""
    path = Path(path).expanduser()
    try:
        is_dir = path.is_dir()
    except OSError:  # a name too long, a symlink loop
        is_dir = False
    if not is_dir:
        raise ModelLoadError(f"{path}: not a model directory (does not exist or is not a directory)")
    config, meta, checksums = read_config_file(path)
    tokenizer = load_tokenizer(path, config, checksums)
    check_config_against_weights(config, safetensors_header(path / WEIGHTS_FILE), path / WEIGHTS_FILE, path / CONFIG_FILE)
    model = Transformer(config)
    load_weights(model, path / WEIGHTS_FILE)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, config, path, meta)
