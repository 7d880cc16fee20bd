#!/usr/bin/env python3
"""Probe for issue #16 item 2: does an AOTInductor-compiled float32 decoder step beat the eager engine, exactly?

Not part of the package (nothing imports it): a reproducible measurement that decides whether a compiled
decoder step is worth building. For one model it

1. exports the decoder step of one sentence's N rows (N = 1 greedy, N = 5 beam) with `torch.export` and
   compiles each with AOTInductor (`torch._inductor.aoti_compile_and_package`: max-autotune with the C++ GEMM
   template, freezing, so the weights are constants the GEMM kernels prepack at compile time) into one .pt2
   per row count; reports export and compile seconds, artifact bytes, and the time to load an artifact;
2. greedy-decodes the first --sentences sentences of the validation file (and --spread more, evenly spread
   over the file, for longer sentences) with the eager float32 engine and with the compiled step, and
   reports token mismatches and the largest |logit difference| (over the positions both computed from the
   same prefix); the eager int8 engine's outputs are compared too, for information (int8 is other arithmetic);
3. times one decoding step at the same cache length on the same inputs for the eager float32 engine, the eager
   int8 engine (the default) and the compiled step, at 1 and 5 rows, in interleaved blocks whose order
   rotates, and reports median, p90 and mean microseconds per step. The compiled step is timed as an
   integration would call it (the runner on a list of tensors: compiled-fp32) and through the loaded
   package's public call (compiled-pycall), which re-reads the package's input/output specs every call.

The compiled step (`StepModule`) computes what `fused.FusedDecoderStep` computes for one new token per row of
one sentence: no padding mask (one source), keys/values of past positions passed in (sliced to the positions
filled, a dynamic dimension), the new position's keys/values returned for the caller to store. Its cache
layout is (T_max, L, 2, N, H, d_k), so the filled part is a contiguous slice. The first position (the start
token) runs eagerly, as the search's first pass (a block with any forced prefix or draft) would.

Without a C++ compiler (or when export or compilation fails) it says so and exits 0: the eager path is
the fallback, so that is a result, not an error.

Run it idle (its timings are void on a loaded machine); `--help` lists the options. Example:

    nice -n 0 .venv/bin/python docs/probes/compile_probe.py --json compile-fr-en.json
    .venv/bin/python docs/probes/compile_probe.py --arch v3 --json compile-v3.json

Shapes: N rows, L decoder layers, H heads, d_k = D / H, P past positions, S source length, V vocab.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VALID = Path("/work/shared/corpora/tatoeba-fr-en/valid.fr-en.tsv")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "fr-en"),
                   help="model directory (default: models/fr-en); with --arch, only its tokenizer is used")
    p.add_argument("--arch", choices=["model", "v3", "tiny"], default="model",
                   help="model: the weights of --model (default); v3: randomly initialised, the next default's "
                        "architecture (d_model 384, 6 heads, 6+2 layers, d_ff 1536, post-norm, Marian-compatible); "
                        "tiny: randomly initialised 64-wide 1+1-layer model, to smoke-test the probe")
    p.add_argument("--valid", default=str(VALID), help="French<TAB>English validation file")
    p.add_argument("--sentences", type=int, default=50, help="exactness: the first N sentences of --valid (default 50)")
    p.add_argument("--spread", type=int, default=50,
                   help="exactness: N more sentences evenly spread over --valid (the file is sorted by length, so "
                        "these are longer; default 50, 0: none)")
    p.add_argument("--rows", default="1,5", help="row counts to compile and time (default 1,5: greedy, beam 5)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for every engine and for the compiled kernels (default: the app's choice, "
                        "all cores but one)")
    p.add_argument("--no-autotune", dest="autotune", action="store_false",
                   help="compile without max-autotune (fast; for smoke tests, not for the decision)")
    p.add_argument("--cache-length", type=int, default=16, help="timed steps start at this cache length (default 16)")
    p.add_argument("--block", type=int, default=20, help="timed steps per engine per turn (default 20)")
    p.add_argument("--rounds", type=int, default=200, help="turns of every engine (default 200)")
    p.add_argument("--loads", type=int, default=5, help="times each artifact is loaded to time loading (default 5)")
    p.add_argument("--artifacts", default=None,
                   help="keep the .pt2 files here (default: a temporary directory, removed at the end)")
    p.add_argument("--inductor-cache", default=None,
                   help="TORCHINDUCTOR_CACHE_DIR (default: a fresh temporary one, so compile times include autotuning)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of --arch v3/tiny")
    p.add_argument("--json", dest="json_path", default=None, help="write every measurement here")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
_TMP: list[str] = []
if ARGS is not None:
    # Before torch is imported: inductor reads its cache directory (and the compiler, CXX) at import.
    if ARGS.inductor_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = ARGS.inductor_cache
    else:
        _TMP.append(tempfile.mkdtemp(prefix="compile-probe-inductor-"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = _TMP[-1]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from tui_translate.cache import KVCache  # noqa: E402
from tui_translate.checkpoint import TOKENIZER_FILE  # noqa: E402
from tui_translate.config import DecodeConfig, ModelConfig  # noqa: E402
from tui_translate.data import read_pairs  # noqa: E402
from tui_translate.engine import InferenceEngine  # noqa: E402
from tui_translate.loading import load_model  # noqa: E402
from tui_translate.model import Transformer  # noqa: E402
from tui_translate.search import _banned_ids, search  # noqa: E402
from tui_translate.tokenizer import Tokenizer  # noqa: E402
from tui_translate.translator import interactive_threads  # noqa: E402

ARCHS = {
    # fr-en-v3's architecture (docs/training.md): what `train --marian-compatible` builds
    "v3": dict(d_model=384, n_heads=6, n_encoder_layers=6, n_decoder_layers=2, d_ff=1536),
    "tiny": dict(d_model=64, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=128),
}
MARIAN_COMPATIBLE = dict(norm_placement="post", position_layout="split", final_logits_bias=True, max_positions=256)


# -- the model -----------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace) -> tuple[Transformer, Tokenizer, str, str]:
    """(model in eval mode, tokenizer, a tag for file names, direction)."""
    if args.arch == "model":
        loaded = load_model(args.model)
        meta = loaded.meta
        direction = f"{meta.get('source_lang', 'fr')}-{meta.get('target_lang', 'en')}"
        return loaded.model.eval(), loaded.tokenizer, Path(args.model).name, direction
    tokenizer = Tokenizer.from_file(Path(args.model) / TOKENIZER_FILE)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, decoder_start_id=tokenizer.pad_id, **MARIAN_COMPATIBLE, **ARCHS[args.arch])
    torch.manual_seed(args.seed)
    return Transformer(config).eval(), tokenizer, f"{args.arch}-random", "fr-en"


def _param(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


def _bias(*linears: nn.Linear) -> Tensor:
    return torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears])


class StepModule(nn.Module):
    """One decoding step of one sentence's N rows as a single graph for torch.export: the arithmetic of
    `fused.FusedDecoderStep`'s one-token path (post- or pre-norm), with nn.Linear products the compiler
    chooses kernels for. forward(tokens (N, 1), past (P, L, 2, N, H, d_k), cross (L, 2, N, H, S, d_k)) ->
    logits (N, V), new keys/values (L, 2, N, H, d_k) of position P."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        c = model.config
        self.d, self.h, self.dk = c.d_model, c.n_heads, c.d_model // c.n_heads
        self.pre = c.norm_placement == "pre"
        self.scale = float(model.scale)
        self.eps = c.layer_norm_eps
        self.acts = [layer.ffn.act for layer in model.decoder_layers]
        with torch.inference_mode(False), torch.no_grad():
            self.embedding = _param(model.tgt_embed.weight)  # (V, D)
            self.register_buffer("positions", model.positions.clone())  # (P_max, D)
            self.layers = nn.ModuleList()
            for layer in model.decoder_layers:
                sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
                m = nn.Module()
                m.qkv_w = _param(torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]))  # (3D, D)
                m.qkv_b = _param(_bias(sa.q_proj, sa.k_proj, sa.v_proj))
                for name, lin in (("self_out", sa.out_proj), ("cross_q", ca.q_proj), ("cross_out", ca.out_proj),
                                  ("fc1", ffn.fc1), ("fc2", ffn.fc2)):
                    setattr(m, name + "_w", _param(lin.weight))
                    setattr(m, name + "_b", _param(_bias(lin)))
                for k, res in enumerate((layer.self_attn_res, layer.cross_attn_res, layer.ffn_res)):
                    setattr(m, f"norm{k}_w", _param(res.norm.weight))
                    setattr(m, f"norm{k}_b", _param(res.norm.bias))
                self.layers.append(m)
            tied = model.output_proj.weight is model.tgt_embed.weight
            self.out_w = self.embedding if tied else _param(model.output_proj.weight)  # (V, D)
            bias = model.logits_bias.reshape(-1) if model.logits_bias is not None else None
            self.out_b = _param(bias) if bias is not None else None
            if self.pre:
                self.final_w, self.final_b = _param(model.decoder_norm.weight), _param(model.decoder_norm.bias)

    def _norm(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.layer_norm(x, (self.d,), w, b, self.eps)

    def _sublayer(self, x: Tensor, w: Tensor, b: Tensor, f) -> Tensor:
        """Residual + LayerNorm: post x = LN(f(x) + x), pre x = f(LN(x)) + x (the fused step's order)."""
        if self.pre:
            return f(self._norm(x, w, b)) + x
        return self._norm(f(x) + x, w, b)

    def forward(self, tokens: Tensor, past: Tensor, cross: Tensor) -> tuple[Tensor, Tensor]:
        n, d, h, dk = tokens.size(0), self.d, self.h, self.dk
        pos = past.size(0)
        x = F.embedding(tokens.view(n), self.embedding) * self.scale + self.positions[pos]  # (N, D)
        new = []
        for i, m in enumerate(self.layers):
            def self_attention(hx: Tensor, m=m, i=i) -> Tensor:
                qkv = F.linear(hx, m.qkv_w, m.qkv_b).view(n, 3, h, dk)
                q, k_new, v_new = qkv[:, 0, :, None], qkv[:, 1], qkv[:, 2]  # (N, H, 1, d_k), (N, H, d_k) x 2
                new.append(torch.stack([k_new, v_new]))  # (2, N, H, d_k)
                k = torch.cat([past[:, i, 0].permute(1, 2, 0, 3), k_new[:, :, None]], 2)  # (N, H, P + 1, d_k)
                v = torch.cat([past[:, i, 1].permute(1, 2, 0, 3), v_new[:, :, None]], 2)
                ctx = F.scaled_dot_product_attention(q, k, v)  # (N, H, 1, d_k)
                return F.linear(ctx.reshape(n, d), m.self_out_w, m.self_out_b)

            def cross_attention(hx: Tensor, m=m, i=i) -> Tensor:
                q = F.linear(hx, m.cross_q_w, m.cross_q_b).view(n, h, 1, dk)
                ctx = F.scaled_dot_product_attention(q, cross[i, 0], cross[i, 1])  # (N, H, 1, d_k)
                return F.linear(ctx.reshape(n, d), m.cross_out_w, m.cross_out_b)

            def ffn(hx: Tensor, m=m, i=i) -> Tensor:
                return F.linear(self.acts[i](F.linear(hx, m.fc1_w, m.fc1_b)), m.fc2_w, m.fc2_b)

            x = self._sublayer(x, m.norm0_w, m.norm0_b, self_attention)
            x = self._sublayer(x, m.norm1_w, m.norm1_b, cross_attention)
            x = self._sublayer(x, m.norm2_w, m.norm2_b, ffn)
        if self.pre:
            x = self._norm(x, self.final_w, self.final_b)
        return F.linear(x, self.out_w, self.out_b), torch.stack(new)  # (N, V), (L, 2, N, H, d_k)


class CompiledStep:
    """A loaded artifact plus the cache layout it reads: (T_max, L, 2, N, H, d_k) self-attention keys/values,
    the filled part passed as a contiguous slice; the cross-attention keys/values of a `KVCache`.

    lean: call the package's runner on the list of input tensors (`loader.boxed_run`), as an integration would;
    otherwise the loaded package's public call, which re-reads its input and output tree specs at every call."""

    def __init__(self, runner, config: ModelConfig, rows: int, lean: bool = True) -> None:
        c = config
        boxed = getattr(getattr(runner, "loader", None), "boxed_run", None)
        self.runner = (lambda *xs: boxed(list(xs))) if lean and boxed is not None else runner
        self.buf = torch.empty(c.max_positions, c.n_decoder_layers, 2, rows, c.n_heads, c.d_model // c.n_heads)
        self.length = 0
        self.cross: Tensor | None = None

    def adopt(self, cache: KVCache) -> None:
        """Continue from an eager cache: its filled positions and its cross-attention keys/values."""
        t = cache.length
        self.buf[:t] = cache.self_kv[..., :t, :].permute(4, 0, 1, 2, 3, 5)  # (L, 2, N, H, T, d_k) -> (T, L, 2, N, H, d_k)
        self.length = t
        self.cross = cache.cross_kv.contiguous()

    def step(self, tokens: Tensor) -> Tensor:
        """tokens (N, 1) -> logits (N, V); the new position's keys/values stored."""
        logits, new = self.runner(tokens, self.buf[: self.length], self.cross)
        self.buf[self.length] = new
        self.length += 1
        return logits


# -- compiling ---------------------------------------------------------------------------------------
def compiler_problem() -> str | None:
    """None when inductor finds a C++ compiler; else why not."""
    try:
        from torch._inductor import cpp_builder

        cxx = cpp_builder.get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler, or an inductor without this helper
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no C++ compiler found'}"
    return None if cxx else "no C++ compiler found"


def example_inputs(config: ModelConfig, rows: int, past: int = 5, source: int = 7) -> tuple[Tensor, Tensor, Tensor]:
    c = config
    dk = c.d_model // c.n_heads
    return (torch.full((rows, 1), 5, dtype=torch.long),
            torch.randn(past, c.n_decoder_layers, 2, rows, c.n_heads, dk),
            torch.randn(c.n_decoder_layers, 2, rows, c.n_heads, source, dk))


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the compiler runs in subprocesses)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def package_kernels(path: Path) -> dict:
    """What the artifact's generated C++ holds: the distinct GEMM kernels made from the C++ template (their
    micro-GEMMs) and the calls left to ATen/oneDNN ops, counted in the sources packaged with it."""
    import re
    import zipfile

    templates: set[str] = set()
    calls: dict[str, int] = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".cpp"):
                text = z.read(name).decode("utf-8", "replace")
                templates.update(re.findall(r"(\w+)_micro_gemm<", text))
                if name.endswith(".wrapper.cpp"):
                    for op in re.findall(r"\baoti_torch_(?:cpu|mkldnn)_(\w+)\(", text):
                        calls[op] = calls.get(op, 0) + 1
    return {"template_gemm_kernels": len(templates), "aten_calls": calls}


