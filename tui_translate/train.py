"""Training: tokenizer, token-count batches, label-smoothed loss, Adam with warmup + inverse-sqrt
decay, periodic validation (loss, BLEU, chrF), atomic resumable checkpoints, averaging of the last
checkpoints, early stopping; data-parallel through torch.distributed (run under torchrun).

Layout of a run directory (outside the work tree, e.g. ~/.cache/tui-translate/runs/fr-en):
    train.json            the TrainConfig
    tokenizer.json        trained (or copied) tokenizer
    data-*.npz            encoded training / validation pairs (cache)
    metrics.jsonl         one JSON object per log line / evaluation
    checkpoints/step-NNNNNNN/{model.safetensors, optim.safetensors, state.json}
    model/                final model directory (average of the last checkpoints)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from .atomic import replace_dir, write_text
from .checkpoint import save_model_dir, unique_state_dict
from .config import ConfigError, DecodeConfig, ModelConfig, TrainConfig
from .corpus import CorpusSpec, cleaned_corpora, epoch_indices, format_report
from .data import DataError, EncodedPairs, collate, read_pairs, token_batches
from .errors import TranslateError
from .evaluate import evaluate_pairs
from .grow import can_grow, grow_decoder
from .linear import bf16_is_native
from .model import Transformer
from .search import pad_batch
from .tokenizer import Tokenizer, train_tokenizer


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return Dist(rank, world, dev)


def lr_at(step: int, cfg: TrainConfig, rewarm_from: int | None = None) -> float:
    """Linear warmup to cfg.lr, then decay with the inverse square root of the step (the paper's schedule, rescaled).
    A run continued from an exported model (`rewarm_from`: the step it continued at) starts with fresh Adam
    moments, whose first updates are full-size whatever the gradient; the rate is ramped up again over a
    quarter of the warmup so those steps do not undo the weights. With a cooldown the last
    `cfg.cooldown_steps` steps before `cfg.max_steps` take the rate linearly towards zero: the annealed
    weights at the end are better than the ones a constant or slowly decaying rate leaves (Hägele et al.
    2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"), and since only the
    end of the schedule changes, a running job can be given one on --resume."""
    step = max(step, 1)
    rate = cfg.lr * min(step / cfg.warmup_steps, math.sqrt(cfg.warmup_steps / step))
    if rewarm_from is not None:
        rate *= min(1.0, (step - rewarm_from) / max(1, cfg.warmup_steps // 4))
    if cfg.cooldown_steps:
        rate *= min(1.0, max(0, cfg.max_steps - step + 1) / cfg.cooldown_steps)
    return rate


# What must match for a run to continue another's schedule and data order: the same model, data (corpora named
# by folder and file, so a moved corpus directory still matches), filters, batching and seed.
RUN_IDENTITY = ("model", "direction", "train", "clean", "max_len", "limit_pairs", "vocab_size", "max_tokens", "seed")


def _identity_value(cfg: TrainConfig, name: str):
    if name == "train":
        return [(f"{Path(s.path).parent.name}/{Path(s.path).name}", s.weight) for s in map(CorpusSpec.parse, cfg.train)]
    return getattr(cfg, name)


def run_difference(saved: TrainConfig, cfg: TrainConfig, names=RUN_IDENTITY) -> str | None:
    """The first setting in `names` that differs between two runs (None: they are the same run)."""
    return next((n for n in names if _identity_value(saved, n) != _identity_value(cfg, n)), None)


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


STATE_COUNTERS = ("step", "epoch", "batch", "best_val", "bad_evals", "tokens", "elapsed")
TRAINING_LOG = "training-log.jsonl"  # an exported model's metrics (curves), carried into a run continued from it


def keep_start_embedding_zero(model: Transformer) -> None:
    """Zero the pad row of the (tied) target embedding: the decoder's start vector is then 0 +
    position, as in Marian and CTranslate2 (`start_from_zero_embedding`)."""
    with torch.no_grad():
        model.tgt_embed.weight[model.config.pad_id].zero_()


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, pad_id: int, smoothing: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Returns (sum of smoothed loss, sum of NLL, number of non-pad tokens)."""
    v = logits.size(-1)
    flat = logits.reshape(-1, v).float()
    tgt = target.reshape(-1)
    loss = F.cross_entropy(flat, tgt, ignore_index=pad_id, label_smoothing=smoothing, reduction="sum")
    with torch.no_grad():
        nll = F.cross_entropy(flat, tgt, ignore_index=pad_id, reduction="sum")
    return loss, nll, int(tgt.ne(pad_id).sum())


# -- checkpoints ----------------------------------------------------------------------------------
def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), key=lambda p: p.name)


