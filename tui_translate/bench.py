"""`tui-translate bench`: decoding speed (and one training step) measured in one run, interleaved.

Engines on identical weights: this project's fast path (no attention kept), its capture path
(all attention kept), its int8 mode (weights quantized per output channel), and, when installed,
Hugging Face `transformers` generate() and CTranslate2 (float32 and int8) on the model exported to
Marian format (skipped, with the reason, otherwise). Each library runs in a worker process of its
own; the parent hands every engine the same blocks of sentences in turn and collects the timings.
Strategies greedy and beam 5; batch sizes 1 and 32. Batch 1 reports median and p90 ms per
sentence and, for the capture path (the app's: it streams), the time to the first streamed token; the
fast and int8 paths decode as `translate` and `eval` do, for the result only; batch 32 reports ms per
sentence. Live mode: a
12-word sentence typed key by key, every prefix translated as the live preview does, with and
without the previous translation as a draft (`live_mode`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from . import native
from .atomic import write_text
from .config import DecodeConfig
from .engine import InferenceEngine
from .flags import INT8_DEFAULT
from .search import SearchStep, pad_batch, search
from .translator import Translator, freeze_startup_objects

# Beam search stops once 5 hypotheses have finished in every engine: CTranslate2's rule (patience 1),
# transformers' early_stopping=True and this project's early_stopping, so all do the same amount of work.
STRATEGIES = {"greedy": DecodeConfig(strategy="greedy"),
              "beam5": DecodeConfig(strategy="beam", beam_size=5, length_penalty=0.6, early_stopping=True)}


@dataclass
class Measure:
    engine: str
    strategy: str
    batch: int
    seconds: list[float] = field(default_factory=list)  # per call (one sentence at batch 1, one batch otherwise)
    sizes: list[int] = field(default_factory=list)  # sentences per call
    tokens: list[int] = field(default_factory=list)  # output tokens per call
    first_token: list[float] = field(default_factory=list)

    def fit(self) -> tuple[float, float] | None:
        """Batch 1: least-squares ms per sentence = fixed + per_token × output tokens, as (per_token, fixed) ms;
        separates the per-step cost of decoding from the per-sentence cost (encoder, setup)."""
        if self.batch != 1 or len(set(self.tokens)) < 2:
            return None
        slope, intercept = statistics.linear_regression(self.tokens, [1000 * s for s in self.seconds])
        return round(slope, 3), round(intercept, 2)

    def row(self) -> dict:
        per_sentence = sorted(1000 * s / n for s, n in zip(self.seconds, self.sizes))
        total = sum(self.seconds)
        fit = self.fit()
        return {
            "engine": self.engine, "strategy": self.strategy, "batch": self.batch,
            "median_ms_per_sentence": round(statistics.median(per_sentence), 2),
            "p90_ms_per_sentence": round(per_sentence[min(len(per_sentence) - 1, int(0.9 * len(per_sentence)))], 2),
            "target_tokens_per_s": round(sum(self.tokens) / total, 1) if total else None,
            "first_token_ms": round(statistics.median(self.first_token) * 1000, 2) if self.first_token else None,
            "sentences": sum(self.sizes),
            "ms_per_output_token": fit[0] if fit else None,
            "ms_fixed_per_sentence": fit[1] if fit else None,
        }


@dataclass
class Engine:
    """prepare(texts) turns sentences into the engine's input (not timed: every engine is timed
    from token ids to output token ids); run(inputs, config) -> (target tokens, seconds to the
    first streamed token or None)."""

    prepare: Callable[[list[str]], object]
    run: Callable[[object, DecodeConfig], tuple[int, float | None]]


def _ours(translator: Translator, attention: bool, int8: bool = False, rules: bool = False) -> Engine:
    """rules: decode with the output rules `translate` and `eval` apply by default (constraints.py), built from the
    texts inside the timing; the other engines, like the peers, run the plain search."""
    model, tok = translator.model, translator.tokenizer
    # the translator's engine when it has this precision, else one of the other precision on the same weights
    engine = translator.engine if translator.int8 == int8 else InferenceEngine(model, "int8" if int8 else "fp32")

    def run(prepared: tuple[torch.Tensor, list[str]], config: DecodeConfig) -> tuple[int, float | None]:
        src, texts = prepared
        start = time.perf_counter()
        ruled = [translator.rules(text, config) for text in texts] if rules else None
        first = None
        final = None
        for event in search(engine, src, config, need_weights=attention, stream=attention, rules=ruled):
            if first is None and isinstance(event, SearchStep):
                first = time.perf_counter() - start
            final = event
        return sum(len(h[0].tokens) for h in final.hypotheses), first

    return Engine(lambda texts: (pad_batch(tok.encode_ids(texts), model.config.pad_id), texts), run)


def _export_peers(translator: Translator) -> tuple[dict[str, tuple], dict[str, str]]:
    """Export the model for transformers and CTranslate2 when they are installed.

    Returns (engine name -> the spec its worker builds the engine from, skipped engine -> reason)."""
    specs: dict[str, tuple] = {}
    try:
        from .marian import export_marian
    except ImportError as e:
        return specs, {"transformers": f"Marian export unavailable ({e})", "ctranslate2": f"Marian export unavailable ({e})"}
    try:
        import transformers
    except ImportError:
        return specs, {"transformers": "not installed (pip install 'tui-translate[bench]')",
                       "ctranslate2": "needs transformers for the conversion (pip install 'tui-translate[bench]')"}
    import tempfile
    import warnings

    _quiet_transformers(transformers)
    c = translator.config
    if c.norm_placement != "post" or c.position_layout != "split":
        why = (f"this model ({c.norm_placement}-norm, {c.position_layout} positions) has no exact Marian equivalent; "
               "train with --marian-compatible to compare on identical weights")
        return specs, {"transformers": why, "ctranslate2": why}
    tmp = Path(tempfile.mkdtemp(prefix="tui-translate-bench-"))
    hf_dir = export_marian(translator.path, tmp / "hf")
    specs["transformers"] = ("transformers", str(hf_dir))
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        return specs, {"ctranslate2": "not installed (pip install 'tui-translate[bench]')"}
    threads = torch.get_num_threads()
    for quant in ("float32", "int8"):
        out_dir = tmp / f"ct2-{quant}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter loads the tokenizer, which asks for sacremoses
            TransformersConverter(str(hf_dir)).convert(str(out_dir), quantization=quant, force=True)
        specs[f"ctranslate2-{quant}"] = ("ctranslate2", str(out_dir), str(hf_dir), threads)
        if threads > 1:
            # CTranslate2's thread pool can cost more than it gives on small models (10x slower at 2 threads
            # than at 1 on a 2-core Xeon VM): its one-thread engine too, so that its best is what is compared
            specs[f"ctranslate2-{quant}-1t"] = ("ctranslate2", str(out_dir), str(hf_dir), 1)
    return specs, {}


def _quiet_transformers(transformers) -> None:
    """No per-load progress bars or info lines from transformers in the bench's output."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