def compile_step(module: StepModule, config: ModelConfig, rows: int, path: Path, autotune: bool) -> dict:
    """Export and AOT-compile the step for `rows` rows into `path`; returns seconds (wall and CPU, compiler
    subprocesses included) and bytes."""
    import torch._inductor
    from torch.export import Dim

    past = Dim("past", min=1, max=config.max_positions - 1)
    source = Dim("source", min=1, max=config.max_positions)
    began, cpu = time.perf_counter(), cpu_seconds()
    with torch.no_grad():
        exported = torch.export.export(module, example_inputs(config, rows),
                                       dynamic_shapes={"tokens": None, "past": {0: past}, "cross": {4: source}})
    exported_at = time.perf_counter()
    options = {"freezing": True, "max_autotune": autotune}
    if autotune:
        options["max_autotune_gemm_backends"] = "CPP,ATEN"  # the C++ GEMM template, against ATen's kernels
    torch._inductor.aoti_compile_and_package(exported, package_path=str(path), inductor_configs=options)
    done = time.perf_counter()
    return {"export_s": round(exported_at - began, 2), "compile_s": round(done - exported_at, 2),
            "cpu_s": round(cpu_seconds() - cpu, 1), "artifact_bytes": path.stat().st_size,
            "kernels": package_kernels(path)}


