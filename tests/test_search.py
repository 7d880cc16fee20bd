"""Search oracles: beam(1) == greedy, batch == single, beam attention == teacher forcing, seeds, prefixes."""

from __future__ import annotations

import math

import pytest
import torch

from tui_translate.config import ConfigError, DecodeConfig
from tui_translate.search import pad_batch
from tui_translate.search import SearchDone, SearchStep, _banned_ids, length_penalty, search

SOURCES = ["je suis étudiant", "le chat dort", "Qu'est-ce que c'est ?", "il est petit et la maison est grande"]


def run(model, src, config, **kw) -> SearchDone:
    events = list(search(model, src, config, **kw))
    assert isinstance(events[-1], SearchDone)
    assert all(isinstance(e, SearchStep) for e in events[:-1])
    return events[-1]


def encode(tokenizer, texts):
    return pad_batch(tokenizer.encode_ids(texts), tokenizer.pad_id)


@pytest.mark.parametrize("cfg", [
    DecodeConfig(strategy="beam", beam_size=1, length_penalty=0.0),
    DecodeConfig(strategy="beam", beam_size=1, length_penalty=0.6, early_stopping=True),
    DecodeConfig(strategy="beam", beam_size=1, length_penalty=0.0, n_alternatives=1),  # fewest candidates per row
])
def test_beam_size_one_equals_greedy(model, tokenizer, cfg):
    src = encode(tokenizer, SOURCES)
    greedy = run(model, src, DecodeConfig(strategy="greedy"))
    beam = run(model, src, cfg)
    for g, b in zip(greedy.hypotheses, beam.hypotheses):
        assert g[0].tokens == b[0].tokens
        assert g[0].logprob == pytest.approx(b[0].logprob, abs=1e-4)


@pytest.mark.parametrize("cfg", [DecodeConfig(strategy="greedy"), DecodeConfig(strategy="beam", beam_size=4, top_beams=3),
                                 DecodeConfig(strategy="beam", beam_size=3, early_stopping=True),
                                 DecodeConfig(strategy="sample", seed=7, top_k=20)])
def test_batch_equals_one_by_one(model, tokenizer, cfg):
    batch = run(model, encode(tokenizer, SOURCES), cfg, need_weights=True)
    steps = []
    for i, text in enumerate(SOURCES):
        single = run(model, encode(tokenizer, [text]), cfg, need_weights=True)
        steps.append(single.steps)
        assert [h.tokens for h in single.hypotheses[0]] == [h.tokens for h in batch.hypotheses[i]]
        for a, b in zip(single.hypotheses[0], batch.hypotheses[i]):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            torch.testing.assert_close(a.cross_attention, b.cross_attention, atol=1e-5, rtol=0)
        torch.testing.assert_close(single.encoder_attention[0], batch.encoder_attention[i], atol=1e-5, rtol=0)
    # finished sentences leave the batch, so the batch takes exactly as many steps as its longest sentence
    assert batch.steps == max(steps)
    assert len(set(steps)) > 1  # the sources really finish at different steps


@pytest.mark.parametrize("cfg", [DecodeConfig(strategy="beam", beam_size=5, top_beams=5), DecodeConfig(strategy="greedy"),
                                 DecodeConfig(strategy="sample", seed=3, temperature=1.3)])