_LOADED: dict[str, Translator] = {}  # per worker process


def _build_engine(spec: tuple) -> Engine:
    """An engine from its spec, inside the worker process that times it."""
    kind = spec[0]
    if kind == "ours":
        _, path, attention, int8, rules = spec
        from .translator import load_translator

        if path not in _LOADED:  # fast, capture and int8 share one model, as they do in the app
            _LOADED[path] = load_translator(path)
        return _ours(_LOADED[path], attention, int8, rules)
    if kind == "transformers":
        import transformers
        from transformers import MarianMTModel, MarianTokenizer

        _quiet_transformers(transformers)
        hf_model = MarianMTModel.from_pretrained(spec[1]).eval()
        hf_model.generation_config.max_length = None  # max_new_tokens is given per call
        hf_tok = MarianTokenizer.from_pretrained(spec[1])

        def hf(enc, config: DecodeConfig) -> tuple[int, None]:
            beam = config.strategy == "beam"
            kw = dict(num_beams=config.beam_size if beam else 1, do_sample=False,
                      max_new_tokens=int(enc["input_ids"].shape[1] * 1.5 + 10))
            if beam:
                kw.update(early_stopping=True, length_penalty=config.length_penalty)
            with torch.inference_mode():
                out = hf_model.generate(**enc, **kw)
            return int(out.ne(hf_model.config.pad_token_id).sum()), None

        return Engine(lambda texts: hf_tok(texts, return_tensors="pt", padding=True), hf)
    if kind == "ctranslate2":
        import ctranslate2
        from transformers import MarianTokenizer

        ct = ctranslate2.Translator(spec[1], device="cpu", intra_threads=spec[3], inter_threads=1)
        hf_tok = MarianTokenizer.from_pretrained(spec[2])

        def run(toks: list[list[str]], config: DecodeConfig) -> tuple[int, None]:
            res = ct.translate_batch(toks, beam_size=config.beam_size if config.strategy == "beam" else 1,
                                     length_penalty=config.length_penalty, max_batch_size=len(toks),
                                     min_decoding_length=0, max_decoding_length=max(len(x) for x in toks) * 3 // 2 + 10)
            return sum(len(r.hypotheses[0]) + 1 for r in res), None

        return Engine(lambda texts: [hf_tok.convert_ids_to_tokens(hf_tok(t)["input_ids"]) for t in texts], run)
    raise ValueError(f"unknown engine kind {kind!r}")


def _worker(conn, specs: dict[str, tuple], threads: int) -> None:
    """One process per library: builds its engines, then times the chunks it is sent until told to stop.
    Requests: (engine, strategy, chunks) -> [(seconds, sentences, target tokens, first-token seconds | None)]."""
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    try:
        engines = {name: _build_engine(spec) for name, spec in specs.items()}
        freeze_startup_objects()  # every library's objects, as the CLI and the app do with theirs
        conn.send(("ready", None))
    except Exception as e:  # reported by the parent as a skipped engine
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while (request := conn.recv()) is not None:
        name, strategy, chunks = request
        engine, cfg = engines[name], STRATEGIES[strategy]
        out = []
        for chunk in chunks:
            inputs = engine.prepare(chunk)
            start = time.perf_counter()
            n_tok, first = engine.run(inputs, cfg)
            out.append((time.perf_counter() - start, len(chunk), n_tok, first))
        conn.send(out)


class _Workers:
    """Engines grouped by library, each group in its own (spawned) process, so that no library's thread
    pool or allocator shares a process with another's: on a 2-core VM, one library's OpenMP threads still
    spinning after its call slow the next library down by up to 3x when they share a process."""

    def __init__(self, groups: dict[str, dict[str, tuple]], threads: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.procs, self.conns, self.group_of, self.failed = [], {}, {}, {}
        for group, specs in groups.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, specs, threads), daemon=True)
            proc.start()
            self.procs.append(proc)
            status, detail = parent.recv()
            if status == "ready":
                self.conns[group] = parent
                self.group_of.update({name: group for name in specs})
            else:
                self.failed.update({name: detail for name in specs})

    @property
    def engines(self) -> list[str]:
        return list(self.group_of)

    def run(self, name: str, strategy: str, chunks: list[list[str]]) -> list[tuple]:
        conn = self.conns[self.group_of[name]]
        conn.send((name, strategy, chunks))
        return conn.recv()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def training_throughput(translator: Translator, steps: int = 10, batch: int = 96, length: int = 16) -> dict:
    """Tokens/s of one optimiser step: this project's model vs torch.nn.Transformer of the same size."""
    from .model import Transformer

    c = translator.config
    torch.manual_seed(0)
    ours = Transformer(c).train()
    ref_core = torch.nn.Transformer(d_model=c.d_model, nhead=c.n_heads, num_encoder_layers=c.n_encoder_layers,
                                    num_decoder_layers=c.n_decoder_layers, dim_feedforward=c.d_ff, dropout=c.dropout,
                                    batch_first=True, norm_first=c.norm_placement == "pre").train()
    embed = torch.nn.Embedding(c.vocab_size, c.d_model)
    out_proj = torch.nn.Linear(c.d_model, c.vocab_size, bias=False)
    out_proj.weight = embed.weight
    src = torch.randint(4, c.vocab_size, (batch, length))
    tgt = torch.randint(4, c.vocab_size, (batch, length))
    causal = torch.nn.Transformer.generate_square_subsequent_mask(length)

    def ref_forward():
        h = ref_core(embed(src), embed(tgt), tgt_mask=causal, tgt_is_causal=True)
        return out_proj(h)

    engines = {"tui-translate": (list(ours.parameters()), lambda: ours(src, tgt)),
               "torch.nn.Transformer": ([*ref_core.parameters(), *embed.parameters()], ref_forward)}
    optimizers = {name: torch.optim.Adam(params, lr=1e-4) for name, (params, _) in engines.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for i in range(steps + 2):  # interleaved, so both see the same machine conditions; 2 warm-up steps
        for name, (_, forward) in list(engines.items())[:: 1 if i % 2 else -1]:  # each goes first every other step
            start = time.perf_counter()
            logits = forward()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c.vocab_size), tgt.reshape(-1))
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    results = {name: round(2 * batch * length / statistics.median(t), 1) for name, t in times.items()}
    return results