def load_runner(path: Path, loads: int) -> tuple[object, dict]:
    """The loaded artifact, and the seconds its loads took (the first, then the median of the rest)."""
    times, runner = [], None
    for _ in range(max(1, loads)):
        began = time.perf_counter()
        runner = torch._inductor.aoti_load_package(str(path))
        times.append(time.perf_counter() - began)
    rest = times[1:] or times
    return runner, {"load_first_s": round(times[0], 4), "load_warm_median_s": round(statistics.median(rest), 4)}


# -- exactness ---------------------------------------------------------------------------------------
class Greedy:
    """Greedy decoding as `search.Greedy` chooses (the best id that may be emitted), one sentence at a time, keeping
    every step's logits; the first position always eager, the later ones by the engine or the compiled step."""

    def __init__(self, model: Transformer) -> None:
        self.config = model.config
        self.banned = torch.tensor(_banned_ids(model), dtype=torch.long)
        self.limits = DecodeConfig(strategy="greedy")

    def pick(self, logits: Tensor) -> int:
        logp = F.log_softmax(logits.float(), dim=-1)
        logp.index_fill_(-1, self.banned, float("-inf"))
        return int(torch.topk(logp, 1).indices[0])

    @torch.inference_mode()
    def decode(self, engine: InferenceEngine, ids: list[int], compiled: CompiledStep | None = None) -> tuple[list[int], list[Tensor]]:
        c = self.config
        max_new = self.limits.max_length(len(ids), c.max_positions)
        cache = engine.start_cache(engine.encode(torch.tensor([ids])), max_new + 1)
        logits = [engine.decode_step(torch.tensor([[c.decoder_start_id]]), cache).logits[0, -1].float().clone()]
        tokens = [self.pick(logits[-1])]
        if compiled is not None:
            compiled.adopt(cache)
        while tokens[-1] != c.eos_id and len(tokens) < max_new:
            t = torch.tensor([[tokens[-1]]])
            out = compiled.step(t)[0] if compiled is not None else engine.decode_step(t, cache).logits[0, -1]
            logits.append(out.float().clone())
            tokens.append(self.pick(logits[-1]))
        return tokens, logits


