"""The compiled decoder step and encoder pass (native.py, csrc/decoder_step.cpp) against the Python fused
passes: the same logits, encoder memory, attention weights, cache contents and search outputs, bit for bit. Built once per test session
into a temporary cache (about half a minute); skipped only where there is no C++ compiler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import FRENCH, fit_briefly, make_model
from tui_translate import native
from tui_translate.config import DecodeConfig
from tui_translate.engine import InferenceEngine
from tui_translate.search import pad_batch, search, search_in_batches
from tui_translate.translator import Translator


@pytest.fixture(scope="session")
def extension(tmp_path_factory):
    if native.compiler() is None:
        pytest.skip("no C++ compiler (or ninja): the compiled step cannot be built here")
    # one build for the whole run: pytest-xdist's workers share the parent of their base temp directories,
    # and native.build's file lock makes a second worker wait for the first one's artifact
    root = tmp_path_factory.getbasetemp()
    os.environ["TUI_TRANSLATE_CACHE"] = str((root.parent if root.name.startswith("popen-gw") else root) / "native-cache")
    os.environ["TUI_TRANSLATE_NATIVE"] = "1"
    try:
        native.build()
        ext = native.module()
    finally:
        os.environ["TUI_TRANSLATE_NATIVE"] = "0"  # the other tests' engines keep the Python step
    assert ext is not None, native.status()
    return ext


@pytest.fixture
def use_native(extension, monkeypatch):
    """Engines bound inside the test take the compiled step once the extension is loaded."""
    monkeypatch.setenv("TUI_TRANSLATE_NATIVE", "1")
    return extension


@pytest.fixture
def unbuilt(monkeypatch, tmp_path):
    """native.py as on a machine with a compiler where nothing is built or loaded yet: an empty cache in tmp_path."""
    monkeypatch.setenv("TUI_TRANSLATE_CACHE", str(tmp_path))
    monkeypatch.setenv("TUI_TRANSLATE_NATIVE", "1")
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/c++")
    return tmp_path


def _batch():
    src = torch.tensor([[5, 6, 7, 8, 9, 2], [10, 11, 2, 0, 0, 0], [12, 13, 14, 2, 0, 0]])  # padded: a cross mask
    tgt = torch.tensor([[1, 12, 13, 14, 15, 16, 17], [1, 18, 19, 20, 21, 22, 23], [1, 30, 31, 32, 33, 34, 35]])
    return src, tgt


CASES = [  # (norm, activation, d_ff): d_ff 66 is not a multiple of the 4 column blocks (plain GEMM in float32)
    ("post", "relu", 64),
    ("pre", "gelu", 64),
    ("post", "gelu_new", 66),
    ("pre", "swish", 66),
]


@pytest.mark.parametrize("norm,activation,d_ff", CASES)
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("need_weights", [False, True])
def test_compiled_step_equals_python_step(tokenizer, use_native, norm, activation, d_ff, int8, rows, need_weights):
    """One-token steps through a beam-style reorder: logits, attention and the cache equal the Python step's."""
    model = make_model(tokenizer, norm_placement=norm, activation=activation, d_ff=d_ff, final_logits_bias=True)
    compiled, python = InferenceEngine(model, "int8" if int8 else "fp32"), InferenceEngine(model, "int8" if int8 else "fp32")
    src, tgt = _batch()
    src, tgt = src[:rows], tgt[:rows]
    with torch.inference_mode():
        a_cache = compiled.start_cache(compiled.encode(src), capacity=tgt.size(1))
        assert compiled.fused_step().native is not None
        python.fused_step().native = None  # this engine's bound step stays in Python
        python.fused_step()._native_possible = False
        b_cache = python.start_cache(python.encode(src), capacity=tgt.size(1))
        assert python.fused_step().native is None
        for i in range(tgt.size(1)):
            if i == 3:
                order = torch.arange(rows).flip(0)
                a_cache.reorder(order, same_source=rows == 1)
                b_cache.reorder(order, same_source=rows == 1)
            a = compiled.decode_step(tgt[:, i : i + 1], a_cache, need_weights)
            b = python.decode_step(tgt[:, i : i + 1], b_cache, need_weights)
            assert torch.equal(a.logits, b.logits), (i, (a.logits - b.logits).abs().max())
            if need_weights:
                assert torch.equal(a.self_attention, b.self_attention) and torch.equal(a.cross_attention, b.cross_attention)
            else:
                assert a.self_attention is None and a.cross_attention is None
        assert a_cache.length == b_cache.length == tgt.size(1)
        assert torch.equal(a_cache.self_kv[..., : a_cache.length, :], b_cache.self_kv[..., : b_cache.length, :])