# Live mode's replayed sentences, 12 words each, by the model's source language (French for other languages).
LIVE_SENTENCES = {"fr": "Je voudrais réserver une table pour deux personnes ce soir au restaurant.",
                  "en": "I would like to book a table for two people tonight, please."}


def live_mode(translator: Translator, sentence: str | None = None, replays: int = 5, config: DecodeConfig = DecodeConfig()) -> dict:
    """Live mode replayed: `sentence` typed key by key, each prefix translated as the live preview translates it
    (the app's default strategy, no attention kept, the translator's engine) once the previous translation is
    done, with the previous translation as the draft, and without. Reports the median, over the replays, of the
    time from the last keystroke to its final translation (the debounce before the request is left out), and of
    every keystroke's. The two variants alternate from replay to replay after one warm-up replay of each."""
    sentence = sentence or LIVE_SENTENCES.get(translator.source_lang, LIVE_SENTENCES["fr"])
    prefixes = [sentence[:i] for i in range(1, len(sentence) + 1) if sentence[:i].strip()]  # live mode skips blank text
    last: dict[str, list[float]] = {"draft": [], "plain": []}
    every: dict[str, list[float]] = {"draft": [], "plain": []}
    outputs: dict[str, list[str]] = {}
    for replay in range(replays + 1):  # replay 0 warms up
        for variant in ("draft", "plain") if replay % 2 else ("plain", "draft"):
            draft, times, texts = None, [], []
            for text in prefixes:
                start = time.perf_counter()
                for event in translator.stream(text, config, attention=False, draft=draft if variant == "draft" else None):
                    pass
                times.append(time.perf_counter() - start)
                draft = event.best.token_ids
                texts.append(event.text)
            outputs[variant] = texts
            if replay:
                last[variant].append(times[-1])
                every[variant].extend(times)
    ms = lambda xs: round(1000 * statistics.median(xs), 2)  # noqa: E731
    return {"sentence": sentence, "words": len(sentence.split()), "keystrokes": len(prefixes), "replays": replays,
            "engine": translator.engine.precision, "strategy": config.describe(),
            "last_key_ms_with_draft": ms(last["draft"]), "last_key_ms_without_draft": ms(last["plain"]),
            "per_key_ms_with_draft": ms(every["draft"]), "per_key_ms_without_draft": ms(every["plain"]),
            "same_translations": outputs["draft"] == outputs["plain"]}


