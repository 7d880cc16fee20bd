"""Model directories: config.json + model.safetensors + tokenizer.json + README.md.

Weights are safetensors only (never pickle). Loading validates everything and
raises `ModelLoadError` with a one-line message naming the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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
    save_file(tensors, str(path), metadata=metadata)


def save_model_dir(
    path: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    card: str | None = None,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete model directory atomically (built aside, then renamed into place)."""

    def build(tmp: Path) -> None:
        config = {"model": model.config.to_dict(), "meta": meta or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_weights(model, tmp / WEIGHTS_FILE, dtype)
        (tmp / TOKENIZER_FILE).write_text(tokenizer.to_str(), encoding="utf-8")
        if tokenizer.target is not tokenizer.source:
            (tmp / TARGET_TOKENIZER_FILE).write_text(tokenizer.target.to_str(pretty=True), encoding="utf-8")
        (tmp / CARD_FILE).write_text(card or f"# {Path(path).name}\n", encoding="utf-8")

    return replace_dir(build, path)


def read_config(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
    file = path / CONFIG_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{file}: missing (a model directory needs {CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelLoadError(f"{file}: expected an object with a 'model' section")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (ConfigError, TypeError) as e:
        raise ModelLoadError(f"{file}: {e}") from None
    return config, dict(data.get("meta") or {})


def load_weights(model: Transformer, file: Path) -> None:
    """Load safetensors weights into `model`, checking names, shapes and dtypes first."""
    expected = unique_state_dict(model)
    if not file.exists():
        raise ModelLoadError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing or unexpected:
                what = []
                if missing:
                    what.append(f"missing tensors {missing[:3]}{'…' if len(missing) > 3 else ''}")
                if unexpected:
                    what.append(f"unexpected tensors {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
                raise ModelLoadError(f"{file}: does not match config.json: {'; '.join(what)}")
            state = {}
            for k in sorted(keys):
                sl = f.get_slice(k)
                dtype = sl.get_dtype()
                shape = tuple(sl.get_shape())
                want = tuple(expected[k].shape)
                if expected[k].is_floating_point() and dtype not in ALLOWED_DTYPES:
                    raise ModelLoadError(f"{file}: tensor {k} has dtype {dtype}, expected one of {sorted(ALLOWED_DTYPES)}")
                if shape != want:
                    raise ModelLoadError(f"{file}: tensor {k} has shape {list(shape)}, config.json implies {list(want)}")
                state[k] = f.get_tensor(k)
    except ModelLoadError:
        raise
    except Exception as e:  # safetensors raises its own errors on truncated / garbled files
        raise ModelLoadError(f"{file}: cannot read safetensors ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    for k, v in state.items():
        if not torch.isfinite(v.float()).all():
            raise ModelLoadError(f"{file}: tensor {k} contains NaN or infinite values")
    with torch.no_grad():
        params = model.state_dict()
        for k, v in state.items():
            params[k].copy_(v.to(params[k].dtype))


def load_tokenizer(path: Path, config: ModelConfig) -> Tokenizer:
    file = path / TOKENIZER_FILE
    if not file.exists():
        raise ModelLoadError(f"{file}: missing")
    target_file = path / TARGET_TOKENIZER_FILE
    try:
        from tokenizers import Tokenizer as HFTokenizer

        source = HFTokenizer.from_file(str(file))
        target = HFTokenizer.from_file(str(target_file)) if target_file.exists() else None
        tok = Tokenizer(source, target)
    except Exception as e:
        raise ModelLoadError(f"{file}: not a valid tokenizers file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
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
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a model directory (does not exist or is not a directory)")
    config, meta = read_config(path)
    tokenizer = load_tokenizer(path, config)
    model = Transformer(config)
    load_weights(model, path / WEIGHTS_FILE)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, config, path, meta)
