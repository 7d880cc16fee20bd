"""`tui-translate bench` end to end on a tiny Marian-compatible model: every engine measured, JSON written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ENGLISH, FRENCH, fit_briefly, make_model
from tui_translate.checkpoint import save_model_dir
from tui_translate.cli import main
from tui_translate.config import DecodeConfig
from tui_translate.flags import INT8_DEFAULT


@pytest.mark.slow
def test_bench_measures_every_engine_on_identical_weights(tokenizer, tmp_path, capsys):
    model = fit_briefly(make_model(tokenizer, norm_placement="post", position_layout="split", final_logits_bias=True,
                                   decoder_start_id=tokenizer.pad_id), tokenizer)
    model_dir = save_model_dir(tmp_path / "fr-en", model, tokenizer, meta={"source_lang": "fr", "target_lang": "en"})
    tsv = tmp_path / "valid.tsv"
    tsv.write_text("".join(f"{f}\t{e}\n" for f, e in zip(FRENCH, ENGLISH)), encoding="utf-8")
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", str(model_dir), "--tsv", str(tsv), "--sentences", "6", "--threads", "2",
                 "--batch-sizes", "1", "4", "--block", "4", "--json", str(out), "--no-app"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["skipped"] == {}  # transformers and ctranslate2 are test dependencies
    assert report["block"] == 4  # batch 1 in blocks of 4 sentences (then 2), batch 4 one batch per block
    engines = {"ours-fast", "ours-capture", "ours-int8", "transformers", "ctranslate2-float32", "ctranslate2-int8",
               "ctranslate2-float32-1t", "ctranslate2-int8-1t"}  # CTranslate2 at one thread too: its best is compared
    cells = {(r["engine"], r["strategy"], r["batch"]) for r in report["rows"]}
    assert cells == {(e, s, b) for e in engines for s in ("greedy", "beam5") for b in (1, 4)}
    for r in report["rows"]:
        assert r["sentences"] == 6 and r["median_ms_per_sentence"] > 0 and r["target_tokens_per_s"] > 0
        if r["engine"] == "ours-fast":
            assert r["ratio_to_ours_fast"] == 1.0
        if r["batch"] != 1:
            assert r["ms_per_output_token"] is None
        if r["engine"] == "ours-capture" and r["batch"] == 1:  # the app's path streams; the others decode for the result
            assert 0 < r["first_token_ms"] <= r["p90_ms_per_sentence"]
        elif r["engine"].startswith("ours"):
            assert r["first_token_ms"] is None
    assert set(report["training_tokens_per_s"]) == {"tui-translate", "torch.nn.Transformer"}
    for strategy in ("greedy", "beam5"):
        share = report["profile"][strategy]["share"]
        assert abs(sum(share.values()) - 1.0) < 0.05 and share["matrix products"] > 0
    live = report["live"]  # both engines, the default one first
    assert [lr["engine"] for lr in live] == (["int8", "fp32"] if INT8_DEFAULT else ["fp32", "int8"])
    assert all(lr["same_translations"] is True and lr["keystrokes"] > 12 for lr in live)
    printed = capsys.readouterr().out
    assert "ctranslate2" in printed and "transformers" in printed and "where the time goes" in printed


def test_batch_one_fit_separates_per_token_from_per_sentence_cost():
    from tui_translate.bench import Measure

    m = Measure("e", "greedy", 1)
    for n_tok in (3, 5, 8, 12, 4):
        m.seconds.append((2.0 + 0.5 * n_tok) / 1000)  # 2 ms per sentence + 0.5 ms per output token
        m.sizes.append(1)
        m.tokens.append(n_tok)
    row = m.row()
    assert row["ms_per_output_token"] == 0.5 and row["ms_fixed_per_sentence"] == 2.0
    same_length = Measure("e", "greedy", 1, seconds=[0.01, 0.02], sizes=[1, 1], tokens=[4, 4])
    batched = Measure("e", "greedy", 4, seconds=[0.01, 0.02], sizes=[4, 4], tokens=[9, 17])
    assert same_length.fit() is None and batched.row()["ms_per_output_token"] is None


def test_live_mode_replay_measures_with_and_without_the_draft(translator):
    """The replay translates every prefix of the sentence typed key by key, both ways, to the same translations."""
    from tui_translate.bench import live_mode

    report = live_mode(translator, "je suis étudiant", replays=1)
    assert report["keystrokes"] == len("je suis étudiant") and report["words"] == 3
    assert report["same_translations"] is True
    assert report["last_key_ms_with_draft"] > 0 and report["last_key_ms_without_draft"] > 0
    assert report["engine"] == translator.engine.precision and report["strategy"] == DecodeConfig().describe()