def app_latency(model_path: Path, text: str) -> dict:
    """Headless app: time to the first painted frame, and keystroke handling while a beam search decodes.
    The app decodes with the threads it uses when launched (`interactive_threads`)."""
    import asyncio
    import tempfile

    from textual import events
    from textual.widgets import Input

    from .translator import interactive_threads, load_translator
    from .ui.app import TranslateApp
    from .ui.store import Store

    threads = torch.get_num_threads()

    def loader(path: Path) -> Translator:
        return load_translator(path, threads=interactive_threads(), int8=INT8_DEFAULT)  # the app's own engine

    async def measure() -> dict:
        start = time.perf_counter()
        app = TranslateApp(loader, model_path, [model_path], store=Store(None), export_dir=Path(tempfile.mkdtemp()),
                           decode_config=DecodeConfig(strategy="beam", beam_size=5),
                           detect_language=False)  # its warm-up would compete with the keystrokes measured
        async with app.run_test(size=(100, 30)) as pilot:
            first_frame = time.perf_counter() - start
            while app.translator is None:
                await pilot.pause(0.01)
            loaded = time.perf_counter() - start
            prompt = app.query_one("#prompt")
            keys = []
            for _ in range(3):
                prompt.value = text
                prompt.focus()
                n = len(app.exchanges)
                # posted, not pilot.press: press waits until the app is idle, by when a fast engine has decoded it all
                prompt.post_message(Input.Submitted(prompt, text))
                t0 = time.perf_counter()
                while len(app.exchanges) == n and time.perf_counter() - t0 < 5:
                    await asyncio.sleep(0.0005)
                while any(e.status == "running" for e in app.exchanges):
                    # a key event posted to the input, timed until the input shows it (not until the app is idle)
                    before = prompt.value
                    t0 = time.perf_counter()
                    prompt.post_message(events.Key("x", "x"))
                    while prompt.value == before and time.perf_counter() - t0 < 5:
                        await asyncio.sleep(0.0005)
                    keys.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.02)
                prompt.value = ""
        keys.sort()
        return {"first_frame_ms": round(first_frame * 1000, 1), "model_ready_ms": round(loaded * 1000, 1),
                "decoding_threads": app.translator.threads if app.translator else None,
                "keystroke_while_decoding_median_ms": round(statistics.median(keys) * 1000, 2) if keys else None,
                "keystroke_while_decoding_p99_ms": round(keys[int(0.99 * (len(keys) - 1))] * 1000, 2) if keys else None,
                "keystroke_while_decoding_max_ms": round(keys[-1] * 1000, 2) if keys else None, "keystrokes": len(keys)}

    try:
        return asyncio.run(measure())
    finally:
        torch.set_num_threads(threads)