def exactness(model: Transformer, fp32: InferenceEngine, int8: InferenceEngine, compiled: CompiledStep | None,
              sources: list[list[int]]) -> dict:
    g = Greedy(model)
    out = {"sentences": len(sources), "loop_equals_search": 0, "int8_differs_from_fp32": 0}
    if compiled is not None:
        out.update(sentences_differing=0, steps_compared=0, argmax_mismatches=0, max_abs_logit_diff=0.0, differing=[])
    for si, ids in enumerate(sources):
        ref, ref_logits = g.decode(fp32, ids)
        final = None
        for final in search(fp32, torch.tensor([ids]), DecodeConfig(strategy="greedy")):
            pass
        out["loop_equals_search"] += final.hypotheses[0][0].tokens == ref  # this loop decodes as the app does
        out["int8_differs_from_fp32"] += g.decode(int8, ids)[0] != ref
        if compiled is None:
            continue
        got, got_logits = g.decode(fp32, ids, compiled)
        # positions 1.. come from the compiled step; compare them while both saw the same prefix
        for p in range(1, min(len(ref), len(got))):
            out["steps_compared"] += 1
            diff = float((ref_logits[p] - got_logits[p]).abs().max())
            out["max_abs_logit_diff"] = max(out["max_abs_logit_diff"], diff)
            if int(ref_logits[p].argmax()) != int(got_logits[p].argmax()):
                out["argmax_mismatches"] += 1
            if ref[p] != got[p]:
                break
        if got != ref:
            out["sentences_differing"] += 1
            out["differing"].append({"index": si, "eager": ref, "compiled": got})
    return out


