"""The one-shot CLI through the real entry point (`python -m tui_translate`, the console script's target)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tui_translate.cli import build_parser
from tui_translate.config import DecodeConfig


def cli(*args, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="120", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "tui_translate", *args], input=stdin, capture_output=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_translate_argument(model_dir, translator):
    out = cli("translate", "--model", str(model_dir), "je suis étudiant").stdout.decode()
    assert out == translator.translate("je suis étudiant").text + "\n"


def test_several_sentences_in_arguments_are_translated_one_by_one(model_dir, translator):
    # typed without capitals, as people do: still two sentences, each translated on its own
    out = cli("translate", "--model", str(model_dir), "je suis étudiant.", "le chat dort.").stdout.decode()
    assert out == translator.translate("je suis étudiant.").text + " " + translator.translate("le chat dort.").text + "\n"


def test_stdin_one_line_per_input_line(model_dir, translator):
    lines = ["le chat dort", "", "je suis étudiant", "   ", "il est petit"]
    data = ("\n".join(lines) + "\n").encode()
    out = cli("translate", "--model", str(model_dir), "--batch-size", "2", stdin=data).stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    for line, got in zip(lines, out):
        assert got == (translator.translate(line).text if line.strip() else "")


def test_invalid_utf8_is_reported_and_the_rest_translates(model_dir, translator):
    data = "le chat dort\n".encode() + b"\xff\xfe oops\n" + "il est petit\n".encode()
    proc = cli("translate", "--model", str(model_dir), stdin=data)
    out = proc.stdout.decode().split("\n")
    assert out[:3] == [translator.translate("le chat dort").text, "", translator.translate("il est petit").text]
    assert "line 2" in proc.stderr.decode() and "UTF-8" in proc.stderr.decode()


def test_json_output_with_attention_and_nbest(model_dir, translator):
    proc = cli("translate", "--model", str(model_dir), "--json", "--attention", "--strategy", "beam", "--beam-size", "4",
               "--nbest", "3", "le chat dort")
    obj = json.loads(proc.stdout)
    expected = translator.translate("le chat dort", DecodeConfig(strategy="beam", beam_size=4, top_beams=3))
    assert obj["translation"] == expected.text
    assert len(obj["hypotheses"]) == 3
    best = obj["hypotheses"][0]
    assert len(best["tokens"]) == len(best["token_probs"]) == len(best["alternatives"])
    cross = best["attention"]["cross"]
    assert len(cross) == translator.config.n_decoder_layers and len(cross[0]) == translator.config.n_heads
    assert len(cross[0][0]) == len(best["tokens"]) and len(cross[0][0][0]) == len(obj["source_tokens"])
    assert obj["source_offsets"][0][0] == 0 and len(obj["source_offsets"]) == len(obj["source_tokens"])
    assert obj["source_offsets"] == [list(o) for o in expected.source_offsets]


def test_attention_heatmap(model_dir, translator):
    out = cli("translate", "--model", str(model_dir), "--attention", "--layer", "1", "--head", "0", "le chat dort").stdout.decode()
    assert "cross-attention (layer 1, head 0)" in out
    labels = translator.translate("le chat dort").source_labels()  # the tokenizer's pieces label the columns
    assert "</s>" in out and all(label in out for label in labels)


def test_sampling_seed_flag_is_reproducible(model_dir):
    a = cli("translate", "--model", str(model_dir), "--strategy", "sample", "--temperature", "1.5", "--seed", "4", "le chat dort").stdout
    b = cli("translate", "--model", str(model_dir), "--strategy", "sample", "--temperature", "1.5", "--seed", "4", "le chat dort").stdout
    assert a == b


def test_bad_flag_value_is_one_line(model_dir):
    proc = cli("translate", "--model", str(model_dir), "--layer", "9", "x", check=False)
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1


@pytest.mark.parametrize("command", [[], ["translate"], ["train"], ["eval"], ["bench"], ["app"]])
def test_help_is_complete(command):
    proc = cli(*command, "--help")
    text = proc.stdout.decode()
    assert "usage: tui-translate" in text
    parser = build_parser()
    if command:  # every option of the subcommand is documented in its help
        sub = parser._subparsers._group_actions[0].choices[command[0]]
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in text
    else:
        for name in ("translate", "train", "eval", "bench", "app"):
            assert name in text


def test_bench_input_is_a_tsv_or_a_text_file(tmp_path, model_dir):
    from tui_translate.data import read_sources

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\nje suis étudiant\ti am a student\nbonjour\thello\nmerci\tthanks\n", encoding="utf-8")
    assert read_sources(tsv, "fr-en") == ["je suis étudiant", "bonjour", "merci"]
    assert read_sources(tsv, "en-fr", limit=2) == ["i am a student", "hello"]
    text = tmp_path / "sentences.txt"
    text.write_text("je suis étudiant\n\n  il pleut.  \nmerci\n", encoding="utf-8")
    assert read_sources(text, "fr-en") == ["je suis étudiant", "il pleut.", "merci"]
    assert read_sources(text, "fr-en", limit=1) == ["je suis étudiant"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    proc = cli("bench", "--model", str(model_dir), "--input", str(empty), "--no-peers", check=False)
    assert proc.returncode == 2 and "no sentences" in proc.stderr.decode()


def test_app_decodes_on_all_cores_but_one(monkeypatch):
    import torch

    from tui_translate.translator import interactive_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        for cores, want in ((1, 1), (2, 1), (4, 3), (16, 4)):  # never more than torch's own setting
            monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
            assert interactive_threads() == want
    finally:
        torch.set_num_threads(before)


def test_loading_a_translator_takes_startup_objects_out_of_the_collectors_view(model_dir):
    """Full garbage collections during decoding must not traverse torch's and the model's objects."""
    import gc

    from tui_translate.translator import load_translator

    gc.unfreeze()
    try:
        load_translator(model_dir)
        assert gc.get_freeze_count() > 10_000  # torch alone is tens of thousands of objects
    finally:
        gc.unfreeze()


def test_a_bug_keeps_its_traceback_while_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """Every ValueError used to be printed as a user error (one line, exit 2), so a bug raising one lost its
    traceback. Only TranslateError (and the OS errors of paths the user gave) are the user's problem now."""
    import tui_translate.oneshot as oneshot
    from tui_translate.cli import main

    def bug(args):
        raise ValueError("an internal invariant broke")

    with monkeypatch.context() as m:
        m.setattr(oneshot, "run_translate", bug)
        with pytest.raises(ValueError, match="invariant"):
            main(["translate", "bonjour"])
    capsys.readouterr()

    not_utf8 = tmp_path / "latin1.tsv"
    not_utf8.write_bytes("Ça va ?\tHow are you?\n".encode("latin-1"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.json").write_text("{not json", encoding="utf-8")
    for argv in (["eval", str(not_utf8)], ["train", "--export", "--out", str(run_dir)],
                 ["translate", "--model", str(tmp_path / "missing"), "x"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tui-translate: error: "), (argv, err)


@pytest.mark.parametrize("error", ["ConfigError", "ModelLoadError", "DataError", "CorpusError", "RunError", "HubError",
                                   "InputTooLong", "DecodingError", "OutputExistsError", "NonFiniteResult"])
def test_every_user_error_derives_from_translate_error(error):
    import importlib

    from tui_translate.errors import TranslateError, is_user_error

    homes = {"ConfigError": "config", "ModelLoadError": "checkpoint", "DataError": "data", "CorpusError": "corpus",
             "RunError": "train", "HubError": "hub", "InputTooLong": "results", "DecodingError": "search",
             "OutputExistsError": "atomic", "NonFiniteResult": "oneshot"}
    cls = getattr(importlib.import_module(f"tui_translate.{homes[error]}"), error)
    assert issubclass(cls, TranslateError) and is_user_error(cls("x"))
    assert not is_user_error(ValueError("x")) and not is_user_error(KeyError("x"))