# torch.profiler op names (namespace stripped) -> where the time of a decoding step goes
_CATEGORIES = {
    "matrix products": {"addmm", "mm", "_linear_pointwise", "linear", "bmm", "baddbmm", "matmul", "embedding",
                        "_weight_int8pack_mm", "linear_dynamic"},
    "attention kernels": {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu", "softmax", "_softmax",
                          "exp", "amax", "sum", "div", "masked_fill"},
    "layer norm, activations": {"layer_norm", "native_layer_norm", "relu", "clamp_min", "gelu", "silu"},
    "elementwise (residuals, scaling)": {"add", "mul", "sub"},
    "search: top-k, log-softmax, picks": {"topk", "log_softmax", "_log_softmax", "argmax", "gather", "index", "isfinite", "eq",
                                          "where", "multinomial", "sort", "cumsum", "nonzero", "floor_divide", "remainder"},
}
_PLUMBING = "tensor plumbing: views, copies, allocation"


def profile_decoding(translator: Translator, texts: list[str], console: Console) -> dict:
    """Where the time of batch-1 decoding goes: torch.profiler's self time of every op, grouped, against
    the wall time of the same decoding run without the profiler; 'Python between ops' is the rest
    (the search loop, module calls, dispatch). The profiler adds a little to each op, so the shares
    are approximate."""
    from torch.profiler import ProfilerActivity, profile

    model, tok = translator.model, translator.tokenizer
    report = {}
    for strategy, cfg in STRATEGIES.items():
        inputs = [pad_batch(tok.encode_ids([t]), model.config.pad_id) for t in texts]
        for src in inputs[:3]:  # warm-up
            for _ in search(translator.engine, src, cfg):
                pass
        def decode_all() -> tuple[float, int]:
            start, steps = time.perf_counter(), 0
            for src in inputs:
                for event in search(translator.engine, src, cfg):
                    pass
                steps += event.steps
            return time.perf_counter() - start, steps

        wall, steps = decode_all()  # wall time without the profiler, which slows every op call down
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode_all()
        # once more after the profiled pass: the faster of the two, so a slow spell of the machine during one
        # unprofiled pass does not show up as "Python between ops"
        wall = min(wall, decode_all()[0])
        groups = {name: 0.0 for name in (*_CATEGORIES, _PLUMBING)}
        for e in prof.key_averages():
            op = e.key.split("::")[-1]
            name = next((n for n, ops in _CATEGORIES.items() if op in ops), _PLUMBING)
            groups[name] += e.self_cpu_time_total / 1e6
        groups["Python between ops"] = max(0.0, wall - sum(groups.values()))
        # When the profiler's per-op cost pushes the ops' total past the unprofiled wall time, the shares
        # are taken of that total instead (Python between ops then shows as 0).
        whole = max(wall, sum(groups.values()))
        report[strategy] = {"ms_per_sentence": round(1000 * wall / len(texts), 2), "ms_per_step": round(1000 * wall / max(steps, 1), 3),
                            "share": {k: round(v / whole, 3) for k, v in groups.items()}}
        table = Table(title=f"where the time goes · {strategy} · batch 1 · {len(texts)} sentences · "
                            f"{report[strategy]['ms_per_step']:.2f} ms per decoding step")
        table.add_column("part")
        table.add_column("ms / sentence", justify="right")
        table.add_column("share", justify="right")
        for k, v in sorted(groups.items(), key=lambda kv: -kv[1]):
            table.add_row(k, f"{1000 * v / len(texts):.2f}", f"{100 * v / whole:.0f}%")
        console.print(table)
    return report


