"""Shared fixtures: a tiny seeded model and tokenizer built in the test session (no network, no shipped model)."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("TUI_TRANSLATE_DATA", os.path.join(os.path.dirname(__file__), ".tmp-data-should-not-exist"))
# The compiled decoder step is built and tested by test_native.py alone (into a temporary cache); elsewhere
# engines keep the Python step and nothing starts a background build.
os.environ["TUI_TRANSLATE_NATIVE"] = "0"

FRENCH = [
    "je suis étudiant", "tu es grand", "il est petit", "elle est là",
    "nous sommes ici", "vous êtes fatigués", "ils sont partis", "le chat dort", "le chien mange",
    "la maison est grande", "j'aime le café", "Qu'est-ce que c'est ?", "Il fait beau aujourd'hui !",
]
ENGLISH = [
    "i am a student", "you are tall", "he is small", "she is there", "we are here",
    "you are tired", "they left", "the cat sleeps", "the dog eats", "the house is big",
    "i like coffee", "What is it?", "The weather is nice today!",
]


def tiny_corpus() -> list[str]:
    rng = random.Random(0)
    words = " ".join(FRENCH + ENGLISH).split()
    extra = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(200)]
    return FRENCH + ENGLISH + extra


@pytest.fixture(scope="session")
def tokenizer():
    from tui_translate.tokenizer import train_tokenizer

    return train_tokenizer(tiny_corpus(), vocab_size=120, min_frequency=1, base_alphabet=False)


def make_model(tokenizer, seed: int = 0, **overrides):
    import torch

    from tui_translate.config import ModelConfig
    from tui_translate.model import Transformer

    torch.manual_seed(seed)
    params = dict(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                  d_ff=64, dropout=0.0, max_positions=64, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                  eos_id=tokenizer.eos_id, unk_id=tokenizer.unk_id, decoder_start_id=tokenizer.bos_id)
    params.update(overrides)
    return Transformer(ModelConfig(**params)).eval()


def fit_briefly(model, tokenizer, steps: int = 60):
    """A few optimiser steps on the toy pairs, so the model emits EOS and makes non-degenerate choices."""
    import torch

    from tui_translate.data import EncodedPairs, collate

    pairs = list(zip(FRENCH, ENGLISH))
    data = EncodedPairs.build(pairs, tokenizer)
    src, tin, tout = collate(data, list(range(len(data))), tokenizer.pad_id, tokenizer.bos_id)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        logits = model(src, tin)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tout.reshape(-1), ignore_index=tokenizer.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def model(tokenizer):
    return fit_briefly(make_model(tokenizer), tokenizer)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model, tokenizer):
    from tui_translate.checkpoint import save_model_dir

    path = tmp_path_factory.mktemp("models") / "fr-en"
    save_model_dir(path, model, tokenizer, card="# tiny test model\n", meta={"name": "tiny fr-en", "source_lang": "fr", "target_lang": "en"})
    return path


@pytest.fixture(scope="session")
def translator(model_dir):
    from tui_translate.translator import Translator

    return Translator.load(model_dir)


DIGIT_SOURCES = ["il a 25 ans", "en 1990 et 2011", "le 14 juillet", "le chat le chien le chat", "he is 25"]


@pytest.fixture(scope="session")
def digits_tokenizer():
    """A tokenizer that knows digits (the toy one does not), for the output rules' tests."""
    from tui_translate.tokenizer import train_tokenizer

    corpus = ["il a 25 ans", "he is 25", "en 1990 et 2011", "in 1990 and 2011", "le 14 juillet 2,50 €",
              "on 14 July 2.50", "the cat the dog", "le chat le chien"] * 5
    return train_tokenizer(corpus, vocab_size=80, min_frequency=1, base_alphabet=False)


@pytest.fixture(scope="session")
def random_model(digits_tokenizer):
    """An untrained model over `digits_tokenizer`: it emits digits and repeats freely, so rules have work to do."""
    return make_model(digits_tokenizer, seed=3, max_positions=48)