def save_checkpoint(out_dir: Path, model: Transformer, opt: torch.optim.Optimizer, state: dict, keep_last: int) -> Path:
    step = state["step"]
    dest = out_dir / "checkpoints" / f"step-{step:07d}"
    names = {id(p): n for n, p in model.named_parameters()}

    def build(tmp: Path) -> None:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in unique_state_dict(model).items()}, str(tmp / "model.safetensors"))
        opt_tensors = {"rng.torch": torch.get_rng_state()}
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state.get(p)
                if st:
                    opt_tensors[f"exp_avg.{names[id(p)]}"] = st["exp_avg"].detach().cpu().contiguous()
                    opt_tensors[f"exp_avg_sq.{names[id(p)]}"] = st["exp_avg_sq"].detach().cpu().contiguous()
        save_file(opt_tensors, str(tmp / "optim.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))

    replace_dir(build, dest)
    for old in checkpoint_dirs(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


class RunError(TranslateError, ValueError):
    """A run directory (--out) that this training or --export cannot use as it is."""


def read_run_json(file: Path) -> Any:
    """A JSON file of a run directory; one that is not JSON (hand-edited, torn) is said in one line."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{file}: not valid JSON ({e})") from None


def load_checkpoint(path: Path, model: Transformer, opt: torch.optim.Optimizer | None) -> dict:
    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    missing = set(unique_state_dict(model)) - set(weights)
    if missing:
        raise RunError(f"{path}: checkpoint lacks {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)
    if opt is not None:
        tensors = load_file(str(path / "optim.safetensors"))
        for name, p in model.named_parameters():
            key = f"exp_avg.{name}"
            if key in tensors:
                opt.state[p] = {
                    "step": torch.tensor(float(state["step"])),
                    "exp_avg": tensors[key].to(p.device),
                    "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(p.device),
                }
        torch.set_rng_state(tensors["rng.torch"])
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop log lines written after the checkpoint (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    write_text(path, "".join(x + "\n" for x in keep))


def latest_good_checkpoint(out_dir: Path, model: Transformer, opt, console: Console) -> dict | None:
    """Load the newest readable checkpoint; a corrupt one is skipped with a warning."""
    for path in reversed(checkpoint_dirs(out_dir)):
        try:
            return load_checkpoint(path, model, opt)
        except Exception as e:  # torn / corrupt checkpoint: fall back to the previous one
            msg = f"checkpoint {path.name} is unreadable ({type(e).__name__}: {str(e)[:120]}); falling back to the previous one"
            warnings.warn(msg, stacklevel=1)
            console.print(f"warning: {msg}", style="yellow", markup=False, soft_wrap=True)  # paths are not markup
    return None


def average_checkpoints(paths: list[Path], console: Console | None = None) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Mean of the checkpoints' weights; an unreadable (torn, truncated) checkpoint is skipped with a
    warning. Returns the mean and the checkpoints it averaged."""
    total: dict[str, torch.Tensor] = {}
    used = []
    for p in paths:
        try:
            weights = load_file(str(p / "model.safetensors"))
        except Exception as e:  # a checkpoint torn by a kill or a full disk: average the others
            msg = f"checkpoint {p.name} is unreadable ({type(e).__name__}: {str(e)[:120]}); left out of the average"
            warnings.warn(msg, stacklevel=1)
            if console is not None:
                console.print(f"warning: {msg}", style="yellow", markup=False, soft_wrap=True)  # paths are not markup
            continue
        if total and set(weights) != set(total):
            continue
        for k, v in weights.items():
            total[k] = total[k] + v.double() if k in total else v.double()
        used.append(p)
    return {k: (v / len(used)).float() for k, v in total.items()}, used


# -- the run --------------------------------------------------------------------------------------
def prepare_corpora(cfg: TrainConfig, out_dir: Path, d: Dist, console: Console) -> tuple[list[CorpusSpec], list[list[tuple[str, str]]]]:
    """Read (and, with cfg.clean, clean) every training corpus; the cleaning report goes to the console
    and to DIR/clean-report.json. Only rank 0 cleans; the others read its cache."""
    specs = [CorpusSpec.parse(t) for t in cfg.train]
    if d.main:
        corpora, report = cleaned_corpora(specs, out_dir / "clean", cfg.clean)
        if report:
            write_text(out_dir / "clean-report.json", json.dumps(report, indent=2))
            for line in format_report(report):
                console.print(f"clean: {line}")
    if d.world > 1:
        dist.barrier()
    if not d.main:
        corpora, _ = cleaned_corpora(specs, out_dir / "clean", cfg.clean)
    if cfg.limit_pairs:
        corpora = [c[: cfg.limit_pairs] for c in corpora]
    if not any(corpora):
        raise DataError(f"no training pairs in {', '.join(s.path for s in specs)}")
    return specs, corpora


def prepare_tokenizer(cfg: TrainConfig, out_dir: Path, d: Dist, specs: list[CorpusSpec], corpora) -> Tokenizer:
    """The run's tokenizer: copied from --tokenizer or the warm-start model, else trained on both sides
    of the corpora, each repeated by its (rounded) weight so the mixture's vocabulary is learnt."""
    path = out_dir / "tokenizer.json"
    if d.main and not path.exists():
        source = cfg.tokenizer or (str(Path(cfg.init_from) / "tokenizer.json") if cfg.init_from else None)
        if source:
            shutil.copyfile(source, path)
        else:
            def texts():
                for spec, pairs in zip(specs, corpora):
                    for _ in range(max(1, round(spec.weight))):
                        for fr, en in pairs:
                            yield fr
                            yield en

            tok = train_tokenizer(texts(), cfg.vocab_size)
            write_text(path, tok.to_str())
    if d.world > 1:
        dist.barrier()
    return Tokenizer.from_file(path)


def prepare_data(cfg: TrainConfig, out_dir: Path, tok: Tokenizer, d: Dist, corpora) -> EncodedPairs:
    """Every corpus encoded once (pairs longer than max_len dropped), cached per run and keyed by the pairs
    themselves and the tokenizer, so new cleaning rules or corpus files are never read from a stale cache."""
    h = hashlib.sha256((out_dir / "tokenizer.json").read_bytes())
    for pairs in corpora:
        h.update(f"{len(pairs)}\n".encode())
        for fr, en in pairs:
            h.update(f"{fr}\t{en}\n".encode())
    key = h.hexdigest()[:12]
    cache = out_dir / f"data-{cfg.direction}-{cfg.max_len}-{key}.npz"
    if d.main and not cache.exists():
        src_col = 0 if cfg.direction == "fr-en" else 1
        parts = [EncodedPairs.build([(p[src_col], p[1 - src_col]) for p in pairs], tok, cfg.max_len) for pairs in corpora]
        EncodedPairs.concat(parts).save(cache)
    if d.world > 1:
        dist.barrier()
    return EncodedPairs.load(cache)


def build_model_config(cfg: TrainConfig, tok: Tokenizer) -> ModelConfig:
    params = dict(vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id, unk_id=tok.unk_id,
                  decoder_start_id=tok.bos_id)
    params.update(cfg.model)
    if params.get("decoder_start_id") == "pad":
        params["decoder_start_id"] = tok.pad_id
    return ModelConfig(**params)


def validation_loss(model: Transformer, data: EncodedPairs, cfg: TrainConfig, device) -> float:
    model.eval()
    nll_sum, n_tok = 0.0, 0
    with torch.inference_mode():
        for idx in token_batches(data, cfg.max_tokens * 2, 0, 0, shuffle=False):
            src, tin, tout = (t.to(device) for t in collate(data, idx, model.config.pad_id, model.config.decoder_start_id))
            _, nll, n = label_smoothed_loss(model(src, tin), tout, model.config.pad_id, 0.0)
            nll_sum += float(nll)
            n_tok += n
    model.train()
    return nll_sum / max(n_tok, 1)


def continued_state(model_dir: Path, cfg: TrainConfig) -> tuple[dict | None, str]:
    """The training counters to continue from when a run warm-starts from a model this pipeline exported
    (a new machine picks up where the last one stopped: same step, learning-rate schedule and data order).
    Returns (None, why) when the model was not exported by `train` or by a run with other settings."""
    from .checkpoint import read_config_file

    _, meta, _ = read_config_file(model_dir)
    training = meta.get("training") if isinstance(meta, dict) else None
    if not isinstance(training, dict) or not isinstance(training.get("state"), dict):
        return None, "the model records no training state"
    try:
        saved = TrainConfig.from_dict(training["config"])
    except (ConfigError, KeyError, TypeError) as e:
        return None, f"its training settings are unreadable ({e})"
    name = run_difference(saved, cfg)
    if name:
        return None, f"it was trained with a different {name.replace('_', '-')}"
    return {k: training["state"][k] for k in STATE_COUNTERS if k in training["state"]}, ""


def export_run(out_dir: str | Path, console: Console | None = None, average_last: int | None = None) -> Path:
    """Average the newest checkpoints of a run (finished or not) into DIR/model: the run's `average_last` of
    them, or `average_last` when given (the model's metadata records the number used)."""
    console = console or Console(stderr=True)
    out_dir = Path(out_dir).expanduser()
    cfg = TrainConfig.from_dict(read_run_json(out_dir / "train.json"))
    if average_last is not None:
        cfg = replace(cfg, average_last=average_last)  # validated like the run's own setting
    tok = Tokenizer.from_file(out_dir / "tokenizer.json")
    model = Transformer(build_model_config(cfg, tok))
    paths = checkpoint_dirs(out_dir)
    if not paths:
        raise RunError(f"{out_dir}: no checkpoints to export")
    state = read_run_json(paths[-1] / "state.json")
    return export_average(out_dir, model, tok, cfg, state, model.num_parameters(), console)


def train(cfg: TrainConfig, resume: bool = False, console: Console | None = None, device: str = "auto", stop_after: int = 0) -> Path:
    """Run (or resume) training; returns the final model directory. stop_after>0 stops after that many
    steps in this invocation (used by tests to simulate an interruption)."""
    console = console or Console(stderr=True)
    d = setup_distributed(device)
    try:
        return _train(cfg, resume, console, d, stop_after)
    finally:
        # leaving the gloo group to interpreter shutdown can abort the process after the run is done
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, console: Console, d: Dist, stop_after: int) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = out_dir / "train.json"
    if d.main:
        if resume and cfg_file.exists():
            saved = TrainConfig.from_dict(read_run_json(cfg_file))
            # The run keeps its own copy of the tokenizer, which is what a --tokenizer file is compared with: the
            # same content at another path (the shipped model's, after the file the run started from moved) is
            # the same tokenizer, and other content at the same path is not.
            own = out_dir / "tokenizer.json"
            by_content = bool(cfg.tokenizer) and own.is_file()
            names = ("model", "direction", "train", "clean", "max_len", "limit_pairs", "vocab_size") + (() if by_content else ("tokenizer",))
            name = run_difference(saved, cfg, names)
            if name:
                raise ConfigError(f"{cfg_file}: --resume with a different {name} than the saved run "
                                  f"({getattr(saved, name)!r} there, {getattr(cfg, name)!r} now)")
            if by_content and not _same_file(Path(cfg.tokenizer).expanduser(), own):
                raise ConfigError(f"--tokenizer {cfg.tokenizer}: --resume with a different tokenizer than the run's own {own}")
        write_text(cfg_file, json.dumps(cfg.to_dict(), indent=2))

    torch.manual_seed(cfg.seed)
    specs, corpora = prepare_corpora(cfg, out_dir, d, console)
    tok = prepare_tokenizer(cfg, out_dir, d, specs, corpora)
    data = prepare_data(cfg, out_dir, tok, d, corpora)
    del corpora
    if len(data) == 0:
        raise DataError(f"no training pair is at most {cfg.max_len} tokens long")
    weights = [s.weight for s in specs]
    sizes = [int(n) for n in (data.corpus_sizes if data.corpus_sizes is not None else [len(data)])]
    valid_sets = [(Path(v).parent.name or Path(v).stem, read_pairs(v, cfg.direction)) for v in cfg.valid]
    valid_sets = [(name, pairs, EncodedPairs.build(pairs, tok)) for name, pairs in valid_sets]
    if not all(pairs for _, pairs, _ in valid_sets):
        raise DataError("a --valid file holds no pairs")
    mcfg = build_model_config(cfg, tok)
    model = Transformer(mcfg)
    if cfg.branch_init == "deepnet":
        enc_beta, dec_beta = model.scale_branch_init()
        console.print(f"branch init: DeepNet beta {enc_beta:.3f} (encoder), {dec_beta:.3f} (decoder)")
    model = model.to(d.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-9, weight_decay=cfg.weight_decay)

    state = {"step": 0, "epoch": 0, "batch": 0, "best_val": None, "bad_evals": 0, "tokens": 0, "elapsed": 0.0, "rewarm_from": None}
    loaded = None
    if resume:
        loaded = latest_good_checkpoint(out_dir, model, opt, console)
        if loaded is not None:
            state.update({k: loaded[k] for k in state if k in loaded})
            if d.main:
                _truncate_metrics(out_dir / "metrics.jsonl", state["step"])
                console.print(f"resumed from step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")
    elif d.main and checkpoint_dirs(out_dir):
        raise RunError(f"{out_dir} already has checkpoints: pass --resume to continue, or choose another --out")
    # `--resume --init-from` is the command that survives a lost machine: it continues the run's own checkpoints
    # where they exist and otherwise starts again from the committed model, never from random weights.
    if cfg.init_from and loaded is None:
        from .checkpoint import load_model_dir

        init = load_model_dir(cfg.init_from).model.float()
        grown = 0
        if init.config == mcfg:
            model.load_state_dict(init.state_dict())
        elif can_grow(init.config, mcfg):
            # A deeper decoder than the trained one's: the trained layers and new near-identity layers on top,
            # measured on a few training batches (grow.py).
            sample = token_batches(data, cfg.max_tokens, cfg.seed, 0)
            sample = (collate(data, idx, mcfg.pad_id, mcfg.decoder_start_id) for idx, _ in zip(sample, range(4)))
            grown = grow_decoder(model, init, sample)
        else:
            raise ConfigError(f"--init-from {cfg.init_from}: its architecture differs from this run's (only more "
                              "--decoder-layers than it has can be added)")
        if d.main and grown:
            console.print(f"grew the decoder of {cfg.init_from} from {init.config.n_decoder_layers} to "
                          f"{mcfg.n_decoder_layers} layers; the new layers start as near-identities")
        carried, why = continued_state(Path(cfg.init_from), cfg)
        if carried:
            state.update(carried, rewarm_from=carried["step"])
            log_file = Path(cfg.init_from) / TRAINING_LOG
            if d.main and log_file.exists() and not (out_dir / "metrics.jsonl").exists():
                shutil.copyfile(log_file, out_dir / "metrics.jsonl")
        if d.main:
            console.print(f"warm start from {cfg.init_from}: " + (
                f"continuing its run at step {state['step']} (epoch {state['epoch']}, batch {state['batch']}); "
                "fresh optimizer moments" if carried else f"a new schedule from step 0 ({why})"))
    if d.world > 1:  # identical start on every rank
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model

    metrics_path = out_dir / "metrics.jsonl"
    n_params = model.num_parameters()
    if d.main:
        mix = ", ".join(f"{n:,} x {w:g}" for n, w in zip(sizes, weights))
        console.print(f"model: {n_params / 1e6:.2f}M parameters, {mcfg.n_encoder_layers}+{mcfg.n_decoder_layers} layers, "
                      f"d_model={mcfg.d_model}, heads={mcfg.n_heads}; {len(data):,} training pairs ({mix} per epoch); "
                      f"world size {d.world}")
        if cfg.amp == "bf16" and not bf16_is_native(d.device):
            console.print("warning: this CPU has no native bfloat16 (AVX-512 BF16 or AMX): --amp bf16 is emulated and "
                          "runs many times slower than --amp none", style="yellow", markup=False, soft_wrap=True)

    def log(entry: dict) -> None:
        if d.main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not (d.main and console.is_terminal),
    )
    model.train()
    stop = False
    started_at = state["step"]
    # Marian-compatible models start the decoder from the pad token, whose embedding Marian and
    # CTranslate2 take to be zero; the tied output layer would otherwise train that row.
    zero_start = mcfg.decoder_start_id == mcfg.pad_id
    if zero_start:
        keep_start_embedding_zero(model)
    window_loss, window_tok, window_t = 0.0, 0, time.perf_counter()
    session_start = time.perf_counter()
    run_start = session_start - state["elapsed"]  # elapsed_s counts the run's earlier sessions too
    with progress:
        task = progress.add_task(f"train {cfg.direction}", total=cfg.max_steps, completed=state["step"], loss=float("nan"), tps=0.0)
        while not stop and state["epoch"] < cfg.max_epochs:
            subset = None if weights == [1.0] * len(weights) else epoch_indices(sizes, weights, cfg.seed, state["epoch"])
            batches = token_batches(data, cfg.max_tokens, cfg.seed, state["epoch"], subset=subset)
            batches = batches[: len(batches) - len(batches) % d.world] if d.world > 1 else batches
            mine = batches[d.rank :: d.world]
            while state["batch"] < len(mine):
                idx = mine[state["batch"]]
                src, tin, tout = (t.to(d.device) for t in collate(data, idx, mcfg.pad_id, mcfg.decoder_start_id))
                lr = lr_at(state["step"] + 1, cfg, state["rewarm_from"])
                for g in opt.param_groups:
                    g["lr"] = lr
                with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                    logits = ddp(src, tin)
                loss_sum, nll, n_tok = label_smoothed_loss(logits, tout, mcfg.pad_id, cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                (loss_sum / max(n_tok, 1)).backward()
                if cfg.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                opt.step()
                if zero_start:
                    keep_start_embedding_zero(model)
                state["step"] += 1
                state["batch"] += 1
                batch_tokens = int(src.ne(mcfg.pad_id).sum()) + n_tok
                state["tokens"] += batch_tokens * d.world
                window_loss += float(nll)
                window_tok += n_tok
                step = state["step"]
                if step % 50 == 0 or step == cfg.max_steps:
                    now = time.perf_counter()
                    tps = window_tok * 2 * d.world / max(now - window_t, 1e-9)  # approx source+target tokens/s
                    entry = {"step": step, "epoch": state["epoch"], "loss": window_loss / max(window_tok, 1), "lr": lr,
                             "tokens_per_s": round(tps, 1), "elapsed_s": round(now - run_start, 1)}
                    log(entry)
                    progress.update(task, completed=step, loss=entry["loss"], tps=tps)
                    if d.main and not console.is_terminal:
                        eta = (cfg.max_steps - step) * (now - session_start) / max(step - started_at, 1) if step > started_at else 0
                        console.print(f"step {step}/{cfg.max_steps} epoch {state['epoch']} loss {entry['loss']:.3f} "
                                      f"lr {lr:.2e} {tps:,.0f} tok/s elapsed {entry['elapsed_s']:.0f}s eta {eta/60:.0f}min")
                    window_loss, window_tok, window_t = 0.0, 0, now
                if step % cfg.eval_every == 0 or step == cfg.max_steps:
                    if d.main:
                        stop = _evaluate(model, tok, valid_sets, cfg, state, d, console, log, step)
                    if d.world > 1:
                        flag = torch.tensor([1 if stop else 0])
                        dist.broadcast(flag, 0)
                        stop = bool(flag.item())
                if step % cfg.save_every == 0 or step >= cfg.max_steps or stop:
                    state["elapsed"] = time.perf_counter() - run_start
                    if d.main:
                        save_checkpoint(out_dir, model, opt, state, cfg.keep_last)
                    if d.world > 1:
                        dist.barrier()
                if step >= cfg.max_steps or stop or (stop_after and step - started_at >= stop_after):
                    stop = True
                    break
            else:
                state["epoch"] += 1
                state["batch"] = 0
    if d.world > 1:
        drift = ddp_weight_drift(model)
        log({"step": state["step"], "ddp_world_size": d.world, "ddp_max_weight_diff": drift})
        if d.main:
            console.print(f"data-parallel check: max weight difference across {d.world} processes = {drift:g}")
    final = out_dir / "model"
    if d.main and not (stop_after and state["step"] < cfg.max_steps and state["step"] - started_at >= stop_after):
        export_average(out_dir, model, tok, cfg, state, n_params, console)
    if d.world > 1:
        dist.barrier()
    return final


def ddp_weight_drift(model: Transformer) -> float:
    """Largest absolute difference between this process's weights and rank 0's, over all ranks."""
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    drift = torch.tensor([float((flat - reference).abs().max())])
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    return float(drift)


@torch.no_grad()
def encoder_spread(model: Transformer, tok: Tokenizer, sources: list[str], device, batch_size: int = 64) -> float:
    """How much the encoder's output differs from position to position: per sentence, the standard deviation of
    each dimension across its real positions, averaged over dimensions and sentences. A collapsing encoder
    (every position the same vector) drives it towards 0 long before the outputs show it; a healthy model's
    is of the order of its vectors' per-dimension scale (docs/training.md has measured values)."""
    model.eval()
    total, count = 0.0, 0
    ids = [s for s in tok.encode_ids(sources) if len(s) > 1]
    for i in range(0, len(ids), batch_size):
        chunk = ids[i : i + batch_size]
        enc = model.encode(pad_batch(chunk, model.config.pad_id).to(device))
        mask = enc.source_mask.unsqueeze(-1).to(enc.memory.dtype)  # (B, S, 1)
        n = mask.sum(1)  # (B, 1)
        mean = (enc.memory * mask).sum(1) / n  # (B, D)
        var = (((enc.memory - mean.unsqueeze(1)) * mask) ** 2).sum(1) / (n - 1)  # (B, D), unbiased as Tensor.std
        total += float(var.sqrt().mean(-1).sum())
        count += len(chunk)
    return total / max(count, 1)


def eval_sample(pairs: list, n: int) -> list:
    """n pairs spread evenly over the whole set (all of them when n <= 0 or the set is smaller).

    Valid files are often sorted (Tatoeba's is by length), so their first n lines are the easiest n and
    score far above the full set; an even stride keeps the sample's mix of lengths and topics."""
    if n <= 0 or n >= len(pairs):
        return list(pairs)
    return [pairs[(i * len(pairs)) // n] for i in range(n)]


def _evaluate(model, tok, valid_sets, cfg, state, d, console, log, step) -> bool:
    """Loss on every validation set, BLEU/chrF (greedy) on eval_sentences spread evenly over each; early
    stopping follows the mean loss, so no single domain decides."""
    entry: dict = {"step": step, "eval_sentences": cfg.eval_sentences, "eval_sample": "even", "valid": {}}
    parts = []
    for name, pairs, encoded in valid_sets:
        loss = validation_loss(model, encoded, cfg, d.device)
        sample = eval_sample(pairs, cfg.eval_sentences)
        scores, hyps = evaluate_pairs(model, tok, sample, DecodeConfig(strategy="greedy"), batch_size=64)
        # A decoder that ignores its source (a collapsed encoder: every position the same vector) writes the
        # same few sentences whatever the input while its loss still falls; the share of distinct outputs shows it.
        distinct = len(set(hyps)) / max(len(hyps), 1)
        spread = encoder_spread(model, tok, [src for src, _ in sample], d.device)
        entry["valid"][name] = {"loss": round(loss, 4), "bleu": round(scores.bleu, 2), "chrf": round(scores.chrf, 2),
                                "distinct": round(distinct, 3), "encoder_spread": round(spread, 4)}
        parts.append(f"{name} loss {loss:.3f} BLEU {scores.bleu:.1f} chrF {scores.chrf:.1f} distinct {distinct:.0%} "
                     f"spread {spread:.3f}")
    model.train()
    val = sum(v["loss"] for v in entry["valid"].values()) / len(valid_sets)
    first = next(iter(entry["valid"].values()))
    entry.update(val_loss=round(val, 4), val_ppl=round(math.exp(val), 2), bleu=first["bleu"], chrf=first["chrf"])
    improved = state["best_val"] is None or val < state["best_val"]
    state["best_val"] = val if improved else state["best_val"]
    state["bad_evals"] = 0 if improved else state["bad_evals"] + 1
    log(entry)
    console.print(f"[bold]eval[/] step {step}: mean val loss {val:.3f}; " + "; ".join(parts)
                  + ("" if improved else f" (no improvement, {state['bad_evals']}/{cfg.patience})"))
    return state["bad_evals"] >= cfg.patience


def export_average(out_dir: Path, model: Transformer, tok: Tokenizer, cfg: TrainConfig, state: dict, n_params: int, console: Console) -> Path:
    """Average the last checkpoints into model/ (fp32 weights; `tui-translate` loads any float dtype)."""
    paths = checkpoint_dirs(out_dir)[-cfg.average_last :]
    if paths:
        avg, paths = average_checkpoints(paths, console)
        if not paths:
            raise RunError(f"{out_dir}: no readable checkpoint to export")
        model.load_state_dict(avg, strict=False)
    if model.config.decoder_start_id == model.config.pad_id:
        keep_start_embedding_zero(model)
    meta = {"name": cfg.direction, "source_lang": cfg.source_lang, "target_lang": cfg.target_lang,
            "trained_steps": state["step"], "averaged_checkpoints": [p.name for p in paths],
            "parameters": n_params, "training_seconds": round(state.get("elapsed", 0.0), 1),
            "training": {"config": cfg.to_dict(), "state": {k: state.get(k) for k in STATE_COUNTERS}}}
    dest = save_model_dir(out_dir / "model", model, tok, card=f"# {cfg.direction} (run {out_dir})\n", meta=meta)
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        write_text(dest / TRAINING_LOG, metrics.read_text(encoding="utf-8"))
    console.print(f"wrote {dest} (average of {len(paths)} checkpoints)")
    return dest
