"""`tui-translate translate`: one-shot translation of arguments or standard input."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from collections.abc import Iterator

from rich.console import Console

from .errors import TranslateError, warn
from .render import heatmap_table
from .results import Translation, display_piece

MAX_INPUT_CHARS = 20_000  # translator.MAX_INPUT_CHARS, without importing torch here


END = object()  # end of standard input, in the reader's queue


class NonFiniteResult(TranslateError):
    """A translation's numbers are NaN or infinite (weights that overflow): never printed as bare NaN."""


def read_stdin_lines(stream, max_chars: int = MAX_INPUT_CHARS) -> Iterator[tuple[str | None, str | None]]:
    """(text, None) per line of a binary stream, or (None, warning) for a line that cannot be translated:
    not valid UTF-8, or over `max_chars` (read in bounded pieces, so a 1 GB line is never held in memory).
    The output keeps one line per input line either way."""
    max_bytes = 4 * max_chars + 2  # UTF-8 is at most 4 bytes a character, plus CR LF
    n = 0
    while True:
        raw = stream.readline(max_bytes + 1)
        if not raw:
            return
        n += 1
        if len(raw) > max_bytes:
            size = len(raw)
            while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                raw = stream.readline(1 << 20)
                size += len(raw)
            yield None, f"line {n}: {size:,} bytes, over the {max_chars:,}-character limit; left untranslated"
            continue
        line = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield None, f"line {n}: invalid UTF-8 ({e.reason} at byte {e.start}); left untranslated"
            continue
        if len(text) > max_chars:
            yield None, f"line {n}: {len(text):,} characters, over the {max_chars:,}-character limit; left untranslated"
            continue
        yield text, None


def arriving_batches(stream, batch_size: int) -> Iterator[list[tuple[str | None, str | None]]]:
    """The lines of `stream` in batches of what has arrived: a reader thread queues lines as they come,
    and each batch takes the first waiting line (blocking) plus whatever else is already there, up to
    `batch_size`. A file is read in full batches; a slow pipe gets each line translated as it comes."""
    q: queue.Queue = queue.Queue(maxsize=4 * batch_size)

    def reader() -> None:
        try:
            for item in read_stdin_lines(stream):
                q.put(item)
        except BaseException as e:  # an I/O error reading stdin reaches the main thread
            q.put(e)
        q.put(END)

    threading.Thread(target=reader, name="stdin-reader", daemon=True).start()
    while True:
        batch = [q.get()]
        while len(batch) < batch_size and batch[-1] is not END and not isinstance(batch[-1], BaseException):
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        last = batch[-1]
        if last is END or isinstance(last, BaseException):
            batch.pop()
        if batch:
            yield batch
        if isinstance(last, BaseException):
            raise last
        if last is END:
            return


def json_line(obj) -> str:
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise NonFiniteResult("the translation holds NaN or infinite numbers (the model's weights overflow); "
                              "nothing printed for it") from None


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
    from .paths import resolve_model
    from .translator import load_translator

    err = Console(stderr=True)
    config = decode_config_from_args(args)
    path = resolve_model(args.model, args.direction)
    translator = load_translator(path, args.threads, args.int8)
    if args.direction and args.model:
        have = f"{translator.source_lang}-{translator.target_lang}"
        if "?" not in have and have != args.direction:
            raise TranslateError(f"{path}: this model translates {have}, not {args.direction}")
    if args.layer is not None and not 0 <= args.layer < translator.config.n_decoder_layers:
        raise TranslateError(f"--layer must be in 0..{translator.config.n_decoder_layers - 1}")
    if args.head is not None and not 0 <= args.head < translator.config.n_heads:
        raise TranslateError(f"--head must be in 0..{translator.config.n_heads - 1}")
    want_attention = args.attention
    out = Console(highlight=False, soft_wrap=True)

    def emit(t: Translation | None, nbest_lines: bool = False) -> None:
        if t is None:
            print("", flush=False)
        elif args.json:
            print(json_line(t.to_dict(attention=want_attention)))
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

    from rich.progress import Progress

    with Progress(console=err, disable=not err.is_terminal, transient=True) as progress:
        task = progress.add_task("translating", total=None)
        for batch in arriving_batches(sys.stdin.buffer, args.batch_size):
            texts = [text for text, _ in batch if text is not None]
            done = iter(translator.translate_batch(texts, config, attention=want_attention, batch_size=args.batch_size))
            for text, problem in batch:
                if problem is not None:
                    warn(problem)
                emit(None if text is None else next(done))
            sys.stdout.flush()  # each line leaves as soon as its batch is translated: `translate` works as a filter
            progress.update(task, advance=len(batch))
    return 0
