"""Robustness: hostile input, long input, property-based checks, atomic writes, the app under abuse."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import fake_loader
from tui_translate.config import DecodeConfig
from tui_translate.results import InputTooLong
from tui_translate.sentences import split_sentences
from tui_translate.ui.app import TranslateApp
from tui_translate.ui.store import Store

HOSTILE = ["", "   \t ", "😀🎉 bonjour 👋", "東京は大きい", "مرحبا بالعالم", "e\u0301te\u0301 cafe\u0301", "a\x00b\x07c\x1bd",
           "\u202eevil\u202c", "\ufeffbonjour", "x" * 300, "!!!???...", "\n\n\n"]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_input_gives_well_formed_results(translator, text):
    t = translator.translate(text, DecodeConfig(strategy="beam", beam_size=3))
    assert t.text == t.best.text == translator.tokenizer.decode(t.best.token_ids)
    if not translator.tokenizer.normalize(text).strip():
        assert t.text == "" and "empty" in t.note
        return
    labels = t.source_labels()
    assert all(isinstance(x, str) and x for x in labels)
    assert all(0 <= a <= b <= len(text) for a, b in t.source_offsets)
    h = t.best
    assert len(h.pieces) == len(h.token_probs) == len(h.alternatives)
    rows = h.attention.cross.sum(-1)
    np.testing.assert_allclose(rows, np.ones_like(rows), atol=1e-5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_tokenizer_round_trip_property(tokenizer, text):
    norm = tokenizer.normalize(text)
    enc = tokenizer.encode(text)
    assert enc.ids[-1] == tokenizer.eos_id
    assert len(enc.ids) == len(enc.pieces) == len(enc.offsets)
    assert all(0 <= a <= b <= len(text) for a, b in enc.offsets)
    decoded = tokenizer.decode(enc.ids)
    if tokenizer.unk_id not in enc.ids:  # without unknown characters the text comes back (normalised)
        assert decoded.replace(" ", "") == norm.replace(" ", "")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60), st.sampled_from(["greedy", "beam", "sample"]))
def test_translate_property(translator, text, strategy):
    cfg = DecodeConfig(strategy=strategy, beam_size=2, max_length_ratio=1.5, max_length_offset=5)
    t = translator.translate(text, cfg)
    for h in t.hypotheses:
        if not h.pieces:
            continue
        assert len(h.pieces) <= cfg.max_length(len(t.source_ids), translator.config.max_positions)
        assert all(0 <= p <= 1 for p in h.token_probs)
        for m in (h.attention.cross, h.attention.decoder_self, h.attention.encoder_self):
            np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)


def test_sentence_splitter():
    assert split_sentences("Bonjour. Je suis M. Dupont. Il est 3.14 heures !") == ["Bonjour.", "Je suis M. Dupont.", "Il est 3.14 heures !"]
    assert split_sentences("Quoi ? Non… « Oui. » Bon.") == ["Quoi ?", "Non…", "« Oui. »", "Bon."]
    assert split_sentences('Mr. Smith left. He said "Hi." Then J. K. Rowling wrote e.g. this. OK?') == [
        "Mr. Smith left.", 'He said "Hi."', "Then J. K. Rowling wrote e.g. this.", "OK?"]
    assert split_sentences("no punctuation at all") == ["no punctuation at all"]
    assert split_sentences("Il a 3 ans. 4 ans plus tard, rien.") == ["Il a 3 ans.", "4 ans plus tard, rien."]
    # typed without capitals: a full stop before lower case ends the sentence, known abbreviations still do not
    assert split_sentences("je suis étudiant. il pleut aujourd'hui. voir m. dupont.") == [
        "je suis étudiant.", "il pleut aujourd'hui.", "voir m. dupont."]
    # in capitalised text it does not (an abbreviation the list does not know)
    assert split_sentences("It is 5 km. and more. Fine.") == ["It is 5 km. and more.", "Fine."]


def test_long_input_is_split_and_translated_in_order(translator):
    sentences = ["le chat dort sur la grande maison.", "Il est petit mais il mange beaucoup.",
                 "Nous sommes ici depuis longtemps !", "Qu'est-ce que c'est ?"] * 3
    text = " ".join(sentences)
    segs = translator.segments(text)
    assert segs == sentences
    [t] = translator.translate_batch([text])
    assert [s.source for s in t.segments] == sentences
    assert t.text == " ".join(translator.translate(s).text for s in sentences)
    assert translator.segments("Bonjour. Ça va ?") == ["Bonjour.", "Ça va ?"]  # short, but two sentences
    assert translator.segments("le chat dort") == ["le chat dort"]
    huge = "mot " * (translator.config.max_positions * 2)  # one "sentence" longer than the positions: chunked
    chunks = translator.segments(huge)
    assert len(chunks) > 1 and " ".join(chunks) == huge.strip()
    assert all(len(translator.tokenizer.encode_ids([c])[0]) < translator.config.max_positions for c in chunks)


def test_input_over_the_cap_is_refused(translator):
    with pytest.raises(InputTooLong):
        translator.translate("a" * 20_001)
    with pytest.raises(InputTooLong):
        translator.segments("a " * 10_001)


def test_atomic_write_survives_a_kill(tmp_path):
    target = tmp_path / "history.jsonl"
    target.write_text("old\n")
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tui_translate.atomic import write_with
        def writer(tmp):
            with open(tmp, "w") as f:
                f.write("new-partial")
                f.flush()
                print("writing", flush=True)
                import time; time.sleep(30)
        write_with({str(target)!r}, writer)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_text() == "old\n"  # the old file, never a torn one
    from tui_translate.atomic import write_text

    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir() if p.name != "history.jsonl" and not p.name.endswith(".tmp")] == []


def test_damaged_history_file_is_tolerated(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "history.jsonl").write_bytes(b'"ok"\n{torn\n\xff\xfe\n')
    (tmp_path / "transcript.jsonl").write_text('{"source": "a", "translation": "b"}\nnot json\n')
    assert store.load_history() == []  # undecodable file: start empty rather than crash
    assert [r["source"] for r in store.load_transcript()] == ["a"]


async def test_burst_of_50_submissions_leaves_only_the_last(tmp_path):
    import threading

    gate = threading.Event()  # decoding is held until the whole burst has been submitted
    app = TranslateApp(fake_loader(gate=gate), Path("/m/fr-en"), [], store=Store(None), export_dir=tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        while app.translator is None:
            await pilot.pause(0.02)
        prompt = app.query_one("#prompt")
        for i in range(50):
            prompt.value = f"le chat dort {i}"
            await pilot.press("enter")
        gate.set()
        await app.workers.wait_for_complete()
        await pilot.pause(0.2)
        done = [e for e in app.exchanges if e.status == "done"]
        assert [e.source for e in done] == ["le chat dort 49"]
        assert done[0].text == "the cat sleeps 49"
        assert all(e.status == "cancelled" for e in app.exchanges[:-1])
        assert not [w for w in app.workers if w.is_running]


async def test_app_survives_random_keys_pastes_and_resizes(tmp_path):
    rng = random.Random(1234)
    app = TranslateApp(fake_loader(step_delay=0.001), Path("/m/fr-en"), [Path("/m/fr-en"), Path("/m/en-fr")],
                       store=Store(None), export_dir=tmp_path)
    keys = ["a", "b", "é", "space", "enter", "enter", "backspace", "left", "right", "up", "down", "tab", "shift+tab",
            "escape", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "home", "end", "ctrl+y", "ctrl+s", "ctrl+o", "f1"]
    async with app.run_test(size=(100, 30)) as pilot:
        for i in range(800):
            r = rng.random()
            if r < 0.02:
                await pilot.resize_terminal(rng.randint(20, 160), rng.randint(8, 50))
            elif r < 0.05:
                app.query_one("#prompt").insert_text_at_cursor(rng.choice(["le chat dort. Il est petit !", "😀\x00東京", "x" * 200]))
            else:
                await pilot.press(rng.choice(keys))
            if i % 100 == 0:
                await pilot.pause(0.01)
        while len(app.screen_stack) > 1:
            app.pop_screen()
        await app.workers.wait_for_complete()
        await pilot.pause(0.1)
        assert app.is_running
        # still responsive and consistent: a fresh request translates and is the one displayed
        app.query_one("#prompt").focus()
        await pilot.resize_terminal(100, 30)
        app.query_one("#prompt").value = "bonjour"
        await pilot.press("enter")
        for _ in range(250):
            if app.exchanges[-1].status == "done" and app.exchanges[-1].source == "bonjour":
                break
            await pilot.pause(0.02)
        assert app.exchanges[-1].source == "bonjour" and app.exchanges[-1].status == "done"
        assert all(e.status in ("done", "cancelled", "failed") for e in app.exchanges)


@pytest.mark.parametrize("flags", [["--temperature", "nan"], ["--max-length-ratio", "inf"], ["--max-length-ratio", "1e308"],
                                   ["--strategy", "beam", "--beam-size", "10000"], ["--strategy", "beam", "--length-penalty", "nan"]])
def test_bad_decoding_flags_give_one_line_and_a_non_zero_code(model_dir, capsys, flags):
    from tui_translate.cli import main

    assert main(["translate", "--model", str(model_dir), *flags, "je suis étudiant"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("tui-translate: error:")


def test_eval_scores_the_translations_translate_prints(model_dir, translator, tmp_path, capsys):
    """`eval` goes through the translator's bulk path: a line of two sentences is split as `translate`
    splits it (eval used to decode it whole, scoring a pipeline users never run)."""
    from tests.conftest import ENGLISH, FRENCH
    from tui_translate.cli import main
    from tui_translate.evaluate import translate_texts

    sources = FRENCH[:6] + ["je suis étudiant. le chat dort."]
    references = ENGLISH[:6] + ["i am a student. the cat sleeps."]
    tsv = tmp_path / "valid.tsv"
    tsv.write_text("".join(f"{s}\t{r}\n" for s, r in zip(sources, references)), encoding="utf-8")
    out = tmp_path / "hyps.txt"
    assert main(["eval", str(tsv), "--model", str(model_dir), "--output", str(out), "--json"]) == 0
    capsys.readouterr()
    evaluated = out.read_text(encoding="utf-8").splitlines()
    for source, hypothesis in zip(sources, evaluated):
        assert main(["translate", "--model", str(model_dir), source]) == 0
        assert capsys.readouterr().out.splitlines()[0] == hypothesis
    assert translator.translate_batch([sources[-1]])[0].note == "translated as 2 sentences"
    assert evaluated == translate_texts(translator, None, sources)
