"""Training corpora: weighted mixtures, the cleaning filters and their report, digit-by-digit tokens."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tui_translate.corpus import CorpusError, CorpusSpec, clean_corpora, cleaned_corpora, epoch_indices, format_report
from tui_translate.data import EncodedPairs, token_batches
from tui_translate.tokenizer import train_tokenizer


def write(path: Path, rows: list[str]) -> str:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return str(path)


def fake_langid(texts, language):
    """English texts contain 'the', French ones 'le'; anything else is neither."""
    word = {"fr": "le", "en": "the"}[language]
    return [1.0 if word in t.lower().split() else 0.0 for t in texts]


def test_corpus_spec_parses_optional_weights():
    assert CorpusSpec.parse("a/train.tsv") == CorpusSpec("a/train.tsv", 1.0)
    assert CorpusSpec.parse("a/train.tsv:2.5") == CorpusSpec("a/train.tsv", 2.5)
    assert CorpusSpec.parse("c:/x/y.tsv:0.5") == CorpusSpec("c:/x/y.tsv", 0.5)
    assert CorpusSpec.parse("dir:name/y.tsv") == CorpusSpec("dir:name/y.tsv", 1.0)  # not a number: part of the path
    for bad in ("x.tsv:0", "x.tsv:-1", "x.tsv:nan", "x.tsv:inf"):
        with pytest.raises(CorpusError):
            CorpusSpec.parse(bad)


def test_each_filter_removes_what_it_names_and_reports_it(tmp_path):
    a = write(tmp_path / "a.tsv", [
        "le chat dort sur le lit\tthe cat sleeps on the bed",  # kept
        "Bonjour !\tHello!",  # too short to judge the language: kept
        "le chat dort sur le lit\tthe cat sleeps on the bed",  # duplicate
        "LE CHAT  dort sur le lit\tThe cat sleeps on the bed",  # duplicate (case, spaces)
        "oui\tthe answer is a very long sentence that cannot be the translation of one short word at all",  # ratio
        "the dog eats the bone now\tthe dog eats the bone now",  # untranslated copy
        "el perro come el hueso ahora\tthe dog eats the bone now",  # source is not French
        "le chien mange le os maintenant\tel perro come el hueso ahora",  # target is not English
        "only one column",  # malformed
        "",  # blank lines are not counted
    ])
    b = write(tmp_path / "b.tsv", [
        "le chat dort sur le lit\tthe cat sleeps on the bed",  # duplicate of a's first pair
        "le ciel est bleu ce matin\tthe sky is blue this morning",
        "le chômage touche 6,9 p. 100 des jeunes\tunemployment hits 6.9 per cent of the young",  # Hansard style
        "le taux est de 1 p. 100 000 habitants\tthe rate is 1 in 100,000 people",  # per hundred thousand: left as it is
    ])
    kept, report = clean_corpora([CorpusSpec(a, 2), CorpusSpec(b)], langid=fake_langid)
    assert kept == [[("le chat dort sur le lit", "the cat sleeps on the bed"), ("Bonjour !", "Hello!")],
                    [("le ciel est bleu ce matin", "the sky is blue this morning"),
                     ("le chômage touche 6,9% des jeunes", "unemployment hits 6.9 per cent of the young"),
                     ("le taux est de 1 p. 100 000 habitants", "the rate is 1 in 100,000 people")]]
    assert report[a] == {"read": 9, "kept": 2, "removed": {"malformed": 1, "length_ratio": 1, "copy": 1, "language": 2, "duplicate": 2},
                         "rewritten": {"percent": 0}}
    assert report[b]["removed"]["duplicate"] == 1 and report[b]["kept"] == 3 and report[b]["rewritten"] == {"percent": 1}
    assert format_report({b: report[b]}) == [f"{b}: 4 pairs read, 3 kept (removed: duplicate 1; rewritten: percent 1)"]


def test_cleaning_is_cached_and_redone_when_a_file_changes(tmp_path, monkeypatch):
    a = write(tmp_path / "a.tsv", ["le chat dort sur le lit\tthe cat sleeps on the bed"])
    calls = []

    def counting(specs, langid=fake_langid):
        calls.append(1)
        return clean_corpora(specs, langid=fake_langid)

    monkeypatch.setattr("tui_translate.corpus.clean_corpora", counting)
    first = cleaned_corpora([CorpusSpec(a)], tmp_path / "cache")
    again = cleaned_corpora([CorpusSpec(a)], tmp_path / "cache")
    assert first == again and len(calls) == 1
    write(tmp_path / "a.tsv", ["le chien dort sur le lit\tthe dog sleeps on the bed", "le chat\tthe cat"])
    changed, _ = cleaned_corpora([CorpusSpec(a)], tmp_path / "cache")
    assert len(calls) == 2 and changed == [[("le chien dort sur le lit", "the dog sleeps on the bed"), ("le chat", "the cat")]]
    assert json.loads(next((tmp_path / "cache").glob("*.json")).read_text())["sizes"] in ([1], [2])
    os.utime(a, ns=(1, 1))  # re-stamped, as a fresh copy of the shared corpora is: same content, same cache
    copy = tmp_path / "elsewhere" / "a.tsv"
    copy.parent.mkdir()
    shutil.copyfile(a, copy)
    assert cleaned_corpora([CorpusSpec(a)], tmp_path / "cache")[0] == changed
    assert cleaned_corpora([CorpusSpec(copy)], tmp_path / "cache")[0] == changed and len(calls) == 2


def test_epoch_mixture_follows_the_weights():
    sizes, weights = [10, 100, 40], [3, 0.25, 1]
    counts = [Counter(), Counter()]
    for epoch in range(2):
        idx = epoch_indices(sizes, weights, seed=1, epoch=epoch)
        assert len(idx) == 30 + 25 + 40
        per = Counter(0 if i < 10 else 1 if i < 110 else 2 for i in idx)
        assert per == {0: 30, 1: 25, 2: 40}
        assert all(Counter(idx)[i] == 3 for i in range(10))  # whole copies
        counts[epoch].update(i for i in idx if 10 <= i < 110)
    assert set(counts[0]) != set(counts[1])  # a different quarter each epoch
    np.testing.assert_array_equal(epoch_indices(sizes, weights, 1, 5), epoch_indices(sizes, weights, 1, 5))


def test_batches_cover_exactly_the_epoch_subset(tokenizer):
    parts = [EncodedPairs.build([("je suis étudiant", "i am a student")] * 3, tokenizer),
             EncodedPairs.build([("le chat dort", "the cat sleeps"), ("il est petit", "he is small")], tokenizer)]
    data = EncodedPairs.concat(parts)
    assert list(data.corpus_sizes) == [3, 2] and len(data) == 5
    np.testing.assert_array_equal(data.tgt(4), parts[1].tgt(1))
    subset = epoch_indices([3, 2], [2, 0.5], seed=0, epoch=0)
    batches = token_batches(data, 40, seed=0, epoch=0, subset=subset)
    assert sorted(np.concatenate(batches).tolist()) == sorted(subset.tolist())


def test_digits_are_single_pieces_and_numbers_urls_names_round_trip():
    corpus = ["Je suis né en 1972 à Lyon.", "I was born in 1972 in Lyon.", "Il coûte 2,50 € le 14 juillet.",
              "Voir https://example.org/a_b?x=1 pour Zoë.", "It costs $3.99 at 10:30."] * 3
    tok = train_tokenizer(corpus, vocab_size=150, min_frequency=1)
    for text in corpus[:5] + ["Noël est le 25 décembre 2031.", "Call 0800-123-456 or mail marie.curie@example.fr"]:
        enc = tok.encode(text)
        assert all(not any(ch.isdigit() for ch in p) or len(p.strip("▁")) == 1 for p in enc.pieces), enc.pieces
        assert tok.decode(enc.ids) == tok.normalize(text)


def test_number_and_repetition_checks():
    from tui_translate.quality import has_repetition, keeps_numbers, numbers_kept, repetition_rate

    assert keeps_numbers("Noël est le 25 décembre.", "Christmas is December 25.")
    assert not keeps_numbers("Je suis né en 1972.", "I was born in 197.")
    assert not keeps_numbers("J'ai 3 pommes pour 2,50 €.", "I have 3 apples for 2.5 €.")  # the "50" is lost
    assert keeps_numbers("J'ai 3 pommes pour 2,50 €.", "I have 3 apples for €2.50.")
    assert not keeps_numbers("3 et 3 font 6.", "3 and three make 6.")  # runs count as often as they occur
    assert numbers_kept(["Il a 3 ans.", "Bonjour.", "En 1972."], ["He is 3.", "Hello.", "In 197."]) == (0.5, 2)
    assert numbers_kept(["Bonjour."], ["Hello."]) == (1.0, 0)
    assert has_repetition("A man with a orange orange orange hat.")
    assert not has_repetition("Orange, orange: two oranges.")
    assert has_repetition("teacher Teacher TEACHER")
    assert repetition_rate(["a b c", "x x x", "y y", "z"]) == 0.25


NUMBERS = Path(__file__).resolve().parent / "data" / "numbers.fr-en.tsv"  # 40 number-bearing pairs written for issue 14
MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("name", ["fr-en", "en-fr"])
def test_the_default_models_keep_the_numbers_of_a_fixed_list(name, strategy):
    """Issue 14's numbers check on both shipped models: every digit run of the source appears in the
    output in at least 95% of 40 number-bearing sentences (dates, times, prices, phone numbers, counts;
    the French side is fr-en's source, the English side en-fr's)."""
    from tui_translate.config import DecodeConfig
    from tui_translate.quality import numbers_kept
    from tui_translate.translator import Translator

    if not (MODELS / name / "model.safetensors").exists():
        pytest.skip("no shipped model in this checkout")
    column = 0 if name == "fr-en" else 1
    sources = [line.split("\t")[column] for line in NUMBERS.read_text(encoding="utf-8").splitlines()]
    outputs = [t.text for t in Translator.load(MODELS / name).translate_batch(sources, DecodeConfig(strategy=strategy))]
    kept, counted = numbers_kept(sources, outputs)
    assert counted == 40
    assert kept >= 0.95, [(s, o) for s, o in zip(sources, outputs) if not numbers_kept([s], [o])[0]]


# news sentences on which the default model alone (int8, greedy) wrote a wrong number on 2026-12-03:
# "Since 201, …", "Everybody's 1000 fans.", "since the 1950s" (the run "50" is not in it)
SLIPS = ["Depuis 2011, une douzaine d'États ont adopté des lois exigeant des électeurs de prouver qu'ils sont citoyens américains.",
         "Chaque vedette a 100 fans.",
         "Mais son pays est, depuis les années 50 et déjà bien avant, dépendant de l'aide étrangère."]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_the_output_rules_keep_the_numbers_the_default_model_alone_gets_wrong(strategy):
    """With the default output rules, the default model (int8, as the app and `translate` decode) keeps the
    numbers of sentences it mistranslated alone; the rules never change a number-free sentence's digits."""
    from tui_translate.config import DecodeConfig
    from tui_translate.quality import digit_runs, keeps_numbers
    from tui_translate.translator import Translator

    if not (MODELS / "fr-en" / "model.safetensors").exists():
        pytest.skip("no shipped model in this checkout")
    translator = Translator.load(MODELS / "fr-en", int8=True)
    outputs = [t.text for t in translator.translate_batch(SLIPS + ["Il a vingt ans."], DecodeConfig(strategy=strategy))]
    for source, output in zip(SLIPS, outputs):
        assert keeps_numbers(source, output), (source, output)
    assert digit_runs(outputs[-1]) == []
