"""Training pipeline: a toy language is learnt, interruption + resume is exact, DDP stays in sync, eval = sacreBLEU."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from safetensors.torch import load_file

from tui_translate.config import TrainConfig
from tui_translate.evaluate import score, translate_texts
from tui_translate.checkpoint import load_model_dir
from tui_translate.train import checkpoint_dirs, eval_sample, train

WORDS = "ab cd ef gh ij kl mn op qr st".split()


def toy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Source: random words; target: the same words in reverse order."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


def write_tsv(path: Path, pairs) -> str:
    path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return write_tsv(d / "train.tsv", toy_pairs(600, 1)), write_tsv(d / "valid.tsv", toy_pairs(40, 2))


def toy_config(toy_files, out: Path, **kw) -> TrainConfig:
    train_tsv, valid_tsv = toy_files
    params = dict(train=train_tsv, valid=valid_tsv, out_dir=str(out), vocab_size=40,
                  model={"d_model": 64, "n_heads": 4, "n_encoder_layers": 2, "n_decoder_layers": 2, "d_ff": 128, "dropout": 0.0,
                         "max_positions": 32},
                  max_tokens=600, lr=3e-3, warmup_steps=40, max_steps=360, eval_every=120, eval_sentences=20,
                  save_every=60, keep_last=3, average_last=2, patience=100, seed=7, threads=2, clean=False)
    params.update(kw)
    return TrainConfig(**params)


@pytest.fixture(scope="module")
def toy_run(toy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model_dir = train(toy_config(toy_files, out))
    return out, model_dir


def test_loss_falls_and_the_toy_language_is_learnt(toy_run):
    out, model_dir = toy_run
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert losses[-1] < losses[0] / 4
    assert any("bleu" in x for x in lines) and any("val_loss" in x for x in lines)
    last_eval = [x for x in lines if "valid" in x][-1]["valid"]
    assert 0.5 < next(iter(last_eval.values()))["distinct"] <= 1  # it reads its source: outputs differ
    loaded = load_model_dir(model_dir)
    test = toy_pairs(30, 99)
    hyps = translate_texts(loaded.model, loaded.tokenizer, [s for s, _ in test])
    exact = sum(h == t for h, (_, t) in zip(hyps, test)) / len(test)
    assert exact >= 0.8, list(zip(hyps, test))[:5]
    meta = json.loads((model_dir / "config.json").read_text())["meta"]
    assert meta["trained_steps"] == 360 and len(meta["averaged_checkpoints"]) == 2


def test_interrupted_run_resumes_to_the_same_weights(toy_files, tmp_path):
    full = tmp_path / "full"
    cut = tmp_path / "cut"
    cfg_full = toy_config(toy_files, full, max_steps=180, eval_every=1000)
    train(cfg_full)
    cfg_cut = toy_config(toy_files, cut, max_steps=180, eval_every=1000)
    train(cfg_cut, stop_after=120)  # "killed" after the checkpoint at step 120
    assert checkpoint_dirs(cut)[-1].name == "step-0000120"
    assert not (cut / "model").exists()
    train(cfg_cut, resume=True)
    a = load_file(str(checkpoint_dirs(full)[-1] / "model.safetensors"))
    b = load_file(str(checkpoint_dirs(cut)[-1] / "model.safetensors"))
    assert checkpoint_dirs(cut)[-1].name == "step-0000180"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == sorted(steps) and steps[-1] == 180


def test_kill_9_then_resume_matches_the_uninterrupted_run(toy_files, tmp_path):
    import signal
    import time

    train_tsv, valid_tsv = toy_files
    args = ["--train", train_tsv, "--valid", valid_tsv, "--vocab-size", "40", "--no-clean", "--d-model", "32", "--d-ff", "64",
            "--encoder-layers", "1", "--decoder-layers", "1", "--max-tokens", "400", "--max-steps", "400", "--save-every", "15",
            "--eval-every", "1000", "--threads", "1", "--warmup", "20", "--lr", "3e-3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run = lambda out, *extra: subprocess.Popen([sys.executable, "-m", "tui_translate", "train", *args, "--out", str(out), *extra],  # noqa: E731
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert run(full).wait(timeout=300) == 0
    proc = run(cut)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name >= "step-0000030" for p in checkpoint_dirs(cut)):
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.2))  # a random moment after the second checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_dirs(cut)[-1].name
    assert killed_at < "step-0000400", "the run finished before it could be killed"
    resumed = run(cut, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from step" in err
    a = load_file(str(checkpoint_dirs(full)[-1] / "model.safetensors"))
    b = load_file(str(checkpoint_dirs(cut)[-1] / "model.safetensors"))
    assert checkpoint_dirs(cut)[-1].name == "step-0000400"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(50, 401, 50))  # one entry per logged step, no duplicates


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(toy_files, tmp_path):
    out = tmp_path / "c"
    cfg = toy_config(toy_files, out, max_steps=120, eval_every=1000)
    train(cfg, stop_after=120)
    last = checkpoint_dirs(out)[-1]
    data = (last / "model.safetensors").read_bytes()
    (last / "model.safetensors").write_bytes(data[:100])
    with pytest.warns(UserWarning, match="falling back"):
        train(toy_config(toy_files, out, max_steps=130, eval_every=1000), resume=True)
    state = json.loads((checkpoint_dirs(out)[-1] / "state.json").read_text())
    assert state["step"] == 130


def test_data_parallel_two_processes_stay_identical(toy_files, tmp_path):
    train_tsv, valid_tsv = toy_files
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           "-m", "tui_translate", "train", "--train", train_tsv, "--valid", valid_tsv, "--out", str(out), "--vocab-size", "40", "--no-clean",
           "--d-model", "32", "--d-ff", "64", "--encoder-layers", "1", "--decoder-layers", "1", "--max-tokens", "300",
           "--max-steps", "6", "--save-every", "3", "--eval-every", "100", "--threads", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    check = [e for e in entries if "ddp_world_size" in e]
    assert check and check[-1]["ddp_world_size"] == 2
    assert check[-1]["ddp_max_weight_diff"] == 0.0


def test_eval_scores_match_sacrebleu():
    hyps = ["i am a student", "the cat sleeps on the mat", "hello there"]
    refs = ["i am a student", "the cat is sleeping on the mat", "hi there"]
    s = score(hyps, refs)
    assert s.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert s.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert s.bleu_signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_eval_command_matches_sacrebleu_on_its_own_output(toy_run, toy_files, tmp_path):
    _, model_dir = toy_run
    hyp_file = tmp_path / "hyps.txt"
    proc = subprocess.run([sys.executable, "-m", "tui_translate", "eval", toy_files[1], "--model", str(model_dir), "--json",
                           "--output", str(hyp_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    refs = [line.split("\t")[1] for line in Path(toy_files[1]).read_text().splitlines()]
    hyps = hyp_file.read_text().splitlines()
    assert obj["bleu"] == pytest.approx(round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2))
    assert obj["chrf"] == pytest.approx(round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2))
    assert obj["sentences"] == len(refs) and obj["sentences_per_second"] > 0
    from tui_translate.quality import repetition_rate

    assert obj["repetition_rate"] == pytest.approx(round(repetition_rate(hyps), 4))
    assert obj["number_sentences"] == 0 and obj["numbers_kept"] == 1.0  # the toy language has no digits


def test_marian_compatible_training_keeps_the_start_embedding_zero(toy_files, tmp_path):
    """The tied output layer would train the pad row; Marian/CTranslate2 start the decoder from zeros."""
    model = {"d_model": 32, "n_heads": 4, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 64, "dropout": 0.0,
             "max_positions": 32, "norm_placement": "post", "position_layout": "split", "decoder_start_id": "pad",
             "final_logits_bias": True}
    model_dir = train(toy_config(toy_files, tmp_path / "run", model=model, max_steps=30, eval_every=30, save_every=15,
                                 branch_init="deepnet"))
    m = load_model_dir(model_dir).model
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]
    assert all(v["encoder_spread"] > 0 for e in evals for v in e["valid"].values())
    assert m.config.decoder_start_id == m.config.pad_id
    assert torch.count_nonzero(m.tgt_embed.weight[m.config.pad_id]) == 0
    assert torch.count_nonzero(m.tgt_embed.weight[m.config.eos_id]) > 0


@pytest.mark.parametrize("flags", [["--warmup", "0"], ["--eval-every", "0"], ["--save-every", "0"], ["--heads", "0"],
                                   ["--label-smoothing", "2"], ["--max-len", "0"], ["--lr", "nan"],
                                   ["--cooldown", "-1"], ["--cooldown", "30000"]])
def test_bad_train_flags_are_one_line(toy_files, tmp_path, flags):
    train_tsv, valid_tsv = toy_files
    proc = subprocess.run([sys.executable, "-m", "tui_translate", "train", "--train", train_tsv, "--valid", valid_tsv,
                           "--out", str(tmp_path / "run"), "--no-clean", *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_out_that_is_a_file_and_empty_training_data_are_refused(toy_files, tmp_path):
    from tui_translate.config import ConfigError
    from tui_translate.data import DataError

    out_file = tmp_path / "file"
    out_file.write_text("keep me")
    with pytest.raises(ConfigError, match="not a directory"):
        train(toy_config(toy_files, out_file))
    assert out_file.read_text() == "keep me"
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no training pairs"):
        train(toy_config((str(empty), toy_files[1]), tmp_path / "run"))
    assert not (tmp_path / "run" / "model").exists()


def test_resume_with_other_data_is_refused(toy_files, tmp_path):
    from tui_translate.config import ConfigError

    out = tmp_path / "run"
    train(toy_config(toy_files, out, max_steps=20, eval_every=1000, save_every=10))
    other = write_tsv(tmp_path / "other.tsv", toy_pairs(50, 9))
    with pytest.raises(ConfigError, match="different train"):
        train(toy_config((other, toy_files[1]), out, max_steps=40), resume=True)
    train(toy_config(toy_files, out, max_steps=30, eval_every=1000, save_every=10), resume=True)  # same data: resumes


def test_a_cooldown_takes_the_rate_to_zero_by_max_steps_and_can_be_added_on_resume(toy_files, tmp_path):
    from tui_translate.train import lr_at

    plain = toy_config(toy_files, tmp_path / "a", max_steps=100)
    cooled = toy_config(toy_files, tmp_path / "a", max_steps=100, cooldown_steps=40)
    for step in range(1, 61):  # before the cooldown the schedule is untouched
        assert lr_at(step, cooled) == lr_at(step, plain)
    assert lr_at(80, cooled) == pytest.approx(lr_at(80, plain) * 21 / 40)
    assert 0 < lr_at(100, cooled) == pytest.approx(lr_at(100, plain) / 40)
    rates = [lr_at(s, cooled) for s in range(60, 101)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert lr_at(101, cooled) == 0.0

    out = tmp_path / "run"
    train(toy_config(toy_files, out, max_steps=30, eval_every=1000, save_every=10))
    cfg = toy_config(toy_files, out, max_steps=50, cooldown_steps=20, eval_every=1000, save_every=10)
    train(cfg, resume=True)
    logged = {x["step"]: x["lr"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in x}
    assert logged[50] == pytest.approx(lr_at(50, cfg)) and logged[50] < lr_at(50, plain) / 10


def test_resume_accepts_the_same_tokenizer_at_another_path_and_refuses_another(toy_files, tmp_path):
    """A run started with --tokenizer A resumes with --tokenizer B when B has A's content (A moved: a warm
    start's weights became the shipped model); a tokenizer with other content is refused."""
    import shutil

    from tui_translate.config import ConfigError

    first = tmp_path / "first"
    train(toy_config(toy_files, first, max_steps=5, eval_every=1000, save_every=5))
    a, b = tmp_path / "a" / "tokenizer.json", tmp_path / "b" / "tokenizer.json"
    a.parent.mkdir()
    b.parent.mkdir()
    shutil.copyfile(first / "tokenizer.json", a)
    out = tmp_path / "run"
    train(toy_config(toy_files, out, max_steps=10, eval_every=1000, save_every=5, tokenizer=str(a)))
    shutil.move(a, b)
    train(toy_config(toy_files, out, max_steps=15, eval_every=1000, save_every=5, tokenizer=str(b)), resume=True)
    assert checkpoint_dirs(out)[-1].name == "step-0000015"
    b.write_text(b.read_text() + "\n")  # other bytes: another tokenizer file, as far as a resume can tell
    with pytest.raises(ConfigError, match="different tokenizer"):
        train(toy_config(toy_files, out, max_steps=20, eval_every=1000, save_every=5, tokenizer=str(b)), resume=True)


