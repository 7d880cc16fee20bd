"""Model directories: round trip, and every broken directory gives a one-line error naming the file."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tui_translate.checkpoint import ModelLoadError, load_model_dir, save_model_dir
from tui_translate.config import DecodeConfig
from tui_translate.translator import Translator

TEXTS = ["je suis étudiant", "le chat dort"]


def test_round_trip_gives_identical_outputs(model_dir, model, tokenizer):
    loaded = load_model_dir(model_dir)
    src = torch.tensor([tokenizer.encode_ids([TEXTS[0]])[0]])
    tgt = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.model(src, tgt), model(src, tgt))
    t = Translator(loaded)
    assert t.translate(TEXTS[0], DecodeConfig(strategy="beam")).text == Translator.load(model_dir).translate(TEXTS[0], DecodeConfig(strategy="beam")).text


def test_fp16_storage_loads(tmp_path, model, tokenizer):
    path = save_model_dir(tmp_path / "half", model, tokenizer, dtype=torch.float16)
    loaded = load_model_dir(path)
    assert loaded.model.src_embed.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.model.src_embed.weight, model.src_embed.weight, atol=2e-3, rtol=2e-3)


@pytest.fixture
def broken(tmp_path, model_dir):
    def make(name):
        dest = tmp_path / name
        shutil.copytree(model_dir, dest)
        return dest
    return make


def _error(path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model_dir(path)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file(broken, missing):
    d = broken("m")
    (d / missing).unlink()
    msg = _error(d)
    assert missing in msg and "missing" in msg


def test_not_a_directory(tmp_path):
    assert "not a model directory" in _error(tmp_path / "nope")


def test_truncated_weights(broken):
    d = broken("t")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "model.safetensors" in _error(d)


def test_pickle_weights_are_never_loaded(broken, tmp_path):
    d = broken("p")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (d / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    assert "model.safetensors" in _error(d)
    assert not marker.exists()


def test_shape_mismatch(broken):
    d = broken("s")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["d_ff"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    msg = _error(d)
    assert "shape" in msg and "fc1" in msg


def test_vocab_size_mismatch(broken):
    d = broken("v")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["vocab_size"] += 10
    (d / "config.json").write_text(json.dumps(cfg))
    assert "tokenizer.json" in _error(d) and "vocab" in _error(d)


def test_wrong_dtype(broken):
    d = broken("d")
    tensors = load_file(str(d / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, str(d / "model.safetensors"))
    msg = _error(d)
    assert "dtype" in msg and name in msg


def test_missing_tensor_and_bad_config(broken):
    d = broken("x")
    tensors = load_file(str(d / "model.safetensors"))
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, str(d / "model.safetensors"))
    assert "missing tensors" in _error(d)
    d2 = broken("y")
    (d2 / "config.json").write_text("{not json")
    assert "config.json" in _error(d2)
    d3 = broken("z")
    cfg = json.loads((d3 / "config.json").read_text())
    cfg["model"]["n_heads"] = 5
    (d3 / "config.json").write_text(json.dumps(cfg))
    assert "divisible" in _error(d3)


def test_cli_reports_bad_model_in_one_line(tmp_path):
    from tui_translate.cli import main
    import io
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["translate", "--model", str(tmp_path / "absent"), "bonjour"])
    assert code == 2
    assert err.getvalue().count("\n") == 1 and "not a model directory" in err.getvalue()