@pytest.mark.parametrize("norm,activation,d_ff", CASES)
@pytest.mark.parametrize("int8", [False, True])
def test_compiled_encoder_equals_python_encoder(tokenizer, use_native, norm, activation, d_ff, int8):
    """The encoder's fast path (no attention weights): memory and source mask equal the Python pass's, for one
    unpadded sentence, a padded batch (a key mask) and a one-token source (one-row products)."""
    model = make_model(tokenizer, norm_placement=norm, activation=activation, d_ff=d_ff)
    compiled, python = InferenceEngine(model, "int8" if int8 else "fp32"), InferenceEngine(model, "int8" if int8 else "fp32")
    src, _ = _batch()
    with torch.inference_mode():
        for batch in (src[:1], src, torch.tensor([[2]])):
            a = compiled.encode(batch)
            assert compiled.fused_encoder().native is not None
            python.fused_encoder()._native_possible = False
            b = python.encode(batch)
            assert python.fused_encoder().native is None
            assert torch.equal(a.memory, b.memory), (a.memory - b.memory).abs().max()
            assert torch.equal(a.source_mask, b.source_mask)
            assert a.self_attention is None
            # the capture path stays in Python (explicit attention weights: equal up to rounding)
            torch.testing.assert_close(compiled.encode(batch, need_weights=True).memory, a.memory, atol=1e-5, rtol=1e-5)


def test_the_python_encoder_takes_over_when_the_compiled_one_fails(tokenizer, use_native):
    model = make_model(tokenizer)
    engine, reference = InferenceEngine(model), InferenceEngine(model)
    src, _ = _batch()
    with torch.inference_mode():
        engine.encode(src)
        encoder = engine.fused_encoder()
        assert encoder.native is not None

        class Broken:
            def encode(self, *args):
                raise RuntimeError("simulated failure")

        encoder.native = Broken()
        reference.fused_encoder()._native_possible = False
        assert torch.equal(engine.encode(src).memory, reference.encode(src).memory)
        assert encoder.native is None


@pytest.mark.parametrize("int8", [False, True])
def test_searches_are_identical_with_the_compiled_step(tokenizer, use_native, int8):
    """Greedy, beam search (3-best) and seeded sampling, with and without attention, one sentence and padded
    batches: every token, log-probability, score and attention map equals the Python step's."""
    model = fit_briefly(make_model(tokenizer, seed=3), tokenizer)
    sources = [tokenizer.encode(s).ids for s in FRENCH[:4]]
    configs = [DecodeConfig(), DecodeConfig(strategy="beam", beam_size=4, top_beams=3), DecodeConfig(strategy="sample", seed=7, top_k=20)]
    results = {}
    for on in (True, False):
        if not on:
            os.environ["TUI_TRANSLATE_NATIVE"] = "0"
        translator = Translator.for_model(model, tokenizer, int8=int8)
        runs = []
        for config in configs:
            for need_weights in (False, True):
                for batch_size in (1, 3):
                    for rows, done, _ in search_in_batches(translator.engine, sources, config, batch_size, need_weights):
                        runs.append((rows, _summary(done, need_weights)))
        assert (translator.engine.fused_step().native is not None) == on
        assert (translator.engine.fused_encoder().native is not None) == on
        results[on] = runs
    for (rows_a, a), (rows_b, b) in zip(results[True], results[False], strict=True):
        assert rows_a == rows_b
        assert a == b


def _summary(done, need_weights: bool) -> list:
    """Everything a search returns, as plain values (tensors as bytes, so equality is exact)."""
    def raw(t):
        return None if t is None else (tuple(t.shape), t.numpy().tobytes())

    out = [done.steps]
    for hyps in done.hypotheses:
        for h in hyps:
            out.append((h.tokens, h.token_logprobs, h.logprob, h.score, h.finished, raw(h.alt_ids), raw(h.alt_logprobs),
                        raw(h.cross_attention), raw(h.self_attention)))
    if need_weights:
        out.append([raw(t) for t in done.encoder_attention])
    return out


