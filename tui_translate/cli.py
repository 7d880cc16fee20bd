"""Command line: `tui-translate [app options]` opens the app; subcommands do one-shot work.

    tui-translate                      open the app on the default model
    tui-translate translate TEXT...    translate text (or stdin, line by line)
    tui-translate train ...            train a model (torchrun for several processes)
    tui-translate eval ...             sacreBLEU BLEU / chrF of a model on a TSV file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .flags import add_decode_args as _add_decode_args
from .flags import add_engine_args, decode_config_from_args
from .paths import default_model_dir

SUBCOMMANDS = ("translate", "train", "eval", "bench", "import-marian", "export", "models", "app")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the full usage of a subcommand is 20 lines of noise in a log)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


MAX_THREADS = 256  # torch / tokenizers abort the process (not an exception) when asked for 100,000 threads


def int_at_least(low: int, high: int | None = None):
    """An argparse type: an integer >= low (and <= high)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def direction_arg(text: str) -> str:
    import re

    if not re.fullmatch(r"[a-z]{2,3}-[a-z]{2,3}", text):
        raise argparse.ArgumentTypeError(f"expected SOURCE-TARGET language codes such as fr-en, got {text!r}")
    return text


def _add_model_arg(p: argparse.ArgumentParser, int8: bool = True) -> None:
    p.add_argument("--model", metavar="DIR|NAME|ID", default=None,
                   help=f"model directory, a shipped model's name such as en-fr, or a Hugging Face Hub opus-mt repo id "
                   f"owner/name[@revision], downloaded once into the Hub cache (default: {default_model_dir()})")
    if int8:
        add_engine_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tui-translate",
        description="A terminal translator where you can watch the Transformer think. "
        "With no subcommand, opens the interactive app on the default French→English model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("translate", help="translate text given as arguments, or standard input line by line",
                       description="Translate TEXT, or each line of standard input (one output line per input line; "
                       "an empty line gives an empty line).")
    p.add_argument("text", nargs="*", help="text to translate (default: read standard input)")
    _add_model_arg(p)
    p.add_argument("--direction", type=direction_arg, default=None, metavar="SRC-TGT",
                   help="translate in this direction: the shipped model for it, e.g. en-fr (with --model: checked against it)")
    _add_decode_args(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=32, metavar="B",
                   help="most lines of standard input decoded together; each line is printed as soon as it is translated (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object per input: tokens, probabilities, alternatives, scores, n-best")
    p.add_argument("--attention", action="store_true",
                   help="with --json: include the attention arrays; without: print a cross-attention heatmap")
    p.add_argument("--layer", type=int, default=None, metavar="L", help="heatmap layer (default: average over layers)")
    p.add_argument("--head", type=int, default=None, metavar="H", help="heatmap head (default: average over heads)")
    p.add_argument("--threads", type=int_at_least(0, MAX_THREADS), default=0, metavar="N", help="torch CPU threads (default: torch's choice)")

    p = sub.add_parser("train", help="train a model on a French<TAB>English TSV file",
                       description="Train a translation model. Run under `torchrun --nproc_per_node N -m tui_translate train ...` "
                       "for data-parallel training.")
    p.add_argument("--train", metavar="TSV[:WEIGHT]", nargs="+", action="extend",
                   help="training pairs, French<TAB>English; several files mix, each seen WEIGHT times per epoch "
                   "(default 1; 0.5 = a different half every epoch)")
    p.add_argument("--valid", metavar="TSV", nargs="+", action="extend",
                   help="validation pairs, French<TAB>English; several sets are all scored, selection follows their mean loss")
    p.add_argument("--no-clean", dest="clean", action="store_false",
                   help="skip the language, length-ratio, copy and duplicate filters")
    p.add_argument("--init-from", metavar="MODEL_DIR", default=None,
                   help="start from this model's weights and tokenizer (warm start; the same architecture, "
                        "or more --decoder-layers: new layers are added on top)")
    p.add_argument("--max-len", type=int, default=64, help="drop pairs longer than this many tokens on either side (default: 64)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, logs, final model in DIR/model)")
    p.add_argument("--direction", default="fr-en", choices=["fr-en", "en-fr"], help="translation direction (default: fr-en)")
    p.add_argument("--tokenizer", default=None, metavar="JSON", help="reuse this tokenizer.json instead of training one")
    p.add_argument("--vocab-size", type=int, default=8000, help="joint BPE vocabulary size (default: 8000)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--encoder-layers", type=int, default=3)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--norm", choices=["pre", "post"], default="pre", help="LayerNorm placement (default: pre)")
    p.add_argument("--positions", choices=["interleaved", "split"], default="interleaved",
                   help="sinusoid layout: interleaved (paper) or split (Marian; with --norm post the model exports to hf-marian)")
    p.add_argument("--max-positions", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=4096, help="source+target tokens per batch and process (default: 4096)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--warmup", type=int, default=1000, help="warmup steps (default: 1000)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--cooldown", type=int, default=0, metavar="N",
                   help="take the learning rate linearly to zero over the last N steps before --max-steps "
                        "(default 0: none; may be added on --resume)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-sentences", type=int, default=300, help="validation sentences translated for BLEU/chrF at each eval")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--keep-last", type=int, default=5)
    p.add_argument("--average-last", type=int, default=None,
                   help="checkpoints averaged into the exported model (default 5; with --export, overrides the run's)")
    p.add_argument("--patience", type=int, default=6, help="evaluations without validation-loss improvement before stopping")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--limit-pairs", type=int, default=0, help="use only the first N training pairs (0 = all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--marian-compatible", action="store_true",
                   help="post-norm, Marian's position layout, decoder starting from <pad> and a final logits bias: the model "
                   "then exports exactly to hf-marian / CTranslate2 (overrides --norm and --positions)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="bfloat16 autocast for the forward pass (default: none = fp32); on a CPU, only worth it with AVX-512 BF16 or AMX")
    p.add_argument("--branch-init", choices=["xavier", "deepnet"], default="xavier",
                   help="deepnet: start attention value/output and feed-forward weights scaled down (DeepNet's beta), which "
                   "keeps a deep post-norm encoder from starting with every position alike (default: xavier)")
    p.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --out")
    p.add_argument("--export", action="store_true", help="only average the newest checkpoints of --out into --out/model and exit")

    p = sub.add_parser("eval", help="sacreBLEU BLEU and chrF of a model on a French<TAB>English file",
                       description="Translate the source column of a TSV and score it against the reference column "
                       "with sacreBLEU (default 13a tokenisation); prints the signatures and sentences/s.")
    p.add_argument("tsv", metavar="TSV", help="French<TAB>English pairs")
    _add_model_arg(p)
    _add_decode_args(p)
    p.add_argument("--direction", default=None, choices=["fr-en", "en-fr"],
                   help="columns to score (default: the model's own direction); without --model, also picks the shipped model for it")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--limit", type=int_at_least(0), default=0, help="score only the first N pairs (0 = all)")
    p.add_argument("--output", metavar="FILE", default=None, help="also write the hypotheses, one per line")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--threads", type=int_at_least(0, MAX_THREADS), default=0)

    p = sub.add_parser("bench", help="measure decoding speed (and a training step) against peer engines",
                       description="Interleaved speed measurement on the same sentences: this project's fast and capture paths, "
                       "and transformers / CTranslate2 on the exported weights when installed (else reported as skipped).")
    p.add_argument("--input", "--tsv", dest="input", required=True, metavar="FILE",
                   help="sentences to decode: French<TAB>English pairs (the model's source column) or a text file with one "
                   "sentence per line in the source language")
    _add_model_arg(p, int8=False)
    p.add_argument("--sentences", type=int_at_least(1), default=200, metavar="N", help="sentences to decode (default: 200)")
    p.add_argument("--threads", type=int_at_least(1, MAX_THREADS), default=2, metavar="N", help="torch CPU threads (default: 2)")
    p.add_argument("--batch-sizes", type=int_at_least(1), nargs="+", default=[1, 32], metavar="B", help="batch sizes (default: 1 32)")
    p.add_argument("--block", type=int_at_least(1), default=10, metavar="N",
                   help="sentences each engine decodes in a row before the next takes over (default: 10; 1 = every sentence)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers as JSON to FILE")
    p.add_argument("--no-peers", action="store_true", help="measure only this project's engine")
    p.add_argument("--no-app", action="store_true", help="skip the app latency measurement")
    p.add_argument("--no-profile", action="store_true", help="skip the where-the-time-goes profile")
    p.add_argument("--no-live", action="store_true", help="skip the live-mode replay (a sentence typed key by key, with and "
                   "without the previous translation as a draft)")

    p = sub.add_parser("import-marian", help="convert a Hugging Face Marian (opus-mt) directory into a model directory",
                       description="Convert SRC_DIR (config.json, model.safetensors or pytorch_model.bin, source.spm, target.spm, "
                       "vocab.json) into OUT_DIR. `--model SRC_DIR` also loads such a directory directly. Needs the [marian] extra.")
    p.add_argument("src", metavar="SRC_DIR", help="Marian directory")
    p.add_argument("out", metavar="OUT_DIR", help="model directory to write (absent or empty)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty OUT_DIR: replaces only the model directory's own files, keeps every other file")

    p = sub.add_parser("export", help="export a model directory to another format",
                       description="Export MODEL_DIR. hf-marian: a directory transformers.MarianMTModel / MarianTokenizer and "
                       "CTranslate2's converter load (post-norm models with Marian's position layout).")
    p.add_argument("--format", choices=["hf-marian"], default="hf-marian", help="output format (default: hf-marian)")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory")
    p.add_argument("out", metavar="OUT_DIR", help="directory to write (absent or empty)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty OUT_DIR: replaces only the exported format's files, keeps every other file")

    _add_models_parser(sub)

    p = sub.add_parser("app", help="open the interactive app (the default when no command is given)")
    _add_app_args(p)
    return parser


def _add_app_args(p: argparse.ArgumentParser) -> None:
    _add_model_arg(p)
    p.add_argument("--direction", type=direction_arg, default=None, metavar="SRC-TGT",
                   help="start on the shipped model for this direction, e.g. en-fr")
    p.add_argument("--clean", action="store_true", help="start with an empty transcript and history (nothing is loaded or saved)")
    p.add_argument("--threads", type=int_at_least(0, MAX_THREADS), default=0, metavar="N",
                   help="torch CPU threads for decoding (default: all cores but one, left to the interface)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["app", *argv]
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("translate", "eval", "bench"):
            from .hub import cli_resolve

            args.model = cli_resolve(args.model)  # a Hub repo id -> its cached snapshot, downloaded with a progress bar
        if args.command == "models":
            return _run_models(args)
        if args.command == "translate":
            from .oneshot import run_translate

            return run_translate(args)
        if args.command == "train":
            return _run_train(args)
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "bench":
            return _run_bench(args)
        if args.command == "import-marian":
            from .hub import cli_resolve
            from .marian import import_marian

            print(import_marian(cli_resolve(args.src), args.out, force=args.force))
            return 0
        if args.command == "export":
            from .marian import export_marian

            print(export_marian(args.model_dir, args.out, force=args.force))
            return 0
        return _run_app(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # one line, no traceback, for expected failures
        from .errors import is_user_error, one_line

        if is_user_error(e):
            print(f"tui-translate: error: {one_line(e)}", file=sys.stderr)
            return 2
        raise


def _run_app(args: argparse.Namespace) -> int:
    """Open the app. The translator is created by a loader the app calls in a worker thread,
    so the first frame paints before torch is imported."""
    from .checkpoint import ModelLoadError
    from .hub import list_models, parse_repo_id
    from .paths import available_models, data_dir, resolve_model
    from .ui.app import TranslateApp
    from .ui.store import Store

    hub_id = parse_repo_id(args.model)  # a Hub repo id stays an id: the loader resolves (downloads) it in its worker
    if hub_id:
        model = Path(str(hub_id))
    else:
        model = resolve_model(args.model, args.direction).resolve()
        if not model.is_dir():  # said here, in one line, rather than by a model that never loads
            raise ModelLoadError(f"{model}: not a model directory (does not exist or is not a directory)")
    models = [p.resolve() for p in available_models()]

    def loader(path: Path):
        from .hub import resolve_model_arg
        from .translator import interactive_threads, load_translator

        def announce(line: str) -> None:
            app.call_from_thread(app.notify, line[:1].upper() + line[1:] + "…", timeout=10)

        local = resolve_model_arg(str(path), announce=announce)
        return load_translator(local, threads=args.threads or interactive_threads(), int8=args.int8)

    store = Store(None if args.clean else data_dir())
    app = TranslateApp(loader, model, models, store=store, export_dir=data_dir() / "exports",
                       remember_model=not (args.model or args.direction), catalog=list_models)
    app.run()
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from . import native
    from .bench import run_bench
    from .data import DataError, read_sources
    from .paths import resolve_model
    from .translator import load_translator

    torch.set_num_threads(args.threads)
    native_build_error = native.build_now()  # measured as users run it once the background build is done
    translator = load_translator(resolve_model(args.model))
    if native_build_error:
        Console(stderr=True).print(f"[yellow]{native_build_error}[/]")
    direction = f"{translator.source_lang}-{translator.target_lang}"
    texts = read_sources(args.input, direction if direction in ("fr-en", "en-fr") else "fr-en", args.sentences)
    if not texts:
        raise DataError(f"{args.input}: no sentences to decode")
    run_bench(translator, texts, Console(), tuple(args.batch_sizes), args.json, peers=not args.no_peers, block=args.block,
              app_check=not args.no_app, profile=not args.no_profile, live=not args.no_live)
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from .config import ConfigError, TrainConfig
    from .train import export_run, train

    if args.export:
        export_run(args.out, average_last=args.average_last)
        return 0
    if not args.train or not args.valid:
        raise ConfigError("train: --train and --valid are required (unless --export)")

    model = {"d_model": args.d_model, "n_heads": args.heads, "n_encoder_layers": args.encoder_layers,
             "n_decoder_layers": args.decoder_layers, "d_ff": args.d_ff, "dropout": args.dropout,
             "norm_placement": args.norm, "max_positions": args.max_positions, "position_layout": args.positions}
    if args.marian_compatible:
        model.update(norm_placement="post", position_layout="split", decoder_start_id="pad", final_logits_bias=True)
    cfg = TrainConfig(train=tuple(args.train), valid=tuple(args.valid), out_dir=args.out, direction=args.direction,
                      tokenizer=args.tokenizer, clean=args.clean, init_from=args.init_from, max_len=args.max_len,
                      vocab_size=args.vocab_size, model=model, max_tokens=args.max_tokens, lr=args.lr, warmup_steps=args.warmup,
                      label_smoothing=args.label_smoothing, clip_norm=args.clip_norm, max_steps=args.max_steps,
                      cooldown_steps=args.cooldown,
                      max_epochs=args.max_epochs, eval_every=args.eval_every, eval_sentences=args.eval_sentences,
                      save_every=args.save_every, keep_last=args.keep_last,
                      patience=args.patience, seed=args.seed, threads=args.threads, limit_pairs=args.limit_pairs, amp=args.amp,
                      branch_init=args.branch_init,
                      # only a given --average-last overrides TrainConfig's default
                      **({} if args.average_last is None else {"average_last": args.average_last}))
    train(cfg, resume=args.resume, device=args.device)
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from . import native
    from .data import DataError, read_pairs
    from .loading import load_model
    from .evaluate import evaluate_pairs
    from .paths import resolve_model
    from .translator import Translator, freeze_startup_objects
    from .quality import numbers_kept, repetition_rate

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(resolve_model(args.model, args.direction))
    native.start_build()  # in the background: batches after it is ready use the compiled step (same results)
    translator = Translator(loaded, int8=args.int8)  # int8 is the default (flags.INT8_DEFAULT); --fp32 keeps float32
    engine = "int8" if args.int8 else "fp32"
    freeze_startup_objects()
    direction = args.direction or f"{loaded.meta.get('source_lang', 'fr')}-{loaded.meta.get('target_lang', 'en')}"
    pairs = read_pairs(args.tsv, direction, args.limit)
    if pairs and "\ufeff" in pairs[0][0] + pairs[0][1]:  # a byte-order mark (Windows editors) is not part of the first sentence
        pairs[0] = (pairs[0][0].lstrip("\ufeff"), pairs[0][1].lstrip("\ufeff"))
    if not pairs:
        raise DataError(f"{args.tsv}: no French<TAB>English pairs to score")
    err = Console(stderr=True)
    with Progress(console=err, disable=not err.is_terminal, transient=True) as progress:
        task = progress.add_task("translating", total=len(pairs))
        scores, hyps = evaluate_pairs(translator, None, pairs, decode_config_from_args(args), args.batch_size,
                                      progress=lambda n: progress.update(task, completed=n))
    if args.output:
        from .atomic import write_text

        write_text(args.output, "".join(h + "\n" for h in hyps))
    kept, n_numbers = numbers_kept([src for src, _ in pairs], hyps)
    repeats = repetition_rate(hyps)
    if args.json:
        print(json.dumps({"model": str(loaded.path), "direction": direction, "engine": engine, "tsv": args.tsv, **scores.to_dict(),
                          "numbers_kept": round(kept, 4), "number_sentences": n_numbers,
                          "repetition_rate": round(repeats, 4)}, allow_nan=False))
    else:
        print(f"model      {loaded.path}  ({direction}, {decode_config_from_args(args).describe()}, {engine} weights)")
        print(f"sentences  {scores.sentences}  in {scores.seconds:.1f}s  ({scores.sentences_per_second:.1f} sentences/s, {torch.get_num_threads()} threads)")
        print(f"BLEU       {scores.bleu:.2f}   {scores.bleu_signature}")
        print(f"chrF       {scores.chrf:.2f}   {scores.chrf_signature}")
        print(f"numbers    {kept:.1%} of {n_numbers} sources with digits keep every digit run")
        print(f"repeats    {repeats:.2%} of outputs repeat a word 3+ times in a row")
    return 0


def _add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="list, download (pull) and remove models: shipped, converted and Hugging Face Hub ones",
                       description="Without an action: list the shipped and converted model directories and the Marian "
                       "(opus-mt) models in the Hugging Face Hub cache, with direction, size and source. `pull ID` downloads "
                       "(or updates) owner/name[@revision]; `rm ID` removes it from the cache. Needs the [hub] extra to download.")
    actions = p.add_subparsers(dest="models_action", metavar="ACTION")
    p.add_argument("--json", action="store_true", help="list as JSON lines")
    listing = actions.add_parser("list", help="list the models (the default)")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="list as JSON lines")
    pull = actions.add_parser("pull", help="download or update a Hub model into the Hugging Face cache")
    pull.add_argument("id", metavar="ID", help="Hub repo id, owner/name[@revision] (e.g. Helsinki-NLP/opus-mt-de-en)")
    rm = actions.add_parser("rm", help="remove a Hub model (all its cached revisions) from the Hugging Face cache")
    rm.add_argument("id", metavar="ID", help="Hub repo id, owner/name")


def _run_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import hub

    if args.models_action == "pull":
        ref = hub.parse_repo_id(args.id)
        if ref is None:
            raise hub.HubError(f"{args.id}: not a Hugging Face Hub repo id (owner/name[@revision])")
        with hub.rich_progress() as (progress, announce):
            path = hub.download(ref, progress, announce)
        pair = hub.language_pair(path)
        print(f"{ref}  {'-'.join(pair) if pair else '?'}  {path}")
        return 0
    if args.models_action == "rm":
        freed = hub.remove(args.id)
        print(f"removed {args.id} from the Hugging Face cache ({freed / 1e6:.1f} MB freed)")
        return 0
    entries = hub.list_models()
    if args.json:
        for e in entries:
            print(json.dumps({"model": e.spec, "direction": e.direction, "size": e.size, "source": e.source,
                              "complete": e.complete, "path": str(e.path)}, ensure_ascii=False))
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("MODEL", "DIRECTION", "SIZE", "SOURCE", "PATH"):
        table.add_column(col, justify="right" if col == "SIZE" else "left", no_wrap=col != "PATH")
    for e in entries:
        source = e.source if e.complete else f"{e.source}, incomplete: models pull {e.spec}"
        table.add_row(e.spec if e.source == "hub" else e.path.name, e.direction,
                      f"{e.size / 1e6:.1f} MB", source, str(e.path))
    Console(highlight=False, soft_wrap=True).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