# -- timing ------------------------------------------------------------------------------------------
class Timed:
    """One engine at one row count, ready to time one step from the same cache length again and again."""

    def __init__(self, name: str, rows: int, run) -> None:
        self.name, self.rows, self.run = name, rows, run
        self.ns: list[int] = []

    def summary(self) -> dict:
        us = sorted(n / 1000 for n in self.ns)
        return {"engine": self.name, "rows": self.rows, "steps": len(us), "median_us": round(statistics.median(us), 1),
                "p90_us": round(us[math.ceil(0.9 * len(us)) - 1], 1), "mean_us": round(statistics.fmean(us), 1)}


@torch.inference_mode()
def filled_cache(engine: InferenceEngine, ids: list[int], rows: int, feed: list[int], capacity: int) -> KVCache:
    """`engine`'s cache for `rows` rows of one source, filled with `feed` one step at a time."""
    cache = engine.start_cache(engine.encode(torch.tensor([ids])), capacity)
    if rows > 1:
        cache.reorder(torch.zeros(rows, dtype=torch.long))  # the beams of one sentence, as search.py makes them
    for tok in feed:
        engine.decode_step(torch.full((rows, 1), tok, dtype=torch.long), cache)
    return cache


def timers(model: Transformer, engines: dict[str, InferenceEngine], compiled: dict[int, object], ids: list[int],
           rows_list: list[int], length: int, next_token: int, feed: list[int]) -> tuple[list[Timed], dict]:
    """Every engine at every row count, all at cache length `length` with the same next token; and the largest
    |logit difference| of the compiled step's output against the eager float32 step's there."""
    c = model.config
    out, diffs = [], {}
    for rows in rows_list:
        tok = torch.full((rows, 1), next_token, dtype=torch.long)
        for name, engine in engines.items():
            cache = filled_cache(engine, ids, rows, feed, c.max_positions)

            def run(engine=engine, cache=cache, tok=tok) -> int:
                cache.truncate(length)
                began = time.perf_counter_ns()
                engine.decode_step(tok, cache)
                return time.perf_counter_ns() - began

            out.append(Timed(f"eager-{name}", rows, run))
        if rows in compiled:
            for lean, name in ((True, "compiled-fp32"), (False, "compiled-pycall")):
                cache = filled_cache(engines["fp32"], ids, rows, feed, c.max_positions)
                step = CompiledStep(compiled[rows], c, rows, lean)
                step.adopt(cache)
                with torch.inference_mode():
                    got = step.step(tok)
                    ref = engines["fp32"].decode_step(tok, cache).logits[:, -1]
                if lean:
                    diffs[str(rows)] = float((got - ref).abs().max())

                def run_compiled(step=step, tok=tok) -> int:
                    step.length = length
                    began = time.perf_counter_ns()
                    step.step(tok)
                    return time.perf_counter_ns() - began

                out.append(Timed(name, rows, run_compiled))
    return out, diffs