def test_the_python_step_takes_over_when_the_compiled_step_fails(tokenizer, use_native):
    """A step the extension raises on (fbgemm refuses NaN activations, say) is redone by the Python step over
    the same cache positions, and those weights stay on the Python step."""
    model = make_model(tokenizer)
    engine, reference = InferenceEngine(model), InferenceEngine(model)
    src, tgt = _batch()
    with torch.inference_mode():
        cache = engine.start_cache(engine.encode(src), capacity=tgt.size(1))
        step = engine.fused_step()

        class Broken:
            def step(self, *args):
                raise RuntimeError("simulated failure")

        step.native = Broken()
        reference.fused_step()._native_possible = False
        ref_cache = reference.start_cache(reference.encode(src), capacity=tgt.size(1))
        for i in range(3):
            a = engine.decode_step(tgt[:, i : i + 1], cache)
            b = reference.decode_step(tgt[:, i : i + 1], ref_cache)
            assert torch.equal(a.logits, b.logits)
        assert step.native is None and cache.length == 3


def test_capacity_is_checked_before_the_compiled_step_writes(tokenizer, use_native):
    model = make_model(tokenizer)
    engine = InferenceEngine(model)
    src, tgt = _batch()
    with torch.inference_mode():
        cache = engine.start_cache(engine.encode(src), capacity=2)
        assert engine.fused_step().native is not None
        engine.decode_step(tgt[:, :1], cache)
        engine.decode_step(tgt[:, 1:2], cache)
        with pytest.raises(ValueError, match="capacity"):
            engine.decode_step(tgt[:, 2:3], cache)


def test_status_lines(monkeypatch, unbuilt):
    """Off, no compiler, not built: one line each, and no background build is started for them."""
    monkeypatch.setenv("TUI_TRANSLATE_NATIVE", "0")
    assert "off" in native.status() and native.module() is None and not native.start_build()
    monkeypatch.setenv("TUI_TRANSLATE_NATIVE", "1")
    monkeypatch.setattr(native, "compiler", lambda: None)
    assert "no C++ compiler" in native.status() and not native.start_build()
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/c++")
    assert "not built yet" in native.status()
    native.cache_dir().mkdir(parents=True)
    native._log().write_text("FAILED: CalledProcessError: ...\n")
    assert "failed" in native.status() and not native.start_build()  # not retried at every start
    native.artifact().write_bytes(b"not a shared object")
    assert native.module() is None and "did not load" in native.status()


def test_loading_a_translator_starts_the_background_build_and_says_so(monkeypatch, unbuilt):
    """The entry points' loader starts the build (detached, never waited for) and the translator's notice
    tells the user the Python step decodes meanwhile."""
    from tui_translate.translator import load_translator

    started = []

    def start_build() -> bool:  # what the real one leaves behind while its detached process compiles
        started.append(True)
        native.cache_dir().mkdir(parents=True, exist_ok=True)
        native._log().write_text("building\n")
        return True

    monkeypatch.setattr(native, "start_build", start_build)
    translator = load_translator(Path(__file__).resolve().parent.parent / "models" / "fr-en")
    assert started == [True]
    assert "in the background" in translator.notice
    assert translator.translate("Je suis étudiant.").text  # decodes meanwhile, on the Python step
    assert translator.engine.fused_step().native is None


def test_the_compiled_step_follows_weights_changed_after_binding(tokenizer, use_native):
    """The compiled step holds the packed tensors of its binding: after an in-place update of the weights
    (an optimizer step, a reload) the engine binds a new step and computes with the new weights."""
    model = make_model(tokenizer)
    engine = InferenceEngine(model)
    src, tgt = _batch()
    with torch.inference_mode():
        engine.decode_step(tgt[:, :1], engine.start_cache(engine.encode(src), capacity=4))
        before = engine.fused_step()
        assert before.native is not None
    with torch.no_grad():
        model.decoder_layers[0].ffn.fc1.weight.mul_(1.5)
        model.output_proj.weight.add_(0.01)
    reference = InferenceEngine(model)
    with torch.inference_mode():
        cache = engine.start_cache(engine.encode(src), capacity=4)
        assert engine.fused_step() is not before and engine.fused_step().native is not None
        reference.fused_step()._native_possible = False
        ref_cache = reference.start_cache(reference.encode(src), capacity=4)
        for i in range(3):
            a = engine.decode_step(tgt[:, i : i + 1], cache)
            b = reference.decode_step(tgt[:, i : i + 1], ref_cache)
            assert torch.equal(a.logits, b.logits)