def test_captured_attention_equals_teacher_forced_pass(model, tokenizer, cfg):
    src = encode(tokenizer, [SOURCES[3]])
    done = run(model, src, cfg, need_weights=True)
    for hyp in done.hypotheses[0]:
        tgt_in = torch.tensor([[model.config.decoder_start_id] + hyp.tokens[:-1]])
        with torch.no_grad():
            enc = model.encode(src, need_weights=True)
            forced = model.decode(tgt_in, enc, need_weights=True)
        torch.testing.assert_close(hyp.cross_attention, forced.cross_attention[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(hyp.self_attention, forced.self_attention[0], atol=1e-5, rtol=0)
        logp = torch.log_softmax(forced.logits[0], -1)
        expected = [float(logp[i, t]) for i, t in enumerate(hyp.tokens)]
        assert hyp.token_logprobs == pytest.approx(expected, abs=1e-4)
        assert hyp.logprob == pytest.approx(sum(expected), abs=1e-4)
        emittable = logp.clone()
        emittable[:, _banned_ids(model)] = float("-inf")
        top = torch.topk(emittable, hyp.alt_ids.size(1), -1)  # alternatives: ids the search could have emitted
        assert torch.equal(hyp.alt_ids, top.indices)


def test_beam_nbest_sorted_and_scored_with_gnmt_penalty(model, tokenizer):
    cfg = DecodeConfig(strategy="beam", beam_size=5, top_beams=5, length_penalty=1.0)
    hyps = run(model, encode(tokenizer, [SOURCES[0]]), cfg).hypotheses[0]
    assert len(hyps) == 5
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    for h in hyps:
        assert h.score == pytest.approx(h.logprob / length_penalty(len(h.tokens), 1.0), abs=1e-4)
    assert len({tuple(h.tokens) for h in hyps}) == 5


def test_beam_finds_at_least_greedy_score(model, tokenizer):
    """Without a length penalty the score is the log-probability: beam search keeps greedy's path among
    its candidates, so it never ends below greedy, and on this model it finds a better translation of at
    least one sentence (greedy commits to a first token that leads to a worse sentence)."""
    src = encode(tokenizer, SOURCES)
    greedy = run(model, src, DecodeConfig(strategy="greedy"))
    beam = run(model, src, DecodeConfig(strategy="beam", beam_size=6, length_penalty=0.0))
    gains = []
    for g, b in zip(greedy.hypotheses, beam.hypotheses):
        assert g[0].finished and b[0].finished
        assert b[0].score == pytest.approx(b[0].logprob, abs=1e-6)
        assert b[0].logprob >= g[0].logprob - 1e-5
        gains.append(b[0].logprob - g[0].logprob)
    assert max(gains) > 0.1


def test_sampling_is_reproducible_with_a_seed(model, tokenizer):
    src = encode(tokenizer, SOURCES)
    cfg = DecodeConfig(strategy="sample", seed=11, temperature=1.5)
    a = run(model, src, cfg)
    b = run(model, src, cfg)
    c = run(model, src, cfg.with_(seed=12))
    toks = lambda d: [h[0].tokens for h in d.hypotheses]  # noqa: E731
    assert toks(a) == toks(b)
    assert toks(a) != toks(c)


def test_top_k_one_sampling_is_greedy(model, tokenizer):
    src = encode(tokenizer, SOURCES)
    greedy = run(model, src, DecodeConfig(strategy="greedy"))
    sampled = run(model, src, DecodeConfig(strategy="sample", top_k=1, seed=5, temperature=2.0))
    assert [h[0].tokens for h in greedy.hypotheses] == [h[0].tokens for h in sampled.hypotheses]


def test_forced_prefix_is_kept_and_continuation_matches_greedy(model, tokenizer):
    src = encode(tokenizer, [SOURCES[0]])
    greedy = run(model, src, DecodeConfig(strategy="greedy")).hypotheses[0][0]
    prefix = greedy.tokens[:2]
    forced = run(model, src, DecodeConfig(strategy="greedy"), prefix=prefix).hypotheses[0][0]
    assert forced.tokens == greedy.tokens  # forcing what greedy chose anyway changes nothing
    other = [t for t in range(4, tokenizer.vocab_size) if t != greedy.tokens[0]][0]
    alt = run(model, src, DecodeConfig(strategy="beam", beam_size=3), prefix=[other], need_weights=True).hypotheses[0][0]
    assert alt.tokens[0] == other
    assert alt.cross_attention.shape[2] == len(alt.tokens)


def test_max_length_is_respected(model, tokenizer):
    cfg = DecodeConfig(strategy="beam", beam_size=3, max_length_ratio=0.5, max_length_offset=1)
    src = encode(tokenizer, [SOURCES[3]])
    limit = cfg.max_length(int(src.ne(0).sum()), model.config.max_positions)
    for h in run(model, src, cfg).hypotheses[0]:
        assert len(h.tokens) <= limit


def test_streaming_yields_growing_partials(model, tokenizer):
    events = list(search(model, encode(tokenizer, [SOURCES[1]]), DecodeConfig(strategy="beam", beam_size=3)))
    steps = [e for e in events if isinstance(e, SearchStep)]
    assert steps, "beam search must report progress before it finishes"
    assert [len(s.partial[0]) for s in steps] == list(range(1, len(steps) + 1))


def test_decode_config_validation():
    with pytest.raises(ConfigError):
        DecodeConfig(strategy="beam", beam_size=2, top_beams=3)
    with pytest.raises(ConfigError):
        DecodeConfig(strategy="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DecodeConfig(strategy="sample", top_p=0.0)


@pytest.mark.parametrize("bad", [
    {"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": 0.0},
    {"max_length_ratio": float("inf")}, {"max_length_ratio": 1e308}, {"max_length_ratio": float("nan")},
    {"beam_size": 10_000}, {"beam_size": 0}, {"length_penalty": float("nan")}, {"length_penalty": float("inf")},
    {"length_penalty": -1075.0}, {"length_penalty": 512.0}, {"length_penalty": 10.5},
    {"top_p": float("nan")}, {"max_length_offset": 10**12},
])
def test_decode_config_refuses_non_finite_and_huge_values(bad):
    """NaN slipped through `<= 0` checks (empty output, rc 0); inf / 1e308 overflowed int(); a beam of 10,000
    allocated until MemoryError. Each is now a ConfigError, the one-line kind of error."""
    with pytest.raises(ConfigError):
        DecodeConfig(strategy="beam", **bad)


def test_largest_allowed_values_decode(model, tokenizer):
    from tui_translate.config import MAX_BEAM_SIZE, MAX_LENGTH_RATIO

    cfg = DecodeConfig(strategy="beam", beam_size=MAX_BEAM_SIZE, max_length_ratio=MAX_LENGTH_RATIO, top_beams=2)
    assert cfg.max_length(40, model.config.max_positions) == model.config.max_positions - 1
    hyps = run(model, encode(tokenizer, [SOURCES[1]]), cfg).hypotheses[0]
    assert len(hyps) == 2 and all(len(h.tokens) < model.config.max_positions for h in hyps)


@pytest.mark.parametrize("alpha", [-10.0, 10.0])
def test_extreme_length_penalties_decode_to_finite_scores(model, tokenizer, alpha):
    """-1075 divided by a penalty that underflowed to 0 and 512 overflowed; the bounds decode at the longest length."""
    from tui_translate.config import MAX_LENGTH_PENALTY, MAX_LENGTH_RATIO

    assert abs(alpha) == MAX_LENGTH_PENALTY
    cfg = DecodeConfig(strategy="beam", beam_size=4, top_beams=4, length_penalty=alpha, max_length_ratio=MAX_LENGTH_RATIO)
    hyps = run(model, encode(tokenizer, [SOURCES[1]]), cfg).hypotheses[0]
    assert len(hyps) == 4 and all(math.isfinite(h.score) for h in hyps)


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("poison", ["nan_weight", "inf_bias", "nan_eps"])
def test_non_finite_log_probs_are_an_error(tokenizer, strategy, poison):
    """A model whose outputs are NaN or infinite decoded to empty output or NaN scores with rc 0; the
    search now stops with a DecodingError (a one-line user error) at the first such position."""
    from tests.conftest import make_model
    from tui_translate.errors import is_user_error
    from tui_translate.search import DecodingError

    m = make_model(tokenizer, seed=3, final_logits_bias=True)
    with torch.no_grad():
        if poison == "nan_weight":
            m.decoder_layers[1].ffn.fc2.weight[0, 0] = float("nan")
        elif poison == "inf_bias":
            m.logits_bias[0, 7] = float("inf")
        else:  # a config with a NaN eps is refused when loaded (test_reliability); here it happens at run time
            for mod in m.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.eps = float("nan")
    with pytest.raises(DecodingError, match="non-finite") as info:
        run(m, encode(tokenizer, SOURCES[:2]), DecodeConfig(strategy=strategy, beam_size=3))
    assert is_user_error(info.value)


def test_long_forced_prefix_stays_within_positions(model, tokenizer):
    src = encode(tokenizer, [SOURCES[0]])
    limit = model.config.max_positions
    prefix = [10] * (limit - 3)
    h = run(model, src, DecodeConfig(strategy="beam", beam_size=2), prefix=prefix).hypotheses[0][0]
    assert h.tokens[: len(prefix)] == prefix and len(h.tokens) <= limit - 1
    with pytest.raises(ValueError, match="does not fit"):
        run(model, src, DecodeConfig(), prefix=[10] * limit)


def test_decoding_flags_follow_decode_config():
    """The flags are generated from DecodeConfig: no flags give its defaults, each flag sets its field."""
    import argparse

    from tui_translate.flags import add_decode_args, decode_config_from_args

    parser = argparse.ArgumentParser()
    add_decode_args(parser)
    assert decode_config_from_args(parser.parse_args([])) == DecodeConfig()
    args = parser.parse_args(["--strategy", "beam", "--beam-size", "7", "--nbest", "2", "--length-penalty", "1.0",
                              "--early-stopping", "--max-length-ratio", "2.5"])
    assert decode_config_from_args(args) == DecodeConfig(strategy="beam", beam_size=7, top_beams=2, length_penalty=1.0,
                                                         early_stopping=True, max_length_ratio=2.5)
    sampled = parser.parse_args(["--strategy", "sample", "--nbest", "3", "--temperature", "0.5", "--top-k", "4",
                                 "--top-p", "0.9", "--seed", "9"])
    assert decode_config_from_args(sampled) == DecodeConfig(strategy="sample", temperature=0.5, top_k=4, top_p=0.9, seed=9)
    text = parser.format_help()
    assert f"(default: {DecodeConfig().beam_size})" in text and f"+ {DecodeConfig().max_length_offset}" in text


# -- drafts: verified in one pass, never changing the output ------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tui_translate.engine import InferenceEngine  # noqa: E402


class CountingDecoder:
    """A decoder that records how many new tokens per row each decode_step call fed, and how many positions
    went through the output layer (`projected`: one entry per call, its positions)."""

    def __init__(self, inner) -> None:
        self.inner, self.fed, self.projected = inner, [], []
        self.config = inner.config

    def encode(self, src, need_weights=False):
        return self.inner.encode(src, need_weights)

    def start_cache(self, encoded, capacity):
        return self.inner.start_cache(encoded, capacity)

    def decode_step(self, tokens, cache, need_weights=False, logits=True):
        self.fed.append(tokens.size(1))
        if logits:
            self.projected.append(tokens.size(1))
        return self.inner.decode_step(tokens, cache, need_weights, logits=logits)

    def logits(self, hidden):
        self.projected.append(1)
        return self.inner.logits(hidden)


@pytest.fixture(scope="module", params=["model", "fp32", "int8"])
def decoder(request, model):
    """The bare model (the oracle) and the inference engine in float32 and int8."""
    return model if request.param == "model" else InferenceEngine(model, request.param)


def assert_same_result(a: SearchDone, b: SearchDone, exact: bool = False) -> None:
    """Same tokens; same scores, alternatives and attention, bit for bit when `exact`, else up to the rounding
    of a block's products."""
    if exact:
        assert a.steps == b.steps
        for ha, hb in zip(a.hypotheses, b.hypotheses, strict=True):
            for x, y in zip(ha, hb, strict=True):
                for field in ("tokens", "token_logprobs", "score", "finished", "logprob"):
                    assert getattr(x, field) == getattr(y, field), field
                for field in ("alt_ids", "alt_logprobs", "cross_attention", "self_attention"):
                    fx, fy = getattr(x, field), getattr(y, field)
                    assert (fx is None and fy is None) or torch.equal(fx, fy), field
    assert a.steps == b.steps
    for ha, hb in zip(a.hypotheses, b.hypotheses, strict=True):
        assert [h.tokens for h in ha] == [h.tokens for h in hb]
        for x, y in zip(ha, hb):
            assert x.finished == y.finished
            assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-5)
            assert x.score == pytest.approx(y.score, abs=1e-5)
            assert torch.equal(x.alt_ids, y.alt_ids)
            torch.testing.assert_close(x.alt_logprobs, y.alt_logprobs, atol=1e-5, rtol=0)
            if x.cross_attention is not None:
                torch.testing.assert_close(x.cross_attention, y.cross_attention, atol=1e-5, rtol=0)
                torch.testing.assert_close(x.self_attention, y.self_attention, atol=1e-5, rtol=0)
    if a.encoder_attention is not None:
        for x, y in zip(a.encoder_attention, b.encoder_attention):
            assert torch.equal(x, y)


def _draft(data, reference: list[int], vocab: int, eos: int) -> list[int]:
    """A draft made from the output decoding gives: right, cut, wrong from some position, longer, with an
    early EOS, with ids outside the vocabulary or ids never generated, or empty or random."""
    kind = data.draw(st.sampled_from(["right", "cut", "wrong", "longer", "eos", "junk", "random", "empty"]))
    at = data.draw(st.integers(0, len(reference)))
    if kind == "right":
        return list(reference)
    if kind == "cut":
        return reference[:at]
    if kind == "wrong":
        return reference[:at] + data.draw(st.lists(st.integers(4, vocab - 1), min_size=1, max_size=6))
    if kind == "longer":
        return reference[:-1] + data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=8))
    if kind == "eos":
        return reference[:at] + [eos] + reference[at:]
    if kind == "junk":
        return reference[:at] + [data.draw(st.sampled_from([-1, vocab, 10**9, 0, 1]))] + reference[at:]
    if kind == "random":
        return data.draw(st.lists(st.integers(0, vocab - 1), max_size=12))
    return []


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_greedy_with_any_draft_equals_greedy_without(decoder, tokenizer, data):
    """Greedy decoding with a draft gives what it gives without: tokens, scores, alternatives and attention,
    whatever the draft (right, cut, wrong, longer than the output, holding EOS or junk ids), on the oracle
    path and on the engine in float32 and int8 (there bit for bit), one sentence or two, with or without a
    forced prefix."""
    texts = data.draw(st.sampled_from([[SOURCES[0]], [SOURCES[3]], [SOURCES[1], SOURCES[2]]]))
    src = encode(tokenizer, texts)
    need_weights = data.draw(st.booleans())
    cfg = DecodeConfig(strategy="greedy", max_length_ratio=data.draw(st.sampled_from([0.5, 1.5])))
    plain = run(decoder, src, cfg, need_weights=need_weights)
    reference = plain.hypotheses[0][0].tokens
    prefix = reference[:1] if data.draw(st.booleans()) else None
    if prefix:
        plain = run(decoder, src, cfg, need_weights=need_weights, prefix=prefix)
    draft = _draft(data, reference, decoder.config.vocab_size, decoder.config.eos_id)[len(prefix or []):]
    exact = isinstance(decoder, InferenceEngine) and decoder.precision == "int8"
    assert_same_result(run(decoder, src, cfg, need_weights=need_weights, prefix=prefix, draft=draft), plain, exact)


