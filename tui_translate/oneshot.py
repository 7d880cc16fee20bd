"""`tui-translate translate`: one-shot translation of arguments or standard input."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from rich.console import Console

from .render import heatmap_table
from .results import Translation, display_piece


def read_stdin_lines(stream, err: Console) -> Iterator[str | None]:
    """Lines of a binary stream as text; a line that is not valid UTF-8 is reported (with its
    number) on stderr and yielded as None, so the output keeps one line per input line."""
    for n, raw in enumerate(stream, 1):
        line = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as e:
            err.print(f"tui-translate: line {n}: invalid UTF-8 ({e.reason} at byte {e.start}); left untranslated", style="yellow", highlight=False)
            yield None


def heatmap(t: Translation, layer: int | None, head: int | None):
    """Cross-attention, target rows × source columns, for one layer/head or the average."""
    h = t.best
    att = h.attention.cross  # (L, H, T, S)
    m = att[layer] if layer is not None else att.mean(0)  # (H, T, S)
    m = m[head] if head is not None else m.mean(0)  # (T, S)
    where = f"layer {layer}" if layer is not None else "mean of layers"
    where += f", head {head}" if head is not None else ", mean of heads"
    return heatmap_table(m, [display_piece(p) for p in h.pieces], t.source_labels(), f"cross-attention ({where})")


def run_translate(args: argparse.Namespace) -> int:
    from .flags import decode_config_from_args
    from .translator import load_translator

    err = Console(stderr=True)
    config = decode_config_from_args(args)
    translator = load_translator(args.model, args.threads, args.int8)
    if args.layer is not None and not 0 <= args.layer < translator.config.n_decoder_layers:
        raise ValueError(f"--layer must be in 0..{translator.config.n_decoder_layers - 1}")
    if args.head is not None and not 0 <= args.head < translator.config.n_heads:
        raise ValueError(f"--head must be in 0..{translator.config.n_heads - 1}")
    want_attention = args.attention
    out = Console(highlight=False, soft_wrap=True)

    def emit(t: Translation | None, nbest_lines: bool = False) -> None:
        if t is None:
            print("", flush=False)
        elif args.json:
            print(json.dumps(t.to_dict(attention=want_attention), ensure_ascii=False))
        else:
            print(t.text)
            for part in (t.segments or [t]) if want_attention else []:  # one heatmap per sentence
                if part.hypotheses and part.best.attention is not None:
                    sys.stdout.flush()
                    out.print(heatmap(part, args.layer, args.head))
            if nbest_lines:
                for k, h in enumerate(t.hypotheses[1:], 2):
                    print(f"  {k}. {h.text}\t({h.score:.3f})")

    if args.text:
        # arguments: n-best lines follow the best one; standard input keeps one line per input (use --json for n-best).
        # Several sentences are translated one by one, as on standard input and in the app.
        emit(translator.translate_batch([" ".join(args.text)], config, attention=want_attention)[0], nbest_lines=True)
        return 0

    lines = list(read_stdin_lines(sys.stdin.buffer, err))
    from rich.progress import Progress

    with Progress(console=err, disable=not err.is_terminal, transient=True) as progress:
        task = progress.add_task("translating", total=len(lines))
        bs = max(1, args.batch_size)
        for start in range(0, len(lines), bs):
            chunk = lines[start : start + bs]
            texts = [c for c in chunk if c is not None]
            done = iter(translator.translate_batch(texts, config, attention=want_attention, batch_size=bs))
            for c in chunk:
                emit(None if c is None else next(done))
            sys.stdout.flush()
            progress.update(task, advance=len(chunk))
    return 0