def test_an_unwritable_cache_directory_leaves_the_python_step_and_one_line(monkeypatch, unbuilt):
    """Loading a model never fails because the build cannot start: the notice says why instead."""
    blocker = unbuilt / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("TUI_TRANSLATE_CACHE", str(blocker))  # cache_dir() is blocker/native: cannot be created
    assert native.start_build() is False
    assert "cannot be built here" in native.notice()


def test_the_background_builder_records_a_failure_for_status(monkeypatch, capsys):
    """`python -m tui_translate.native build` (what start_build runs): a failed build prints the FAILED line that
    status() and start_build() read from its log; anything but `build` is a usage error."""
    monkeypatch.setattr(native.os, "nice", lambda n: 0, raising=False)  # not this test process

    def broken(verbose: bool = False):
        raise RuntimeError("c++: fatal error")

    monkeypatch.setattr(native, "build", broken)
    assert native._main(["build"]) == 1
    assert "FAILED: RuntimeError: c++: fatal error" in capsys.readouterr().out
    assert native._main([]) == 2


@pytest.mark.parametrize("int8", [False, True])
def test_compiled_greedy_and_beam_loops_equal_the_python_loop(tokenizer, use_native, int8, monkeypatch):
    """Greedy decoding and beam search for the result only (`stream=False`, what translate and eval run) go through
    the compiled loops: every token, log-probability, score, alternative, n-best list and step count equals the
    step-by-step loop's, with sentences leaving a padded batch at different steps, a forced prefix, a length cap
    that cuts hypotheses, length penalties and early stopping."""
    import tui_translate.search as search_mod

    model = fit_briefly(make_model(tokenizer, seed=3), tokenizer)
    translator = Translator.for_model(model, tokenizer, int8=int8)
    used = []
    real = search_mod._compiled_loop
    monkeypatch.setattr(search_mod, "_compiled_loop", lambda m: used.append(real(m)) or used[-1])
    sources = [tokenizer.encode(s).ids for s in FRENCH[:5]]
    configs = [DecodeConfig(), DecodeConfig(max_length_ratio=0.1, max_length_offset=2), DecodeConfig(n_alternatives=3),
               DecodeConfig(strategy="beam", beam_size=4, top_beams=3), DecodeConfig(strategy="beam", beam_size=3, length_penalty=0.0),
               DecodeConfig(strategy="beam", beam_size=2, early_stopping=True, n_alternatives=2),
               DecodeConfig(strategy="beam", beam_size=3, top_beams=3, max_length_ratio=0.1, max_length_offset=2)]
    cut = False
    for config in configs:
        for batch in (sources[:1], sources[:3], sources):
            src = pad_batch(batch, model.config.pad_id)
            for prefix in (None, sources[1][:2]):
                compiled = list(search_mod.search(translator.engine, src, config, prefix=prefix, stream=False))
                assert len(compiled) == 1 and used[-1] is not None
                calls = len(used)
                stepwise = list(search_mod.search(translator.engine, src, config, prefix=prefix))
                # streaming: the Python loop, a SearchStep after every step but the last
                assert len(used) == calls and len(stepwise) == stepwise[-1].steps
                assert _summary(compiled[-1], False) == _summary(stepwise[-1], False)
                cut = cut or any(not h.finished for hyps in compiled[-1].hypotheses for h in hyps)
    assert cut  # the length cap did end some hypotheses unfinished


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_the_compiled_loops_report_non_finite_log_probs_as_the_python_loop(tokenizer, use_native, strategy):
    from tui_translate.errors import DecodingError

    model = make_model(tokenizer, seed=3, final_logits_bias=True)
    with torch.no_grad():
        model.logits_bias[0, 7] = float("inf")
    translator = Translator.for_model(model, tokenizer)
    src = pad_batch([tokenizer.encode(s).ids for s in FRENCH[:2]], model.config.pad_id)
    messages = []
    for stream in (False, True):
        with pytest.raises(DecodingError, match="non-finite") as info:
            list(search(translator.engine, src, DecodeConfig(strategy=strategy, beam_size=3), stream=stream))
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_a_failing_compiled_loop_leaves_the_python_loop_to_decode(tokenizer, use_native, monkeypatch):
    import tui_translate.search as search_mod

    model = fit_briefly(make_model(tokenizer, seed=3), tokenizer)
    translator = Translator.for_model(model, tokenizer, int8=True)
    src = pad_batch([tokenizer.encode(s).ids for s in FRENCH[:3]], model.config.pad_id)
    expected = list(search(translator.engine, src, DecodeConfig()))[-1]

    class Broken:
        def greedy(self, *args):
            raise RuntimeError("simulated failure")

    monkeypatch.setattr(search_mod, "_compiled_loop", lambda m: Broken())
    got = list(search(translator.engine, src, DecodeConfig(), stream=False))
    assert _summary(got[-1], False) == _summary(expected, False)