@torch.inference_mode()
def time_steps(entries: list[Timed], block: int, rounds: int) -> None:
    """Interleaved: every entry runs `block` steps in turn, the order rotating each round; two rounds of warm-up."""
    for r in range(rounds + 2):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            times = [e.run() for _ in range(block)]
            if r >= 2:
                e.ns.extend(times)


# -- main --------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def summary_lines(report: dict) -> list[str]:
    m, comp = report["machine"], report["compiled"]
    lines = [f"compile probe · {report['model']['tag']} ({report['model']['parameters'] / 1e6:.1f} M parameters) · "
             f"torch {m['torch']} · {report['threads']} threads · {m['cpu']} · load {m['loadavg_start']} -> {m.get('loadavg_end')}",
             f"compiled step: {comp['status']}"
             + (f" (inductor's precompiled header existed before: {comp['precompiled_header_existed']})"
                if "precompiled_header_existed" in comp else "")]
    for rows, r in comp.get("per_rows", {}).items():
        if "error" in r:
            lines.append(f"  {rows} row(s): {r['error']}")
            continue
        lines.append(f"  {rows} row(s): export {r['export_s']} s, compile {r['compile_s']} s ({r['cpu_s']} CPU s), artifact "
                     f"{r['artifact_bytes'] / 1e6:.1f} MB, load {r['load_first_s']} s first / {r['load_warm_median_s']} s warm; "
                     f"kernels {r['kernels']}")
    ex = report.get("exactness")
    for key, e in (ex or {}).items():
        line = (f"exactness ({key}, {e['sentences']} sentences): greedy loop = search() on {e['loop_equals_search']}; "
                f"int8 differs from fp32 on {e['int8_differs_from_fp32']}")
        if "steps_compared" in e:
            line += (f"; compiled vs fp32: {e['sentences_differing']} sentences differ, {e['argmax_mismatches']} argmax "
                     f"mismatches in {e['steps_compared']} steps, max |logit diff| {e['max_abs_logit_diff']:.2e}")
        lines.append(line)
    t = report.get("timing")
    if t:
        lines.append(f"µs per step at cache length {t['cache_length']} ({t['block']} steps x {t['rounds']} interleaved turns):")
        lines.append(f"  {'engine':<16}{'rows':>5}{'median':>10}{'p90':>10}{'mean':>10}{'x eager-int8':>14}")
        base = {r["rows"]: r["median_us"] for r in t["results"] if r["engine"] == "eager-int8"}
        for r in t["results"]:
            ratio = r["median_us"] / base[r["rows"]] if r["rows"] in base else float("nan")
            lines.append(f"  {r['engine']:<16}{r['rows']:>5}{r['median_us']:>10.1f}{r['p90_us']:>10.1f}{r['mean_us']:>10.1f}{ratio:>14.2f}")
        if t.get("compiled_vs_eager_max_abs_logit_diff"):
            lines.append(f"  compiled vs eager fp32 at the timed step, max |logit diff| by rows: {t['compiled_vs_eager_max_abs_logit_diff']}")
    lines.append(f"wall {report['wall_s']:.0f} s, CPU {report['cpu_s']:.0f} s (this process and its compilers)")
    return lines


