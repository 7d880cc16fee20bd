"""Hugging Face Marian interop, offline: tiny random MarianMTModel + tiny SentencePiece models made here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from tests.conftest import ENGLISH, FRENCH, make_model, tiny_corpus  # noqa: E402
from tui_translate.checkpoint import ModelLoadError, load_model_dir, save_model_dir  # noqa: E402
from tui_translate.loading import load_model  # noqa: E402
from tui_translate.config import DecodeConfig  # noqa: E402
from tui_translate.marian import export_marian, import_marian, load_marian  # noqa: E402
from tui_translate.search import SearchDone, pad_batch, search  # noqa: E402
from tui_translate.translator import Translator  # noqa: E402

TEXTS = ["je suis étudiant", "le chat dort", "Qu'est-ce que c'est ?", "la maison est grande"]


def _spm(tmp_path, name, sentences):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(tmp_path / name), vocab_size=70,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=1, unk_id=2, pad_id=-1,
                                   minloglevel=2)
    return tmp_path / f"{name}.model"


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    from transformers import MarianConfig, MarianMTModel

    tmp = tmp_path_factory.mktemp("marian")
    src = _spm(tmp, "src", tiny_corpus()[:120] + FRENCH * 3)
    tgt = _spm(tmp, "tgt", tiny_corpus()[100:] + ENGLISH * 3)
    vocab = {"</s>": 0, "<unk>": 1}
    for path in (src, tgt):
        p = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(p.get_piece_size()):
            piece = p.id_to_piece(i)
            if not (p.is_control(i) or p.is_unknown(i)) and piece not in vocab:
                vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_position_embeddings=64, pad_token_id=vocab["<pad>"], eos_token_id=0,
                       decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=None, activation_function="swish",
                       scale_embedding=True, dropout=0.0)
    model = MarianMTModel(cfg)
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    d = tmp / "opus-mt-fr-en"
    model.save_pretrained(d)
    shutil.copyfile(src, d / "source.spm")
    shutil.copyfile(tgt, d / "target.spm")
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return d


def _ours_greedy(translator, texts, cfg):
    src = pad_batch(translator.tokenizer.encode_ids(texts), translator.config.pad_id)
    final = list(search(translator.engine, src, cfg))[-1]  # the engine users decode with
    assert isinstance(final, SearchDone)
    return [h[0].tokens for h in final.hypotheses]


def _hf_generate(model, ids: list[int], cfg: DecodeConfig, max_new: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         num_beams=cfg.beam_size if cfg.strategy == "beam" else 1, do_sample=False,
                         length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping, max_new_tokens=max_new,
                         min_new_tokens=0, forced_eos_token_id=None, bad_words_ids=[[model.config.pad_token_id]],
                         no_repeat_ngram_size=0, repetition_penalty=1.0)
    return [t for t in out[0, 1:].tolist() if t != model.config.pad_token_id]


def test_import_matches_transformers(marian_dir, tmp_path):
    from transformers import MarianMTModel, MarianTokenizer

    hf = MarianMTModel.from_pretrained(marian_dir, attn_implementation="eager").eval()
    hf_tok = MarianTokenizer.from_pretrained(marian_dir)
    out = import_marian(marian_dir, tmp_path / "imported")
    t = Translator(load_model_dir(out))
    assert t.source_lang == "fr" and t.target_lang == "en"
    for text in TEXTS:
        assert t.tokenizer.encode(text).ids == hf_tok(text)["input_ids"]
    ids = hf_tok(TEXTS[0])["input_ids"]
    dec = [hf.config.decoder_start_token_id] + ids[:5]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
        enc = t.model.encode(torch.tensor([ids]), need_weights=True)
        ours = t.model.decode(torch.tensor([dec]), enc, need_weights=True)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-4, rtol=0)
    for layer in range(2):
        torch.testing.assert_close(ours.cross_attention[:, layer], ref.cross_attentions[layer], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.self_attention[:, layer], ref.decoder_attentions[layer], atol=1e-4, rtol=0)
        torch.testing.assert_close(enc.self_attention[:, layer], ref.encoder_attentions[layer], atol=1e-4, rtol=0)
    for cfg in (DecodeConfig(strategy="greedy"), DecodeConfig(strategy="beam", beam_size=4, length_penalty=1.0, early_stopping=True)):
        for text in TEXTS:
            ids = hf_tok(text)["input_ids"]
            max_new = cfg.max_length(len(ids), t.config.max_positions)
            ours_tokens = [x for x in _ours_greedy(t, [text], cfg)[0]]
            assert ours_tokens == _hf_generate(hf, ids, cfg, max_new), (cfg.strategy, text)


def test_direct_loading_and_clear_errors(marian_dir, tmp_path):
    loaded = load_model(marian_dir)  # `--model path/to/opus-mt-xx-yy` works without converting
    assert loaded.config.norm_placement == "post" and loaded.config.position_layout == "split"
    broken = tmp_path / "broken"
    shutil.copytree(marian_dir, broken)
    (broken / "target.spm").unlink()
    with pytest.raises(ModelLoadError, match="target.spm: missing"):
        load_marian(broken)
    cfg = json.loads((marian_dir / "config.json").read_text())
    cfg["model_type"] = "bart"
    weird = tmp_path / "weird"
    shutil.copytree(marian_dir, weird)
    (weird / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="not a Marian model"):
        load_marian(weird)
    binary = tmp_path / "bin"
    shutil.copytree(marian_dir, binary)
    from safetensors.torch import load_file

    torch.save(load_file(str(binary / "model.safetensors")), binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    a = load_marian(binary).model.state_dict()
    b = load_marian(marian_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_export_loads_in_transformers_and_ctranslate2(tokenizer, tmp_path):
    from transformers import MarianMTModel, MarianTokenizer

    model = make_model(tokenizer, norm_placement="post", position_layout="split", final_logits_bias=True, activation="gelu",
                       decoder_start_id=tokenizer.pad_id)  # Marian-compatible: the decoder starts from pad
    with torch.no_grad():
        model.logits_bias.normal_(0, 0.5)
    ours_dir = save_model_dir(tmp_path / "ours", model, tokenizer, meta={"source_lang": "fr", "target_lang": "en"})
    hf_dir = export_marian(ours_dir, tmp_path / "hf")
    hf = MarianMTModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    hf_tok = MarianTokenizer.from_pretrained(hf_dir)
    t = Translator.load(ours_dir)
    to_hf = {t.tokenizer.piece(i): i for i in range(t.config.vocab_size)}
    to_hf = {i: hf_tok.convert_tokens_to_ids(p) for p, i in to_hf.items()}  # our id -> exported id (pad moved last)
    assert hf.config.pad_token_id == t.config.vocab_size - 1
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == [to_hf[i] for i in t.tokenizer.encode(text).ids]
    ids = t.tokenizer.encode(TEXTS[0]).ids
    dec = [t.config.decoder_start_id] + ids[:4]
    perm = torch.tensor([to_hf[i] for i in range(t.config.vocab_size)])
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([[to_hf[i] for i in ids]]), decoder_input_ids=torch.tensor([[to_hf[i] for i in dec]]),
                 output_attentions=True)
        enc = t.model.encode(torch.tensor([ids]))
        ours = t.model.decode(torch.tensor([dec]), enc, need_weights=True)
    torch.testing.assert_close(ref.logits[..., perm], ours.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ref.cross_attentions[1], ours.cross_attention[:, 1], atol=1e-4, rtol=0)
    cfg = DecodeConfig(strategy="greedy")
    for text in TEXTS:
        ids = t.tokenizer.encode(text).ids
        max_new = cfg.max_length(len(ids), t.config.max_positions)
        assert _hf_generate(hf, [to_hf[i] for i in ids], cfg, max_new) == [to_hf[i] for i in _ours_greedy(t, [text], cfg)[0]]

    # and back: the exported directory loads directly and translates the same
    back = Translator(load_model(hf_dir))
    for text in TEXTS:
        assert back.translate(text).text == t.translate(text).text

    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    ct_dir = tmp_path / "ct2"
    TransformersConverter(str(hf_dir)).convert(str(ct_dir), force=True)
    ct = ctranslate2.Translator(str(ct_dir), device="cpu")
    for text in TEXTS:
        ids = t.tokenizer.encode(text).ids
        pieces = t.tokenizer.pieces(ids)
        max_new = cfg.max_length(len(ids), t.config.max_positions)
        res = ct.translate_batch([pieces], beam_size=1, max_decoding_length=max_new, min_decoding_length=0, return_end_token=True)
        ours = _ours_greedy(t, [text], cfg)[0]
        assert res[0].hypotheses[0] == t.tokenizer.pieces(ours)


def _marian_copy(marian_dir, tmp_path, name="copy"):
    d = tmp_path / name
    shutil.copytree(marian_dir, d)
    return d


def _one_line(path) -> str:
    from tui_translate.loading import load_model

    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("changes,word", [({"d_model": "32"}, "d_model"), ({"d_model": -32}, "d_model"),
                                          ({"encoder_layers": 1_000_000}, "encoder layers"), ({"d_model": 10**9}, "d_model"),
                                          ({"encoder_attention_heads": 0, "decoder_attention_heads": 0}, "n_heads"),
                                          ({"activation_function": ["swish"]}, "activation"),
                                          ({"max_position_embeddings": 10**9}, "max_positions"), ({"vocab_size": 2.5}, "vocab")])
def test_bad_marian_config_is_one_line_before_allocation(marian_dir, tmp_path, monkeypatch, changes, word):
    import tui_translate.marian as marian

    built = []
    monkeypatch.setattr(marian, "Transformer", lambda config: built.append(config))
    d = _marian_copy(marian_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    msg = _one_line(d)
    assert word in msg and ("config.json" in msg or "model.safetensors" in msg or "vocab.json" in msg)
    assert built == []


def test_marian_vocab_and_weights_problems_name_the_right_file(marian_dir, tmp_path):
    d = _marian_copy(marian_dir, tmp_path, "list")
    (d / "vocab.json").write_text(json.dumps(["</s>", "<unk>"]))
    assert "vocab.json" in _one_line(d)
    d = _marian_copy(marian_dir, tmp_path, "nospm")
    (d / "source.spm").unlink()
    assert "source.spm: missing" in _one_line(d)  # not config.json: the directory is recognised as Marian
    d = _marian_copy(marian_dir, tmp_path, "zero")
    (d / "source.spm").unlink()
    (d / "source.spm").symlink_to("/dev/zero")
    assert "source.spm" in _one_line(d)
    d = _marian_copy(marian_dir, tmp_path, "nan")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    name = "model.decoder.layers.1.fc2.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    msg = _one_line(d)
    assert "NaN" in msg and name in msg and "model.safetensors" in msg


def test_import_marian_refuses_a_non_empty_target_and_force_keeps_foreign_files(marian_dir, tmp_path):
    from tui_translate.atomic import OutputExistsError

    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("thesis")
    (out / "target_tokenizer.json").write_text("stale")  # a model directory's own file: replaced
    with pytest.raises(OutputExistsError, match="not empty"):
        import_marian(marian_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["target_tokenizer.json", "thesis.txt"]
    import_marian(marian_dir, out, force=True)
    assert (out / "thesis.txt").read_text() == "thesis"
    assert (out / "target_tokenizer.json").read_text() != "stale"
    a = load_model_dir(out).model.state_dict()
    b = load_marian(marian_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_export_with_force_keeps_foreign_files_and_drops_stale_format_files(tokenizer, tmp_path):
    model = make_model(tokenizer, norm_placement="post", position_layout="split", final_logits_bias=True,
                       decoder_start_id=tokenizer.pad_id)
    ours = save_model_dir(tmp_path / "ours", model, tokenizer, meta={"source_lang": "fr", "target_lang": "en"})
    out = tmp_path / "p"
    out.mkdir()
    (out / "thesis.txt").write_text("thesis")
    (out / "pytorch_model.bin").write_text("an older export's weights")
    export_marian(ours, out, force=True)
    names = {p.name for p in out.iterdir()}
    assert "thesis.txt" in names and "pytorch_model.bin" not in names and "model.safetensors" in names
    assert (out / "thesis.txt").read_text() == "thesis"


def test_pre_norm_models_refuse_marian_export(model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="post-norm"):
        export_marian(model_dir, tmp_path / "x")


SHIPPED = Path(__file__).resolve().parent.parent / "models" / "fr-en"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped model in this checkout")
def test_shipped_default_model_translates_identically_in_transformers_and_ctranslate2(tmp_path):
    """The default model, exported, gives token-for-token the same greedy translations in both peers."""
    from transformers import MarianMTModel, MarianTokenizer

    t = Translator.load(SHIPPED)
    if t.config.norm_placement != "post" or t.config.position_layout != "split":
        pytest.skip("the shipped model is not Marian-compatible")
    hf_dir = export_marian(SHIPPED, tmp_path / "hf")
    hf = MarianMTModel.from_pretrained(hf_dir).eval()
    hf_tok = MarianTokenizer.from_pretrained(hf_dir)
    to_hf = {i: hf_tok.convert_tokens_to_ids(t.tokenizer.piece(i)) for i in range(t.config.vocab_size)}
    texts = ["Je suis étudiant.", "Le chat dort sur le canapé.", "Il fait beau aujourd'hui.", "Où est la gare ?",
             "Nous avons mangé trop de gâteau hier soir.", "Tom ne sait pas nager."]
    cfg = DecodeConfig(strategy="greedy")
    ours = _ours_greedy(t, texts, cfg)
    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir)).convert(str(tmp_path / "ct2"), force=True)
    ct = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    for text, mine in zip(texts, ours):
        ids = t.tokenizer.encode(text).ids
        max_new = cfg.max_length(len(ids), t.config.max_positions)
        assert _hf_generate(hf, [to_hf[i] for i in ids], cfg, max_new) == [to_hf[i] for i in mine], text
        res = ct.translate_batch([t.tokenizer.pieces(ids)], beam_size=1, max_decoding_length=max_new, min_decoding_length=0,
                                 return_end_token=True)
        assert res[0].hypotheses[0] == t.tokenizer.pieces(mine), text