def test_right_draft_takes_one_pass_and_wrong_draft_goes_on_step_by_step(model, tokenizer):
    """The output as its own draft is verified in one decoder pass; a draft wrong from position k keeps k
    tokens (and the one computed at k) and decodes the rest one step at a time; the stream shows the tokens
    taken from the draft in one event, then one event per step."""
    engine = InferenceEngine(model)
    src = encode(tokenizer, [SOURCES[3]])
    cfg = DecodeConfig(strategy="greedy")
    plain = CountingDecoder(engine)
    want = run(plain, src, cfg).hypotheses[0][0].tokens
    assert len(want) >= 5 and want[-1] == tokenizer.eos_id
    assert plain.fed == [1] * len(want)

    right = CountingDecoder(engine)
    events = list(search(right, src, cfg, draft=want))
    assert right.fed == [len(want)]  # the start token and every drafted token, at once: no step after it
    assert [e for e in events if isinstance(e, SearchStep)] == []
    assert events[-1].hypotheses[0][0].tokens == want

    # the output layer runs on a drafted position only once the search reaches it: every position once
    assert right.projected == [1] * len(want)

    for k in (2, 0):
        wrong = CountingDecoder(engine)
        draft = want[:k] + [t for t in range(4, tokenizer.vocab_size) if t != want[k]][:3]
        events = list(search(wrong, src, cfg, draft=draft))
        assert wrong.fed == [1 + len(draft)] + [1] * (len(want) - k - 1)
        # positions 0..k from the draft's pass, then one per step: the rejected positions never reach the output layer
        assert wrong.projected == [1] * (k + 1) + [1] * (len(want) - k - 1)
        partials = [len(e.partial[0]) for e in events if isinstance(e, SearchStep)]
        assert partials == list(range(k + 1, len(want)))  # the k drafted tokens and the one chosen at k, then one by one
        assert events[-1].hypotheses[0][0].tokens == want


@pytest.mark.parametrize("cfg", [DecodeConfig(strategy="sample", seed=5, temperature=1.3),
                                 DecodeConfig(strategy="beam", beam_size=3, top_beams=2)])
def test_sampling_uses_a_draft_and_beam_search_ignores_it(model, tokenizer, cfg):
    """Sampling (one row per sentence) takes the draft's distributions while it draws the draft's tokens, and
    draws the same tokens; beam search feeds no draft at all (its other beams need every step anyway)."""
    engine = InferenceEngine(model)
    src = encode(tokenizer, SOURCES[2:4])
    plain = run(engine, src, cfg, need_weights=True)
    draft = plain.hypotheses[0][0].tokens
    counting = CountingDecoder(engine)
    assert_same_result(run(counting, src, cfg, need_weights=True, draft=draft), plain)
    assert counting.fed[0] == (1 if cfg.strategy == "beam" else len(draft))