def main(args: argparse.Namespace) -> int:
    began, cpu_began = time.perf_counter(), cpu_seconds()
    warnings.filterwarnings("ignore", category=FutureWarning)  # export's pytree deprecation notices, not ours
    threads = args.threads or interactive_threads()
    torch.set_num_threads(threads)
    rows_list = sorted({int(r) for r in args.rows.split(",") if r.strip()})
    model, tokenizer, tag, direction = build_model(args)
    c = model.config
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": sys.argv,
                    "machine": machine(), "threads": threads, "autotune": args.autotune,
                    "model": {"tag": tag, "arch": args.arch, "parameters": model.num_parameters(), "config": c.to_dict()},
                    "compiled": {"status": "not tried", "per_rows": {}}}

    def finish(code: int = 0) -> int:
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["wall_s"] = round(time.perf_counter() - began, 1)
        report["cpu_s"] = round(cpu_seconds() - cpu_began, 1)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print("\n".join(summary_lines(report)))
        for d in _TMP:
            shutil.rmtree(d, ignore_errors=True)
        return code

    problem = compiler_problem()
    if problem is not None:
        report["compiled"]["status"] = f"compiler unavailable ({problem}); the eager path stays"
        return finish(0)

    # 1. compile one artifact per row count. Inductor keeps its precompiled C++ header outside its cache directory:
    # a machine's first compile also builds it, later ones (this probe's fresh cache or not) reuse it.
    try:
        from torch._inductor.codecache import _HEADER_DIR

        report["compiled"]["precompiled_header_existed"] = any(Path(_HEADER_DIR).glob("*"))
    except (ImportError, OSError):
        pass
    art_dir = Path(args.artifacts) if args.artifacts else Path(tempfile.mkdtemp(prefix="compile-probe-pt2-"))
    if not args.artifacts:
        _TMP.append(str(art_dir))
    art_dir.mkdir(parents=True, exist_ok=True)
    module = StepModule(model).eval()
    runners: dict[int, object] = {}
    failures = []
    for rows in rows_list:
        path = art_dir / f"{tag}-step-r{rows}-t{threads}{'' if args.autotune else '-noautotune'}.pt2"
        print(f"compiling the step for {rows} row(s) -> {path} ...", flush=True)
        try:
            info = compile_step(module, c, rows, path, args.autotune)
            runners[rows], load = load_runner(path, args.loads)
            info.update(load)
        except Exception as e:  # compilation failed: recorded, and the eager path stays
            lines = str(e).strip().splitlines()
            info = {"error": f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]}
            failures.append(rows)
        report["compiled"]["per_rows"][str(rows)] = info
    report["compiled"]["status"] = ("ok" if not failures else
                                    f"compilation failed for rows {failures}; the eager path stays for them")

    # 2. exactness
    engines = {"fp32": InferenceEngine(model, "fp32"), "int8": InferenceEngine(model, "int8")}
    pairs = read_pairs(args.valid, direction)
    sets = {"first": pairs[: args.sentences]}
    if args.spread > 0:
        stride = max(1, len(pairs) // args.spread)
        sets["spread"] = pairs[stride - 1 :: stride][: args.spread]
    compiled_1 = CompiledStep(runners[1], c, 1) if 1 in runners else None
    report["exactness"] = {}
    for key, chosen in sets.items():
        sources = [tokenizer.encode(src).ids[: c.max_positions] for src, _ in chosen if src.strip()]
        print(f"exactness on {len(sources)} sentences ({key}) ...", flush=True)
        report["exactness"][key] = exactness(model, engines["fp32"], engines["int8"], compiled_1, sources)

    # 3. timing: a mid-length sentence, its own greedy output fed to reach the cache length
    src_text = next((s for s, _ in pairs[len(pairs) // 2 :] if 8 <= len(tokenizer.encode(s).ids) <= 16), pairs[0][0])
    ids = tokenizer.encode(src_text).ids
    tokens, _ = Greedy(model).decode(engines["fp32"], ids)
    seq = [c.decoder_start_id] + tokens + [5] * args.cache_length  # decoder inputs, padded with an ordinary id
    timed, diffs = timers(model, engines, runners, ids, rows_list, args.cache_length, seq[args.cache_length],
                          seq[: args.cache_length])
    print(f"timing {len(timed)} engine/row pairs ...", flush=True)
    time_steps(timed, args.block, args.rounds)
    report["timing"] = {"cache_length": args.cache_length, "block": args.block, "rounds": args.rounds,
                        "source": src_text, "source_tokens": len(ids), "results": [t.summary() for t in timed],
                        "compiled_vs_eager_max_abs_logit_diff": diffs}
    return finish(0)


if __name__ == "__main__":
    sys.exit(main(ARGS))