@pytest.mark.parametrize("int8", [False, True])
def test_greedy_with_rules_on_the_compiled_loop_equals_the_python_loop(digits_tokenizer, random_model, use_native, int8):
    """Greedy decoding with output rules for the result only (the compiled loop without the rules, then the sentences
    the rules would have changed decoded again with them) gives what the Python loop with the rules gives:
    tokens, log-probs, alternatives; with sentences of both kinds in the batch. With int8 weights a batch's
    activations share one scale per product, so a sentence decoded again in a smaller batch rounds differently:
    there, one sentence at a time is exact and a batch keeps to the rules (the untrained model's near ties may
    then go either way)."""
    from tests.conftest import DIGIT_SOURCES
    from tui_translate.constraints import PieceTable, SourceRules
    from tui_translate import search as search_module

    table = PieceTable.from_tokenizer(digits_tokenizer)
    engine = InferenceEngine(random_model, "int8" if int8 else "fp32")
    cfg = DecodeConfig(strategy="greedy")
    texts = DIGIT_SOURCES + ["le chat", "the cat"]
    src = pad_batch(digits_tokenizer.encode_ids(texts), digits_tokenizer.pad_id)
    rules = [SourceRules(table, t) for t in texts]
    list(search(engine, src[:1], cfg, stream=False))  # binds the compiled step
    with torch.inference_mode():  # as the search asks
        assert search_module._compiled_loop(engine) is not None
    free = list(search(engine, src, cfg, stream=False))[-1]
    kept = [search_module._obeys(r, h[0], 0) for r, h in zip(rules, free.hypotheses)]
    assert any(kept) and not all(kept)  # both paths of the check are taken
    for batch in (list(range(len(texts))), [0], [len(texts) - 1]):
        rows = torch.tensor(batch)
        sub, sub_rules = src.index_select(0, rows), [rules[i] for i in batch]
        checked = list(search(engine, sub, cfg, stream=False, rules=sub_rules))[-1]
        python = list(search(engine, sub, cfg, stream=True, rules=sub_rules))[-1]
        for a, b, rule in zip(checked.hypotheses, python.hypotheses, sub_rules, strict=True):
            assert search_module._obeys(rule, a[0], 0)
            if int8 and len(batch) > 1:
                continue
            assert a[0].tokens == b[0].tokens
            assert a[0].token_logprobs == pytest.approx(b[0].token_logprobs, abs=1e-5)
            assert torch.equal(a[0].alt_ids, b[0].alt_ids)


def test_eval_text_with_rules_equals_the_translation_with_rules(digits_tokenizer, random_model, use_native):
    """`eval` keeps one alternative per position (text only), so its greedy check reads the tokens alone: the same
    text as translating with the default rules and five alternatives, on the Python loop and the compiled one."""
    from tests.conftest import DIGIT_SOURCES
    from tui_translate.evaluate import translate_texts

    translator = Translator.for_model(random_model, digits_tokenizer, int8=True)
    texts = DIGIT_SOURCES + ["le chat", "the cat"]
    python = [translator.translate(t, DecodeConfig(), attention=False).text for t in texts]  # streams: the Python loop
    for _ in range(2):  # the first call binds the compiled step; the second decodes on its loop
        assert translate_texts(translator, None, texts, DecodeConfig(), batch_size=1) == python
