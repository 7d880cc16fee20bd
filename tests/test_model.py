"""Model oracles: cached == uncached, capture path == fast path, masks and probabilities."""

from __future__ import annotations

import pytest
import torch

from tui_translate.attention import attention_probabilities
from tui_translate.engine import InferenceEngine
from tui_translate.layers import sinusoidal_positions
from tests.conftest import make_model


def _batch(model):
    src = torch.tensor([[5, 6, 7, 8, 9, 2], [10, 11, 2, 0, 0, 0]])
    tgt = torch.tensor([[1, 12, 13, 14, 15, 16, 17], [1, 18, 19, 20, 21, 22, 23]])
    return src, tgt


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("layout", ["interleaved", "split"])
@pytest.mark.parametrize("engine", [False, True])
def test_cached_decoding_equals_full_forward(tokenizer, norm, layout, engine):
    """The model's incremental decoding, and the inference engine's (packed weights, fused step), equal the
    uncached teacher-forced pass through the modules."""
    model = make_model(tokenizer, norm_placement=norm, position_layout=layout, final_logits_bias=True)
    dec = InferenceEngine(model) if engine else model
    src, tgt = _batch(model)
    with torch.no_grad():
        full = model(src, tgt)  # (B, T, V)
        cache = dec.start_cache(dec.encode(src), capacity=tgt.size(1))
        steps = [dec.decode_step(tgt[:, i : i + 1], cache).logits for i in range(tgt.size(1))]
        # a forced block of several tokens followed by single steps must agree too
        cache2 = dec.start_cache(dec.encode(src), capacity=tgt.size(1))
        block = dec.decode_step(tgt[:, :4], cache2).logits
        rest = [dec.decode_step(tgt[:, i : i + 1], cache2).logits for i in range(4, tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([block, *rest], 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", [False, True])
def test_cache_through_many_reorders_equals_full_forward(tokenizer, engine):
    """Rows copied to beams, permuted, duplicated and dropped over several steps (the cache swaps between
    two buffers, reusing the spare one and a view of it when rows shrink): every step's logits still
    equal the uncached forward pass over each row's own history and source."""
    model = make_model(tokenizer, final_logits_bias=True)
    dec = InferenceEngine(model) if engine else model
    src, tgt = _batch(model)
    # per step: the rows to keep, as indices into the current rows (None: no reorder)
    orders = [None, [0, 0, 0, 1, 1, 1], [2, 0, 1, 5, 3, 3], None, [1, 1, 4, 5], [3, 0, 2], [2, 2, 0]]
    with torch.inference_mode():
        cache = dec.start_cache(dec.encode(src), capacity=tgt.size(1))
        rows = torch.arange(src.size(0))  # each cache row's sentence
        history = torch.empty(src.size(0), 0, dtype=torch.long)  # each cache row's decoder inputs so far
        for i, order in enumerate(orders):
            if order is not None:
                index = torch.tensor(order)
                cache.reorder(index, same_source=bool(rows[index].eq(rows).all()) if index.numel() == rows.numel() else False)
                rows, history = rows[index], history[index]
            token = tgt[rows, i]  # each row's next input: its sentence's target, varied per row below
            token = (token + torch.arange(rows.numel())) % model.config.vocab_size  # rows of one sentence differ
            history = torch.cat([history, token[:, None]], 1)
            step = dec.decode_step(token[:, None], cache).logits[:, 0]  # (N, V)
            full = model(src[rows], history)[:, -1]  # (N, V) the uncached reference
            torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
        assert cache.spare is not None and cache.self_kv.data_ptr() != cache.spare.data_ptr()


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("need_weights", [False, True])
def test_fused_single_token_step_equals_modular_step(tokenizer, norm, int8, rows, need_weights):
    """The engine's fused step (weights bound once per run) computes exactly what the layers compute on the
    same packed weights, logits and attention, with padded sources, through a beam-style reorder, in float32
    and int8 (one-row and batched kernels)."""
    model = make_model(tokenizer, norm_placement=norm, final_logits_bias=True, activation="gelu")
    engine = InferenceEngine(model, "int8" if int8 else "fp32")
    packed = engine.packed
    src, tgt = _batch(model)
    src, tgt = src[:rows], tgt[:rows]
    with torch.inference_mode():
        fused = engine.start_cache(engine.encode(src), capacity=tgt.size(1))
        modular = model.start_cache(model.encode(src, packed=packed), capacity=tgt.size(1), packed=packed)
        for i in range(tgt.size(1)):
            if i == 3:  # beams swap places (rows = 2) or stay (rows = 1)
                order = torch.arange(rows).flip(0)
                fused.reorder(order, same_source=rows == 1)
                modular.reorder(order, same_source=rows == 1)
            a = engine.decode_step(tgt[:, i : i + 1], fused, need_weights)
            b = model.decode_step(tgt[:, i : i + 1], modular, need_weights, packed=packed)  # every step through the modules
            assert torch.equal(a.logits, b.logits), (i, (a.logits - b.logits).abs().max())
            if need_weights:
                assert a.self_attention.shape == (rows, model.config.n_decoder_layers, model.config.n_heads, 1, i + 1)
                assert torch.equal(a.self_attention, b.self_attention) and torch.equal(a.cross_attention, b.cross_attention)
            else:
                assert a.self_attention is None and a.cross_attention is None
        assert torch.equal(fused.self_kv[..., : fused.length, :], modular.self_kv[..., : modular.length, :])
    with torch.enable_grad():  # autograd (training) never takes the packs or the fused step: nn.Linear's arithmetic
        a = engine.decode_step(tgt[:, :1], engine.start_cache(engine.encode(src), capacity=4)).logits
        b = model.decode_step(tgt[:, :1], model.start_cache(model.encode(src), capacity=4)).logits
    assert a.requires_grad and torch.equal(a, b)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("need_weights", [False, True])
def test_fused_block_equals_one_token_steps(tokenizer, norm, int8, rows, need_weights):
    """A block of new tokens (a forced prefix, a draft) computes what one-token steps compute, position by
    position, logits, attention and the cache: bit for bit in int8 (its kernels treat rows independently), up
    to the order of additions of the float32 products. That takes the steps' kernels: fbgemm quantizes a whole call's activations with one
    scale (a block multiplied in one call differed from its steps by about 1e-2 here) and a T-query
    attention kernel adds up in another order than one query at a time."""
    model = make_model(tokenizer, norm_placement=norm, final_logits_bias=True, activation="gelu")
    engine = InferenceEngine(model, "int8" if int8 else "fp32")
    src, tgt = _batch(model)
    src, tgt = src[:rows], tgt[:rows]
    with torch.inference_mode():
        encoded = engine.encode(src)
        by_block = engine.start_cache(encoded, capacity=tgt.size(1))
        by_step = engine.start_cache(encoded, capacity=tgt.size(1))
        first = engine.decode_step(tgt[:, :2], by_block, need_weights)  # then a block of 4 after 2 positions
        block = engine.decode_step(tgt[:, 2:6], by_block, need_weights)
        steps = [engine.decode_step(tgt[:, i : i + 1], by_step, need_weights) for i in range(6)]
    tol = dict(atol=0, rtol=0) if int8 else dict(atol=1e-5, rtol=0)
    for got, want in ((first, steps[:2]), (block, steps[2:])):
        torch.testing.assert_close(got.logits, torch.cat([s.logits for s in want], 1), **tol)
        if need_weights:
            torch.testing.assert_close(got.cross_attention, torch.cat([s.cross_attention for s in want], 3), **tol)
            keys = got.self_attention.size(-1)
            for t, s in enumerate(want):  # position t sees the cached positions and the block up to itself, nothing later
                width = s.self_attention.size(-1)
                torch.testing.assert_close(got.self_attention[..., t : t + 1, :width], s.self_attention, **tol)
                assert torch.all(got.self_attention[..., t, width:keys] == 0)
    assert by_block.length == by_step.length == 6
    torch.testing.assert_close(by_block.self_kv[..., :6, :], by_step.self_kv[..., :6, :], **tol)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_fused_encoder_equals_modular_encoder(tokenizer, norm, int8, need_weights):
    """The engine's fused encoder computes exactly what the encoder layers compute on the same packed weights:
    memory, source mask, self-attention of every layer, and the cross-attention keys/values the fused step
    derives from them; for a padded batch, one sentence, a padded row alone and a one-token source (the
    one-row int8 kernel), in float32 and int8. With autograd on or in training mode it runs the modules."""
    model = make_model(tokenizer, norm_placement=norm, final_logits_bias=True, activation="gelu")
    engine = InferenceEngine(model, "int8" if int8 else "fp32")
    packed = engine.packed
    src, _ = _batch(model)
    for source in (src, src[:1], src[1:, :3], src[:1, -1:]):
        with torch.inference_mode():
            a = engine.encode(source, need_weights)
            b = model.encode(source, need_weights, packed=packed)
            fused_cache, modular_cache = engine.start_cache(a, capacity=4), model.start_cache(b, capacity=4, packed=packed)
        assert torch.equal(a.memory, b.memory), (source.shape, (a.memory - b.memory).abs().max())
        assert torch.equal(a.source_mask, b.source_mask)
        if need_weights:
            assert a.self_attention.shape == (source.size(0), model.config.n_encoder_layers, model.config.n_heads, *source.shape[1:] * 2)
            assert torch.equal(a.self_attention, b.self_attention)
        else:
            assert a.self_attention is None
        assert torch.equal(fused_cache.cross_kv, modular_cache.cross_kv)
        assert torch.equal(fused_cache.source_mask, modular_cache.source_mask) and fused_cache.capacity == modular_cache.capacity
        assert (fused_cache.cross_mask is None) == (modular_cache.cross_mask is None)
    with torch.enable_grad():  # autograd (training) never takes the packs or the fused encoder: nn.Linear's arithmetic
        a = engine.encode(src, need_weights).memory
        b = model.encode(src, need_weights).memory
    assert a.requires_grad and torch.equal(a, b)
    model.train()  # dropout (0 here) and the modules, whatever the grad mode
    with torch.inference_mode():
        a, b = engine.encode(src, need_weights).memory, model.encode(src, need_weights, packed=packed).memory
    model.eval()
    assert torch.equal(a, b)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("int8", [False, True])
def test_fused_encoder_padding_and_capture(tokenizer, norm, int8):
    """Padding never reaches a real position: padded keys get exactly zero attention, and in float32 a padded
    row equals its sentence encoded alone (int8 quantizes a product's activations with one scale per call, so
    a batch rounds differently from its sentences alone, on the modular path as here: the test above holds the
    fused encoder to that path bit for bit). The capture path's memory equals the fast path's, and its rows sum
    to 1."""
    model = make_model(tokenizer, norm_placement=norm, final_logits_bias=True, activation="gelu")
    engine = InferenceEngine(model, "int8" if int8 else "fp32")
    src, _ = _batch(model)  # row 1 has 3 real tokens
    with torch.inference_mode():
        fast = engine.encode(src)
        capture = engine.encode(src, need_weights=True)
        alone = engine.encode(src[1:, :3], need_weights=True)
        first = engine.encode(src[:1], need_weights=True)
    w = capture.self_attention  # (B, L, H, S, S)
    assert torch.all(w[1, ..., 3:] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(capture.memory, fast.memory, atol=1e-5, rtol=0)  # attention adds up in another order
    if not int8:
        torch.testing.assert_close(capture.memory[1, :3], alone.memory[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(w[1, ..., :3, :3], alone.self_attention[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(capture.memory[:1], first.memory, atol=1e-5, rtol=0)
        torch.testing.assert_close(w[:1], first.self_attention, atol=1e-5, rtol=0)


def test_engine_bindings_are_kept_across_runs_and_follow_weight_changes(tokenizer):
    """The fused encoder and step are bound once and reused by later runs, but never with stale weights: an
    optimizer step or a state-dict reload rebinds both, a replaced parameter the one that reads it (each watches
    its own modules). An int8 engine on the same model has packs of its own and leaves the float32 engine's
    results exactly as they were."""
    model = make_model(tokenizer, final_logits_bias=True)
    other = make_model(tokenizer, final_logits_bias=True, seed=1)
    engine = InferenceEngine(model)
    src, tgt = _batch(model)

    def fused_and_modular(e=engine):
        with torch.inference_mode():
            encoded = e.encode(src)
            fused = e.start_cache(encoded, capacity=2)
            bindings = e.fused_encoder(), e.fused_step()
            a = e.decode_step(tgt[:, :1], fused).logits
            reference = model.encode(src, packed=e.packed)
            modular = model.start_cache(reference, capacity=2, packed=e.packed)
            assert torch.equal(encoded.memory, reference.memory)
            return bindings, a, model.decode_step(tgt[:, :1], modular, packed=e.packed).logits

    first, a, b = fused_and_modular()
    assert torch.equal(a, b)
    assert fused_and_modular()[0] == first  # nothing changed: the same bindings (compared by identity)
    int8_bindings, int8_logits, _ = fused_and_modular(InferenceEngine(model, "int8"))
    assert all(x is not y for x, y in zip(int8_bindings, first)) and not torch.equal(int8_logits, a)
    assert torch.equal(fused_and_modular()[1], a) and fused_and_modular()[0] == first
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(src, tgt).flatten(0, 1), tgt.flatten()).backward()
    opt.step()
    model.eval()
    d = model.config.d_model
    changes = [  # (change, rebinds the encoder, rebinds the step)
        (lambda: None, True, True),  # the optimizer step above
        (lambda: model.load_state_dict(other.state_dict()), True, True),
        (lambda: setattr(model.decoder_layers[0].ffn.fc2, "bias", torch.nn.Parameter(torch.randn(d))), False, True),
        (lambda: setattr(model.encoder_layers[1].ffn.fc2, "bias", torch.nn.Parameter(torch.randn(d))), True, False),
    ]
    previous, before = first, a
    for change, encoder_changes, step_changes in changes:
        change()
        bindings, a, b = fused_and_modular()
        assert (bindings[0] is not previous[0]) == encoder_changes and (bindings[1] is not previous[1]) == step_changes
        assert torch.equal(a, b) and not torch.equal(a, before)
        previous, before = bindings, a


def test_cache_truncate_forgets_positions(model):
    """Positions past a truncation are overwritten by the next append and never read: decoding on equals
    decoding without them."""
    src, tgt = _batch(model)
    with torch.no_grad():
        cache = model.start_cache(model.encode(src), capacity=tgt.size(1))
        model.decode_step(tgt[:, :3], cache)
        wrong = (tgt[:, 3:6] + 5) % model.config.vocab_size
        model.decode_step(wrong, cache)  # three positions that will be dropped
        cache.truncate(3)
        rest = model.decode_step(tgt[:, 3:], cache).logits
        full = model(src, tgt)[:, 3:]
    torch.testing.assert_close(rest, full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        cache.truncate(cache.length + 1)


def test_capture_path_equals_fast_path(model):
    src, tgt = _batch(model)
    with torch.no_grad():
        fast = model.decode(tgt, model.encode(src))
        enc = model.encode(src, need_weights=True)
        slow = model.decode(tgt, enc, need_weights=True)
    torch.testing.assert_close(slow.logits, fast.logits, atol=1e-5, rtol=0)
    L, H = model.config.n_decoder_layers, model.config.n_heads
    assert slow.cross_attention.shape == (2, L, H, 7, 6)
    assert slow.self_attention.shape == (2, L, H, 7, 7)
    assert enc.self_attention.shape == (2, model.config.n_encoder_layers, H, 6, 6)


def test_attention_rows_sum_to_one_and_masks_are_exact(model):
    src, tgt = _batch(model)
    with torch.no_grad():
        enc = model.encode(src, need_weights=True)
        out = model.decode(tgt, enc, need_weights=True)
    for w in (enc.self_attention, out.self_attention, out.cross_attention):
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5, rtol=0)
    future = torch.ones(7, 7, dtype=torch.bool).triu(1)
    assert torch.all(out.self_attention[..., future] == 0)  # exactly zero, not just small
    # padded source positions (row 1 has 3 real tokens) receive exactly zero attention
    assert torch.all(out.cross_attention[1, ..., 3:] == 0)
    assert torch.all(enc.self_attention[1, ..., 3:] == 0)


def test_padding_does_not_change_results(model):
    src, tgt = _batch(model)
    with torch.no_grad():
        alone = model(src[1:, :3], tgt[1:])
        padded = model(src[1:], tgt[1:])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_probabilities_stable_for_large_scores():
    q = torch.full((1, 1, 1, 4), 100.0)
    k = torch.tensor([[[[100.0] * 4, [0.0] * 4, [-100.0] * 4]]])
    p = attention_probabilities(q, k, None)
    assert torch.isfinite(p).all()
    assert p[0, 0, 0, 0] == pytest.approx(1.0)


def test_sinusoid_layouts():
    pe = sinusoidal_positions(10, 8, "interleaved")
    split = sinusoidal_positions(10, 8, "split")
    assert pe[0, 0] == 0 and pe[0, 1] == 1  # sin(0), cos(0)
    assert torch.allclose(pe[:, 0::2], split[:, :4]) and torch.allclose(pe[:, 1::2], split[:, 4:])
    assert torch.allclose(pe[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 8))))


def test_tied_embeddings(model):
    assert model.output_proj.weight is model.tgt_embed.weight is model.src_embed.weight


def test_translating_stores_nothing_on_the_modules_and_the_cache_holds_only_state(model_dir):
    """Inference weights live in the translator's engine: after translating (float32 and int8, one sentence and
    a batch, beam search, a draft) no module of the model has gained an attribute, and a KV cache holds tensors
    and counters, nothing that computes."""
    from tui_translate.config import DecodeConfig
    from tui_translate.translator import Translator

    fp32 = Translator.load(model_dir)
    int8 = Translator(fp32.loaded, int8=True)
    model = fp32.model

    def attributes():
        return [(name, sorted(vars(m)), sorted(m._parameters), sorted(m._buffers)) for name, m in model.named_modules()]

    before = attributes()
    for t in (fp32, int8):
        first = t.translate("je suis étudiant")
        t.translate("je suis étudiant", draft=first.best.token_ids)
        t.translate("le chat dort", DecodeConfig(strategy="beam", beam_size=3), attention=False)
        t.translate_batch(["le chat dort", "il est petit"])
    assert attributes() == before
    with torch.inference_mode():
        cache = fp32.engine.start_cache(fp32.engine.encode(torch.tensor([[5, 6, 2]])), capacity=4)
        fp32.engine.decode_step(torch.tensor([[model.config.decoder_start_id]]), cache)
    assert all(isinstance(v, (torch.Tensor, int, type(None))) for v in vars(cache).values()), vars(cache)


def test_deepnet_branch_init_scales_exactly_the_residual_branches(tokenizer):
    """Value/output projections and feed-forward weights shrink by DeepNet's beta; queries, keys, embeddings,
    norms and biases stay as Xavier left them."""
    fresh = make_model(tokenizer, seed=5, n_encoder_layers=6, n_decoder_layers=2, norm_placement="post")
    scaled = make_model(tokenizer, seed=5, n_encoder_layers=6, n_decoder_layers=2, norm_placement="post")
    enc_beta, dec_beta = scaled.scale_branch_init()
    assert enc_beta == pytest.approx(0.87 * (6**4 * 2) ** (-1 / 16)) and dec_beta == pytest.approx(24 ** (-1 / 4))
    before, after = dict(fresh.named_parameters()), dict(scaled.named_parameters())
    branch = ("v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")
    n_scaled = 0
    for name, p in after.items():
        if name.endswith(branch):
            beta = enc_beta if name.startswith("encoder_layers") else dec_beta
            torch.testing.assert_close(p, before[name] * beta, rtol=0, atol=0)
            n_scaled += 1
        else:
            assert torch.equal(p, before[name]), name
    assert n_scaled == 6 * 4 + 2 * 6  # encoder: self-attention v/out + fc1/fc2; decoder: two attentions + fc1/fc2


def test_encoder_spread_is_the_per_position_std_and_deepnet_keeps_a_deep_encoder_spread(tokenizer):
    from tests.conftest import FRENCH
    from tui_translate.train import encoder_spread

    m = make_model(tokenizer, seed=2, n_encoder_layers=6, norm_placement="post")
    sentence = FRENCH[0]
    ids = torch.tensor(tokenizer.encode_ids([sentence]))
    with torch.no_grad():
        memory = m.encode(ids).memory[0]  # (S, D)
    assert encoder_spread(m, tokenizer, [sentence], "cpu") == pytest.approx(float(memory.std(0).mean()), rel=1e-5)
    # padding in a batch changes nothing: one sentence alone and among longer ones give the same spread
    many = FRENCH[:8]
    alone = [encoder_spread(m, tokenizer, [s], "cpu") for s in many]
    assert encoder_spread(m, tokenizer, many, "cpu") == pytest.approx(sum(alone) / len(alone), rel=1e-4)
    # a deep post-norm encoder starts with its positions much closer together than with small branches
    xavier = encoder_spread(m, tokenizer, many, "cpu")
    m.scale_branch_init()
    assert encoder_spread(m, tokenizer, many, "cpu") > 1.5 * xavier