def run_bench(translator: Translator, texts: list[str], console: Console, batch_sizes=(1, 32), json_path: str | None = None,
              peers: bool = True, app_check: bool = True, profile: bool = True, block: int = 10, live: bool = True) -> dict:
    """block: sentences one engine decodes in a row before the next engine takes over (at least one batch).
    Engines then run with their weights in cache, as when translating a document; block=1 interleaves
    every sentence, so each engine starts from caches the previous engine filled."""
    ours = str(translator.path)
    groups: dict[str, dict[str, tuple]] = {"ours": {"ours-fast": ("ours", ours, False, False, False),
                                                    "ours-capture": ("ours", ours, True, False, False),
                                                    "ours-int8": ("ours", ours, False, True, False),
                                                    "ours-int8-rules": ("ours", ours, False, True, True)}}
    skipped: dict[str, str] = {}
    if peers:
        specs, skipped = _export_peers(translator)
        # every peer engine in a worker of its own (CTranslate2's thread settings are process-wide)
        groups.update({name: {name: spec} for name, spec in specs.items()})
    workers = _Workers(groups, torch.get_num_threads())
    skipped.update(workers.failed)
    for name, why in skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {why}")
    measures: dict[tuple, Measure] = {}
    names = workers.engines
    try:
        for name in names:  # warm-up
            for strategy in STRATEGIES:
                workers.run(name, strategy, [texts[:2]])
        for strategy in STRATEGIES:
            for bs in batch_sizes:
                chunks = [texts[i : i + bs] for i in range(0, len(texts), bs)]
                per_block = max(1, block // bs)  # chunks an engine decodes in a row
                blocks = [chunks[i : i + per_block] for i in range(0, len(chunks), per_block)]
                for i, chunk_block in enumerate(blocks):  # interleaved: every engine decodes the same block before the next block
                    # The engine order rotates from block to block, so that no engine always runs right after the same other.
                    for name in names[i % len(names):] + names[: i % len(names)]:
                        m = measures.setdefault((name, strategy, bs), Measure(name, strategy, bs))
                        for seconds, n_sent, n_tok, first in workers.run(name, strategy, chunk_block):
                            m.seconds.append(seconds)
                            m.sizes.append(n_sent)
                            m.tokens.append(n_tok)
                            if first is not None and bs == 1:
                                m.first_token.append(first)
    finally:
        workers.close()
    rows = [m.row() for m in measures.values()]
    for r in rows:
        base = measures[("ours-fast", r["strategy"], r["batch"])].row()["median_ms_per_sentence"]
        r["ratio_to_ours_fast"] = round(r["median_ms_per_sentence"] / base, 2) if base else None
    profiled = profile_decoding(translator, texts[:50], console) if profile else None
    live_report = None
    if live:  # both engines, the default one first; a second Translator over the same loaded model packs its own weights
        both = (translator, Translator(translator.loaded, int8=not translator.int8))
        live_report = [live_mode(t) for t in sorted(both, key=lambda t: t.int8 != INT8_DEFAULT)]
    train = training_throughput(translator)
    app = app_latency(translator.path, " ".join(texts[:60])) if app_check else None  # 60 sentences decoded in a row
    report = {"model": str(translator.path), "threads": torch.get_num_threads(), "sentences": len(texts), "block": block,
              "default_engine": "ours-int8" if INT8_DEFAULT else "ours-fast",
              "torch": torch.__version__, "rows": rows, "skipped": skipped, "training_tokens_per_s": train, "app": app,
              "profile": profiled, "live": live_report, "decoder_step": native.status()}
    table = Table(title=f"tui-translate bench · {translator.name} · {len(texts)} sentences · {torch.get_num_threads()} threads"
                        f" · blocks of {block} · default engine: ours-{'int8' if INT8_DEFAULT else 'fast'}")
    table.add_column("engine", no_wrap=True, min_width=19)
    table.add_column("strategy", no_wrap=True)
    for col in ("batch", "ms/sent median", "ms/sent p90", "target tok/s", "first token ms", "× ours-fast"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["engine"], r["strategy"], str(r["batch"]), f"{r['median_ms_per_sentence']:.1f}", f"{r['p90_ms_per_sentence']:.1f}",
                      f"{r['target_tokens_per_s']:.0f}", "" if r["first_token_ms"] is None else f"{r['first_token_ms']:.1f}",
                      f"{r['ratio_to_ours_fast']:.2f}")
    console.print(table)
    fits = [r for r in rows if r["ms_per_output_token"] is not None]
    if fits:
        console.print("batch 1, least-squares fit of ms per sentence = fixed + per token × output tokens: " + "; ".join(
            f"{r['engine']} {r['strategy']} {r['ms_per_output_token']:.2f} ms/token "
            f"{'-' if r['ms_fixed_per_sentence'] < 0 else '+'} {abs(r['ms_fixed_per_sentence']):.1f} ms" for r in fits))
    for lr in live_report or []:
        console.print(f"live mode ({lr['words']} words typed key by key, {lr['keystrokes']} keystrokes, {lr['strategy']}, "
                      f"{lr['engine']}, median of {lr['replays']} replays): last keystroke to final translation "
                      f"{lr['last_key_ms_with_draft']:.1f} ms with the draft, {lr['last_key_ms_without_draft']:.1f} ms without; "
                      f"every keystroke {lr['per_key_ms_with_draft']:.1f} / {lr['per_key_ms_without_draft']:.1f} ms"
                      + ("" if lr["same_translations"] else " [red]translations differ with the draft[/]"))
    console.print(f"decoder step: {native.status()}")
    console.print("training step tokens/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in train.items()))
    if app:
        console.print(f"app: first frame {app['first_frame_ms']:.0f} ms, model ready {app['model_ready_ms']:.0f} ms, "
                      f"decoding on {app['decoding_threads']} thread(s), keystroke while decoding: median "
                      f"{app['keystroke_while_decoding_median_ms']} ms, p99 {app['keystroke_while_decoding_p99_ms']} ms, "
                      f"max {app['keystroke_while_decoding_max_ms']} ms ({app['keystrokes']} keys)")
    if json_path:
        write_text(json_path, json.dumps(report, indent=2))
        console.print(f"wrote {json_path}")
    return report