def test_a_truncated_checkpoint_is_left_out_of_the_average(toy_files, tmp_path):
    from tui_translate.train import export_run

    out = tmp_path / "run"
    train(toy_config(toy_files, out, max_steps=30, eval_every=1000, save_every=10, average_last=3))
    ckpts = checkpoint_dirs(out)
    weights = ckpts[0] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # torn by a kill or a full disk
    with pytest.warns(UserWarning, match="left out of the average"):
        model_dir = export_run(out)
    meta = json.loads((model_dir / "config.json").read_text())["meta"]
    assert meta["averaged_checkpoints"] == [p.name for p in ckpts[1:]]


def test_export_averages_as_many_checkpoints_as_asked(toy_files, tmp_path):
    """`train --out RUN --export --average-last N` averages the newest N checkpoints whatever the run was started
    with (it used to ignore the flag silently); without the flag, the run's own setting."""
    from tui_translate.cli import main
    from tui_translate.train import average_checkpoints

    out = tmp_path / "run"
    train(toy_config(toy_files, out, max_steps=40, eval_every=1000, save_every=10, keep_last=4, average_last=2))
    ckpts = checkpoint_dirs(out)
    for n, expected in ((None, ckpts[-2:]), (3, ckpts[-3:]), (4, ckpts)):
        assert main(["train", "--out", str(out), "--export"] + ([] if n is None else ["--average-last", str(n)])) == 0
        meta = json.loads((out / "model" / "config.json").read_text())["meta"]
        assert meta["averaged_checkpoints"] == [p.name for p in expected]
        assert meta["training"]["config"]["average_last"] == (2 if n is None else n)
        avg, _ = average_checkpoints(expected, None)
        weights = load_file(out / "model" / "model.safetensors")
        compared = [name for name in weights if name in avg and "embed" not in name]  # the start row is re-zeroed
        assert compared
        for name in compared:
            torch.testing.assert_close(weights[name], avg[name].to(weights[name].dtype))
    assert main(["train", "--out", str(out), "--export", "--average-last", "0"]) == 2


