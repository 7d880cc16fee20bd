"""Output rules (constraints.py): numbers copied from the source, no word three times in a row; and the search
applying them as an oracle does (mask the ruled-out tokens, then choose)."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_model
from tui_translate.config import DecodeConfig
from tui_translate.constraints import PieceTable, SourceRules
from tui_translate.quality import digit_runs, has_repetition
from tui_translate.search import SearchDone, pad_batch, search

# A vocabulary with single digits (as the project's tokenizers split them) and merged digit pieces (as
# SentencePiece vocabularies of imported models have), a word in two pieces and punctuation.
PIECES = ["<pad>", "<s>", "</s>", "<unk>", "▁", *"0123456789", "▁19", "90", "▁7", "5s", "▁the", "▁or", "ange", ",",
          ".", "▁in", "s", "-1"]
SPECIAL = {0, 1, 2, 3}
ID = {p: i for i, p in enumerate(PIECES)}
TABLE = PieceTable(PIECES, SPECIAL)


def ids(*pieces: str) -> list[int]:
    return [ID[p] for p in pieces]


def allowed(rules: SourceRules, tokens: list[int]) -> set[str]:
    only, banned = rules.ruled_out(tokens)
    pool = only if only is not None else [i for i in range(len(PIECES)) if i not in SPECIAL and i not in banned]
    return {PIECES[i] for i in pool}


def text(tokens: list[int]) -> str:
    return "".join(PIECES[i] for i in tokens).replace("▁", " ")


def test_a_number_may_open_only_as_a_source_number_starts():
    rules = SourceRules(TABLE, "Il est né en 1990 ou en 25.")
    free = allowed(rules, ids("▁in"))
    assert {"1", "2", "▁19", "-1"} <= free  # "1990", "25", the merged piece "▁19" and "-" then "1" open a source number
    assert not {"0", "3", "9", "90", "▁7", "5s"} & free  # nothing opens another
    assert {"▁the", ".", ","} <= free  # and words are free while no number is open


def test_an_open_number_must_go_on_until_it_is_a_source_number():
    rules = SourceRules(TABLE, "en 1990 ou en 25")
    assert allowed(rules, ids("▁in", "▁", "1")) == {"9"}  # "1" is no source number: only "19…" may follow
    assert allowed(rules, ids("▁in", "▁19")) == {"9", "90"}
    done = allowed(rules, ids("▁in", "▁19", "90"))  # "1990": complete, anything but more digits follows
    assert {".", "▁the", "s", "5s"} & done == {".", "▁the", "s"}  # "5s" would make it "19905"
    assert {"▁", "▁19"} <= done  # a new word, or another number after a space ("1990 1990")
    assert allowed(rules, ids("▁", "2")) == {"5", "5s"}  # "25" then "s": "25s" keeps the run "25"


def test_a_source_without_digits_lets_no_digit_through():
    rules = SourceRules(TABLE, "Il a vingt ans.")
    free = allowed(rules, ids("▁in"))
    assert not free & {*"0123456789", "▁19", "90", "▁7", "5s", "-1"}
    assert "▁the" in free


def test_the_rules_can_be_turned_off_one_by_one():
    no_numbers = SourceRules(TABLE, "Il a vingt ans.", keep_numbers=False)
    assert {"3", "▁7"} <= allowed(no_numbers, ids("▁in"))
    repeats_ok = SourceRules(TABLE, "Il a vingt ans.", block_repeats=False)
    assert "▁the" in allowed(repeats_ok, ids("▁the", "▁the"))
    assert not SourceRules(TABLE, "x", keep_numbers=False, block_repeats=False).active


def test_a_word_may_not_come_three_times_in_a_row():
    rules = SourceRules(TABLE, "Un chapeau orange.")
    assert "▁the" in allowed(rules, ids("▁the"))
    assert "▁the" not in allowed(rules, ids("▁the", "▁the"))
    assert "ange" not in allowed(rules, ids("▁or", "ange", "▁or", "ange", "▁or"))  # a word of two pieces
    assert "ange" in allowed(rules, ids("▁or", "ange", "▁or"))
    # punctuation and digits are no words: ",,," and "000" stay possible
    assert "," in allowed(rules, ids(",", ","))
    zeros = SourceRules(TABLE, "1000 euros")
    assert allowed(zeros, ids("▁", "1", "0", "0")) == {"0"}


PIECE_IDS = [i for i in range(len(PIECES)) if i not in SPECIAL]


@settings(max_examples=200, deadline=None)
@given(source=st.sampled_from(["en 1990 ou 25.", "Il a 7 ans, -1 degré", "pas de chiffres", "2,50 € le 14"]),
       picks=st.lists(st.integers(0, 10**6), max_size=25))
def test_any_output_the_rules_allow_keeps_to_them(source, picks):
    """Build outputs by picking, at every position, any token the rules leave: some token is always left,
    every number that is closed is a source number, an open one is the start of one, and no word comes three
    times in a row."""
    rules = SourceRules(TABLE, source)
    runs = set(digit_runs(source))
    out: list[int] = []
    for pick in picks:
        only, banned = rules.ruled_out(out)
        pool = only if only is not None else [i for i in PIECE_IDS if i not in banned]
        assert pool
        out.append(pool[pick % len(pool)])
    written = text(out)
    closed = digit_runs(written[: re.search(r"\d*$", written).start()])
    assert set(closed) <= runs
    tail = re.search(r"\d*$", written).group(0)
    assert not tail or any(r.startswith(tail) for r in runs)
    for k in range(1, 5):
        for i in range(len(out) - 3 * k + 1):
            block = out[i : i + k]
            if out[i + k : i + 2 * k] == block == out[i + 2 * k : i + 3 * k]:
                assert not (PIECES[block[0]].startswith("▁") and any(PIECES[t][-1].isalpha() for t in block)), text(out)


# -- the search with rules, against an oracle ------------------------------------------------------------

def oracle_greedy(model, src: torch.Tensor, rules: SourceRules, max_new: int) -> list[int]:
    """Greedy decoding the slow way: the whole target re-run every step (no cache), the ruled-out tokens and
    the ids never generated set to -inf, then the best token."""
    c = model.config
    out: list[int] = []
    with torch.no_grad():
        encoded = model.encode(src)
        for _ in range(max_new):
            tgt = torch.tensor([[c.decoder_start_id] + out])
            logp = torch.log_softmax(model.decode(tgt, encoded).logits[0, -1].float(), -1)
            logp[sorted({c.pad_id, c.decoder_start_id, c.bos_id} - {c.eos_id})] = float("-inf")  # never generated
            only, banned = rules.ruled_out(out)
            if only is not None:
                mask = torch.full_like(logp, float("-inf"))
                mask[only] = 0.0
                logp = logp + mask
            elif banned:
                logp[banned] = float("-inf")
            tok = int(logp.argmax())
            out.append(tok)
            if tok == c.eos_id:
                break
    return out


SOURCES = ["il a 25 ans", "en 1990 et 2011", "le 14 juillet", "le chat le chien le chat"]


@pytest.mark.parametrize("text", SOURCES)
def test_greedy_with_rules_equals_the_oracle(random_model, digits_tokenizer, text):
    table = PieceTable.from_tokenizer(digits_tokenizer)
    rules = SourceRules(table, text)
    src = pad_batch(digits_tokenizer.encode_ids([text]), digits_tokenizer.pad_id)
    cfg = DecodeConfig(strategy="greedy")
    final = list(search(random_model, src, cfg, rules=[rules]))[-1]
    assert isinstance(final, SearchDone)
    max_new = cfg.max_length(src.size(1), random_model.config.max_positions)
    assert final.hypotheses[0][0].tokens == oracle_greedy(random_model, src, rules, max_new)


@pytest.mark.parametrize("cfg", [DecodeConfig(strategy="greedy"), DecodeConfig(strategy="beam", beam_size=4, top_beams=4),
                                 DecodeConfig(strategy="sample", seed=1, temperature=2.0)])
def test_every_hypothesis_keeps_to_the_rules_in_a_batch(random_model, digits_tokenizer, cfg):
    """Batched greedy, beam (every returned beam) and sampling: numbers only from their own sentence's source,
    no word three times in a row; without rules the untrained model breaks both."""
    table = PieceTable.from_tokenizer(digits_tokenizer)
    src = pad_batch(digits_tokenizer.encode_ids(SOURCES), digits_tokenizer.pad_id)
    ruled = list(search(random_model, src, cfg, rules=[SourceRules(table, t) for t in SOURCES]))[-1]
    free = list(search(random_model, src, cfg))[-1]
    broken = 0
    for text, hyps, free_hyps in zip(SOURCES, ruled.hypotheses, free.hypotheses):
        runs = set(digit_runs(text))
        for h in hyps:
            out = digits_tokenizer.decode(h.tokens)
            assert set(digit_runs(out[: len(out) - len(re.search(r"\d*$", out).group(0))])) <= runs, out
            assert not has_repetition(out), out
            assert all(lp > float("-inf") for lp in h.token_logprobs)
        for h in free_hyps:
            out = digits_tokenizer.decode(h.tokens)
            broken += (not set(digit_runs(out)) <= runs) or has_repetition(out)
    assert broken  # the rules had something to do


@pytest.mark.parametrize("text", ["he is 25", "le chat le chien le chat"])
def test_the_translator_applies_the_rules_its_config_asks_for(random_model, digits_tokenizer, text):
    """`translate` and `translate_batch` decode with the rules of the config (both by default, none when both
    are off): the same tokens as the search given those rules."""
    from tui_translate.translator import Translator

    t = Translator.for_model(random_model, digits_tokenizer)
    src = pad_batch(digits_tokenizer.encode_ids([text]), digits_tokenizer.pad_id)
    table = PieceTable.from_tokenizer(digits_tokenizer)
    on, off = DecodeConfig(), DecodeConfig(keep_numbers=False, block_repeats=False)
    ruled = t.translate(text, on, attention=False).best.token_ids
    free = t.translate(text, off, attention=False).best.token_ids
    assert ruled == list(search(t.engine, src, on, rules=[SourceRules(table, text)]))[-1].hypotheses[0][0].tokens
    assert free == list(search(t.engine, src, off))[-1].hypotheses[0][0].tokens
    assert ruled != free
    assert t.translate_batch([text], on)[0].best.token_ids == ruled
    assert t.translate_batch([text], off)[0].best.token_ids == free