def test_a_run_continued_from_its_exported_model_keeps_step_schedule_and_curve(toy_files, tmp_path):
    """A new machine warm-starts from the committed export: same step, learning-rate schedule and data order,
    only the optimizer moments are new (their first steps re-warmed); the curve so far is carried."""
    from tui_translate.train import lr_at

    first = tmp_path / "first"
    train(toy_config(toy_files, first, max_steps=120, eval_every=60))
    cfg = toy_config(toy_files, tmp_path / "next", max_steps=180, eval_every=60, init_from=str(first / "model"))
    model_dir = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "next" / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [50, 100, 120, 150, 180]  # the first run's lines, then the continuation's
    assert [x["step"] for x in lines if "val_loss" in x] == [60, 120, 180]
    logged = {x["step"]: x["lr"] for x in lines if "lr" in x}
    assert logged[150] == pytest.approx(lr_at(150, cfg))  # the schedule continues (a restart would be lr_at(30))
    assert lr_at(121, cfg, rewarm_from=120) < lr_at(121, cfg) / 5
    meta = json.loads((model_dir / "config.json").read_text())["meta"]
    assert meta["trained_steps"] == 180 and meta["training"]["state"]["step"] == 180

    other = toy_config(toy_files, tmp_path / "other", max_steps=60, eval_every=60, seed=8, init_from=str(first / "model"))
    train(other)
    lines = [json.loads(x) for x in (tmp_path / "other" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [50, 60]  # other seed: another run, a new schedule

    # the command kept for a lost machine, `--resume --init-from`, finds no checkpoint of its own: it warm-starts
    again = toy_config(toy_files, tmp_path / "again", max_steps=130, eval_every=60, save_every=130,
                       init_from=str(first / "model"))
    train(again, resume=True)
    lines = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [50, 100, 120, 130]
    train(toy_config(toy_files, tmp_path / "again", max_steps=140, eval_every=60, save_every=130,
                     init_from=str(first / "model")), resume=True)  # now it has one: it resumes it instead
    lines = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [50, 100, 120, 130, 140]


def test_in_training_evaluation_samples_the_whole_valid_set_evenly():
    pairs = [(f"s{i}", f"t{i}") for i in range(2000)]  # e.g. a valid file sorted by length
    sample = eval_sample(pairs, 200)
    assert len(sample) == 200 and len(set(sample)) == 200
    idx = [int(src[1:]) for src, _ in sample]
    assert idx == sorted(idx) and idx[0] == 0 and idx[-1] >= 1990  # reaches the long end
    assert max(b - a for a, b in zip(idx, idx[1:])) == 10  # an even stride, not the first 200
    assert eval_sample(pairs[:50], 200) == pairs[:50] and eval_sample(pairs, 0) == pairs
    assert eval_sample(pairs[:7], 3) == [pairs[0], pairs[2], pairs[4]]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_it_is_warned_about(toy_files, tmp_path, monkeypatch, native):
    """oneDNN emulates bfloat16 on a CPU without AVX-512 BF16 / AMX, and a step then takes many times longer
    than in float32: the run says so at its start rather than leaving the user to wonder."""
    import io

    from rich.console import Console

    import tui_translate.train as train_module

    monkeypatch.setattr(train_module, "bf16_is_native", lambda device: native)
    out = io.StringIO()
    train(toy_config(toy_files, tmp_path / "run", max_steps=2, eval_every=1000, save_every=1000, amp="bf16"),
          console=Console(file=out, width=200), device="cpu")
    assert ("no native bfloat16" in out.getvalue()) is not native


def test_encoded_pairs_cache_follows_the_cleaned_pairs(toy_files, tmp_path):
    """The encoded-data cache is keyed by the pairs themselves: a new cleaning rule (or edited corpus) that
    changes a pair gives a new encoding, not a stale one read back under the same --train arguments."""
    from tui_translate.tokenizer import train_tokenizer
    from tui_translate.train import Dist, prepare_data

    cfg = toy_config(toy_files, tmp_path)
    pairs = toy_pairs(50, 3)
    tok = train_tokenizer((s for p in pairs for s in p), 40)
    (tmp_path / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    first = prepare_data(cfg, tmp_path, tok, Dist(), [pairs])
    again = prepare_data(cfg, tmp_path, tok, Dist(), [pairs])
    changed = prepare_data(cfg, tmp_path, tok, Dist(), [[("ab ab", "cd cd")] + pairs[1:]])
    assert len(list(tmp_path.glob("data-*.npz"))) == 2
    assert first.src(0).tolist() == again.src(0).tolist() and changed.src(0).tolist() != first.src(0).tolist()


def test_a_deeper_decoder_grows_from_a_trained_model_and_starts_out_translating_as_it_does(toy_files, tmp_path):
    """`--init-from` with more `--decoder-layers`: the trained layers are copied and the new top layers start
    as near-identities, so the grown model's first evaluation already translates like the trained one (the
    oracle: its greedy outputs and teacher-forced log-probabilities); other architecture changes stay refused."""
    from tui_translate.config import ConfigError
    from tui_translate.data import EncodedPairs, collate, read_pairs

    for placement in ("post", "pre"):
        model_kw = {"d_model": 64, "n_heads": 4, "n_encoder_layers": 2, "n_decoder_layers": 1, "d_ff": 128,
                    "dropout": 0.0, "max_positions": 32, "norm_placement": placement}
        first = tmp_path / f"first-{placement}"
        trained_dir = train(toy_config(toy_files, first, model=model_kw, max_steps=180, eval_every=180))
        trained = load_model_dir(trained_dir)
        grown_kw = dict(model_kw, n_decoder_layers=3)
        run = tmp_path / f"grown-{placement}"
        # a negligible rate keeps the grown start as it is, to compare it with the model it grew from
        grown_dir = train(toy_config(toy_files, run, model=grown_kw, max_steps=1, eval_every=1, lr=1e-12,
                                     init_from=str(trained_dir)))
        grown = load_model_dir(grown_dir)
        assert grown.config.n_decoder_layers == 3 and trained.config.n_decoder_layers == 1

        pairs = read_pairs(toy_files[1], "fr-en")
        data = EncodedPairs.build(pairs, trained.tokenizer)
        c = trained.config
        src, tgt_in, tgt_out = collate(data, list(range(len(pairs))), c.pad_id, c.decoder_start_id)
        real = tgt_out != c.pad_id
        with torch.no_grad():
            lp_trained = trained.model.float().eval()(src, tgt_in).log_softmax(-1)
            lp_grown = grown.model.float().eval()(src, tgt_in).log_softmax(-1)
        gap = (lp_trained.gather(-1, tgt_out[..., None]) - lp_grown.gather(-1, tgt_out[..., None]))[real].abs()
        if placement == "pre":
            assert gap.max() < 1e-4  # a zero branch under pre-norm is the identity
        else:
            assert gap.mean() < 0.05  # the renormalisation of a post-norm layer nearly undoes itself
        sources = [s for s, _ in pairs]
        assert translate_texts(grown.model, grown.tokenizer, sources) == translate_texts(trained.model, trained.tokenizer, sources)

    with pytest.raises(ConfigError, match="architecture differs"):
        train(toy_config(toy_files, tmp_path / "wider", model=dict(model_kw, d_ff=256, n_decoder_layers=3),
                         max_steps=1, init_from=str(trained_dir)))
