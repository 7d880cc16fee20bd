"""Decoding strategies: greedy, beam search and sampling, as one step loop.

The model (or the inference engine, `engine.py`) offers `encode`, `start_cache` and
`decode_step`; this module owns the loop. Every strategy keeps K rows per sentence (K = 1
for greedy and sampling) and has one `step(StepInput) -> Choice`: from the rows' scores
and log-probabilities it returns the new scores, tokens and parent rows (as fairseq's
search.py does), and files the hypotheses that ended. The shared loop handles batching, a forced target
prefix, the top-k alternatives at every position, attention capture, sentences
leaving the batch and the ancestry tracing.

History is kept as per-step records indexed by the row that produced them plus
a back-pointer (parent row) per step, as in fairseq: a finished hypothesis is
traced back through its ancestry, so the attention it carries is exactly the
attention computed while generating *its* tokens (no second forced pass).

A sentence that is done leaves the batch at once (its rows are dropped from the cache and from
every per-row tensor), so a batch costs as many steps as its longest sentence and each step only
computes the rows still decoding.

Drafts. A decoding step is memory-bound: it streams every decoder weight to compute one token per row.
When a guess of the output exists (the previous translation in live mode, an earlier translation of
the same text, the rest of a hypothesis after a forced alternative), the first pass feeds it after the
start token and the forced prefix as one block, which computes the distribution at every drafted
position in one pass over the weights. The strategy then chooses every token from those
distributions exactly as it would without a draft; while every row chose the draft's token the next
distribution is already there and no step runs; at the first token off the draft the cache is
truncated to the positions kept and decoding goes on step by step. The output is the one decoding
without the draft gives (tokens, scores, alternatives, attention): bit for bit with int8 weights, and
in float32 up to the order of additions inside the block's products, which could only decide a tie
to the last bits (the engine's block computes each position as its one-token step would; fused.py). Greedy and
sampling use drafts. Beam search ignores them: its other beams need a step at every position anyway,
so a draft could not save a pass over the weights (its forced prefix is fed in one block already).

`search()` is a generator: it yields a `SearchStep` after every decoding step
(the best partial hypothesis of each sentence, so a UI can show it growing; tokens taken from a
draft arrive in one step, with the first token computed after them) and finally one `SearchDone`.
Stop iterating to cancel.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DecodeConfig
from .constraints import SourceRules
from .engine import InferenceEngine
from .errors import DecodingError
from .model import StepOutput, Transformer

# What the search decodes with: the inference engine (how users' text is decoded) or the bare model (the
# modules with nn.Linear's arithmetic, the oracle); both offer config, encode, start_cache and decode_step.
Decoder = InferenceEngine | Transformer


@dataclass
class SearchHypothesis:
    """One finished (or length-capped) hypothesis as the search found it, tensors included; the translator
    turns it into the torch-free `results.Hypothesis`."""

    tokens: list[int]  # target ids, forced prefix included, EOS last when finished
    token_logprobs: list[float]  # log p(token | prefix, source) under the model (temperature 1)
    alt_ids: Tensor  # (T, k) the k most probable ids at each position (among ids the search can emit)
    alt_logprobs: Tensor  # (T, k)
    logprob: float  # sum of token_logprobs
    score: float  # logprob / GNMT length penalty (beam) or logprob
    finished: bool  # ended with EOS (False: stopped by the length limit)
    cross_attention: Tensor | None = None  # (L, H, T, S_real)
    self_attention: Tensor | None = None  # (L, H, T, T) rows = output positions, cols = decoder inputs


@dataclass
class SearchStep:
    step: int  # decoder steps taken so far
    partial: list[list[int]]  # per sentence, the ids of its current best hypothesis


@dataclass
class SearchDone:
    hypotheses: list[list[SearchHypothesis]]  # per sentence, n-best (best first)
    encoder_attention: list[Tensor] | None = None  # per sentence (L, H, S_real, S_real)
    steps: int = 0


@dataclass
class _History:
    """Decoding history.

    Records of position p are indexed by the row that computed the distribution
    at p ("pre-selection" rows). Selection at p creates the rows of p+1: row r'
    came from parent[p][r'] by appending token[p][r'] with log-prob chosen_lp[p][r'].
    """

    alt_ids: list[Tensor] = field(default_factory=list)  # per p: (N, k)
    alt_lp: list[Tensor] = field(default_factory=list)  # per p: (N, k)
    cross: list[Tensor] = field(default_factory=list)  # per p: (N, L, H, S)
    self_: list[Tensor] = field(default_factory=list)  # per p: (N, L, H, p+1)
    parent: list[Tensor] = field(default_factory=list)  # per p: (N,)
    token: list[Tensor] = field(default_factory=list)  # per p: (N,)
    chosen_lp: list[Tensor] = field(default_factory=list)  # per p: (N,)


@dataclass(frozen=True)
class _Final:
    score: float
    position: int  # position of the last token
    row: int  # row (pre-selection) that computed the last token's distribution
    token: int
    token_lp: float
    eos: bool


def pad_batch(ids: list[list[int]], pad_id: int) -> Tensor:
    """Token id lists -> (B, S_max) long tensor padded with pad_id, the input `search` takes."""
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for r, x in enumerate(ids):
        out[r, : len(x)] = torch.tensor(x, dtype=torch.long)
    return out


def search_in_batches(
    model: Decoder, sources: list[list[int]], config: DecodeConfig, batch_size: int = 32, need_weights: bool = False,
    rules: Sequence[SourceRules | None] | None = None,
) -> Iterator[tuple[list[int], SearchDone, float]]:
    """Decode many sources, `batch_size` at a time, sentences of similar length together (less padding).
    `rules`: per source, its output rules (constraints.py), or None.

    Yields (indices into `sources`, their SearchDone in that order, seconds the batch took) per batch.
    """
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    size = max(1, batch_size)
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        began = time.perf_counter()
        final = _last(search(model, pad_batch([sources[i] for i in idx], model.config.pad_id), config, need_weights=need_weights,
                             stream=False, rules=None if rules is None else [rules[i] for i in idx]))
        yield idx, final, time.perf_counter() - began


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _banned_ids(model: Decoder) -> list[int]:
    c = model.config
    return sorted({c.pad_id, c.decoder_start_id, c.bos_id} - {c.eos_id})


@functools.lru_cache(maxsize=16)
def _banned_tensor(ids: tuple[int, ...], device: torch.device) -> Tensor:
    """`_banned_ids` as the index tensor the search fills with -inf, made once per model and device rather than
    once per sentence; only ever read."""
    return torch.tensor(ids, dtype=torch.long, device=device)


def _filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k then nucleus (top-p) filtering on (N, V) logits; removed entries become -inf."""
    if top_k > 0:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        cumulative = probs.cumsum(-1)
        remove = cumulative - probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@dataclass
class StepInput:
    """What the shared loop hands a strategy at one target position.

    Rows: N = len(alive) * K, row r belongs to sentence alive[r // K] (K = the strategy's `width`)."""

    position: int  # index of the target token chosen now (forced prefix included)
    alive: list[int]  # sentences still decoding
    at_limit: list[bool]  # per alive sentence: the token chosen now is its last (length cap)
    scores: Tensor  # (N,) each row's score so far (sum of token log-probs)
    top_lp: Tensor  # (N, n_top) each row's best continuations' log-probs, ids never generated excluded
    top_ids: Tensor  # (N, n_top) their ids
    logp: Tensor  # (N, V) log-probabilities (ids never generated at -inf)
    logits: Tensor  # (N, V) raw logits, float32
    finished: list[list[_Final]]  # per sentence (all of the batch): ended hypotheses go here
    max_new: list[int]  # per sentence (all of the batch): most tokens it may generate after the prefix
    prefix_length: int  # forced target tokens
    banned: Tensor  # ids never generated


@dataclass
class Choice:
    """A strategy's answer for one position: the rows that continue, as back-pointers."""

    scores: Tensor  # (N,) new row scores
    tokens: Tensor  # (N,) the token appended to each new row
    parents: Tensor  # (N,) the row each new row continues
    token_lps: Tensor  # (N,) log p of that token
    done: list[bool]  # per alive sentence: nothing left to decode
    reorder: bool  # rows changed places (beam search): the cache follows `parents`


class Greedy:
    """One row per sentence; the most probable id that may be emitted."""

    width = 1
    candidates = 1  # continuations per row the step reads from `top_ids`

    def __init__(self, config: DecodeConfig, batch: int) -> None:
        self.config = config
        self._rows: Tensor | None = None  # 0..N-1 of the first step: every row continues itself

    def _identity(self, token: Tensor) -> Tensor:
        """(N,) 0..N-1, made once per search: rows only leave the batch, so later steps use a prefix of it."""
        n = token.size(0)
        if self._rows is None:
            self._rows = torch.arange(n, device=token.device)
        return self._rows if n == self._rows.size(0) else self._rows[:n]

    def pick(self, st: StepInput) -> tuple[Tensor, Tensor]:
        """(tokens, their log-probs), (N,) each."""
        return st.top_ids[:, 0], st.top_lp[:, 0]

    def step(self, st: StepInput, eos_id: int) -> Choice:
        token, chosen = self.pick(st)
        new_scores = st.scores + chosen
        ended = token.eq(eos_id).tolist()
        done = []
        for r, si in enumerate(st.alive):
            over = ended[r] or st.at_limit[r]
            if over:
                st.finished[si].append(_Final(float(new_scores[r]), st.position, r, int(token[r]), float(chosen[r]), ended[r]))
            done.append(over)
        return Choice(new_scores, token, self._identity(token), chosen, done, reorder=False)


class Sample(Greedy):
    """One row per sentence; a token drawn from the temperature-scaled, top-k / top-p filtered distribution,
    with one seeded generator per sentence (a sentence samples the same whatever its batch)."""

    def __init__(self, config: DecodeConfig, batch: int) -> None:
        super().__init__(config, batch)
        # without a seed, each sentence draws its own
        self.generators = [torch.Generator(device="cpu").manual_seed(config.seed if config.seed is not None else torch.seed())
                           for _ in range(batch)]

    def pick(self, st: StepInput) -> tuple[Tensor, Tensor]:
        c = self.config
        filt = _filter_logits(st.logits / c.temperature, c.top_k, c.top_p)
        filt.index_fill_(-1, st.banned, float("-inf"))  # filt is a new tensor (the logits / temperature)
        probs = filt.softmax(-1).cpu()
        token = torch.stack(
            [torch.multinomial(probs[r], 1, generator=self.generators[si]).squeeze(0) for r, si in enumerate(st.alive)]
        ).to(st.logp.device)
        return token, st.logp.gather(1, token[:, None]).squeeze(1)  # (N,) each


class Beam:
    """K rows per sentence; the K best non-EOS continuations among the sentence's 2K best candidates.

    An EOS among the first K candidates finishes a hypothesis (score: log-prob / GNMT length penalty); a
    sentence is done when it holds K finished hypotheses and (without early stopping) no live beam can
    still beat the worst of them."""

    def __init__(self, config: DecodeConfig, batch: int) -> None:
        self.config = config
        self.width = config.beam_size
        self.candidates = 2 * config.beam_size

    def step(self, st: StepInput, eos_id: int) -> Choice:
        c, k_beam = self.config, self.width
        nb = len(st.alive)
        new_len = st.position + 1  # hypothesis length if it ends here
        finished = st.finished
        w = min(2 * k_beam, st.top_ids.size(1))  # candidates per row
        cand = (st.scores[:, None] + st.top_lp[:, :w]).view(nb, k_beam * w)  # (B_alive, K*w) hypothesis scores
        top_scores, top_idx = torch.topk(cand, 2 * k_beam, dim=-1)  # (B_alive, 2K), best first
        # The 2K best candidates of each sentence are few: the selection below runs on Python lists (a
        # dozen small tensor ops per step cost more than the loop over 2K numbers).
        scores_l, idx_l = top_scores.tolist(), top_idx.tolist()
        ids_l, lps_l = st.top_ids[:, :w].tolist(), st.top_lp[:, :w].tolist()  # (N, w) each
        lp_now = length_penalty(new_len, c.length_penalty)
        picked: list[tuple[int, int, float, float]] = []  # per new row: (parent row, token, score, token log p)
        for bi in range(nb):
            live: list[tuple[int, int, float, float]] = []
            ended: list[tuple[int, int, float, float]] = []
            for rank, (sc, idx) in enumerate(zip(scores_l[bi], idx_l[bi])):
                row, col = bi * k_beam + idx // w, idx % w
                tok, lp = ids_l[row][col], lps_l[row][col]
                if tok == eos_id:
                    # a finished hypothesis: EOS among the first K candidates
                    if rank < k_beam and math.isfinite(sc):
                        finished[st.alive[bi]].append(_Final(sc / lp_now, st.position, row, tok, lp, True))
                    ended.append((row, tok, float("-inf"), lp))
                elif len(live) < k_beam:  # next live beams: the best K non-EOS candidates, in score order
                    live.append((row, tok, sc, lp))
            # a row's tokens are distinct, so at most K of the 2K are EOS and K live beams are found; were
            # it otherwise, EOS candidates would fill the beam as dead (-inf) rows
            picked += live + ended[: k_beam - len(live)]
        parent_l, token_l, score_l, chosen_l = zip(*picked)
        device = st.scores.device
        parent = torch.tensor(parent_l, dtype=torch.long, device=device)  # (N,)
        token = torch.tensor(token_l, dtype=torch.long, device=device)  # (N,)
        new_scores = torch.tensor(score_l, dtype=st.scores.dtype, device=device)  # (N,)
        chosen = torch.tensor(chosen_l, dtype=st.top_lp.dtype, device=device)  # (N,)
        done = []
        for bi, si in enumerate(st.alive):
            if st.at_limit[bi]:  # length cap: the live beams end here, unfinished
                for r in range(bi * k_beam, (bi + 1) * k_beam):
                    if math.isfinite(score_l[r]):
                        finished[si].append(_Final(score_l[r] / lp_now, st.position, parent_l[r], token_l[r], chosen_l[r], False))
                done.append(True)
                continue
            finished[si].sort(key=lambda f: -f.score)
            del finished[si][k_beam:]
            stop = False
            if len(finished[si]) >= k_beam:
                if c.early_stopping:
                    stop = True
                else:
                    # best score any live beam can still reach (exact for alpha >= 0)
                    best_live = score_l[bi * k_beam]
                    bound_len = st.max_new[si] + st.prefix_length if c.length_penalty > 0 else new_len
                    bound = best_live / length_penalty(bound_len, c.length_penalty)
                    stop = bound <= finished[si][-1].score
            done.append(stop)
        return Choice(new_scores, token, parent, chosen, done, reorder=True)


STRATEGY_CLASSES = {"greedy": Greedy, "beam": Beam, "sample": Sample}


def draft_tokens(draft: list[int] | None, config, limit: int) -> list[int]:
    """The part of `draft` worth feeding: its tokens before its first EOS (no position follows an EOS) or
    first id outside the vocabulary, at most `limit` (positions after the last the sentence may have
    are never read)."""
    out: list[int] = []
    for tok in draft or []:
        if len(out) >= limit or tok == config.eos_id or not 0 <= tok < config.vocab_size:
            break
        out.append(int(tok))
    return out


def _non_finite(position: int) -> DecodingError:
    return DecodingError(f"the model produced non-finite log-probabilities at target position {position} "
                         "(NaN or infinite weights or config values); no translation")


def _compiled_loop(model: Decoder):
    """The compiled step this run is bound to, when it can run the greedy and beam loops (see `search`'s `stream`),
    else None."""
    if not isinstance(model, InferenceEngine):
        return None
    step = model.compiled_step()
    return step if step is not None and hasattr(step, "beam") else None


def _apply_rules(rules: list[SourceRules | None], sentence_of_row: list[int], rows_so_far: Tensor,
                 logp: Tensor, raw: Tensor | None) -> None:
    """Set to -inf, in place in `logp` (N, V) and `raw` (N, V), the tokens each row's rules rule out next, given
    its tokens so far `rows_so_far` (N, t)."""
    window = max(r.window for r in rules if r is not None)
    tails = rows_so_far[:, -window:].tolist() if rows_so_far.size(1) else [[] for _ in sentence_of_row]
    targets = [logp] if raw is None else [logp, raw]
    for row, si in enumerate(sentence_of_row):
        rule = rules[si]
        if rule is None:
            continue
        only, ruled_out = rule.ruled_out(tails[row])
        for scores in targets:
            if only is not None:
                keep = scores[row, only]  # advanced indexing: a copy
                scores[row].fill_(float("-inf"))
                scores[row, only] = keep
            elif ruled_out:
                scores[row, ruled_out] = float("-inf")


def _rows(out: StepOutput, index: Tensor) -> StepOutput:
    """The rows `index` (N_new,) of every tensor of a decoder output."""
    return StepOutput(*(None if t is None else t.index_select(0, index)
                        for t in (out.logits, out.self_attention, out.cross_attention, out.hidden)))


@torch.inference_mode()
def search(
    model: Decoder,
    src: Tensor,
    config: DecodeConfig,
    prefix: list[int] | None = None,
    need_weights: bool = False,
    draft: list[int] | None = None,
    stream: bool = True,
    rules: Sequence[SourceRules | None] | None = None,
) -> Iterator[SearchStep | SearchDone]:
    """Decode a batch of sources.

    src: (B, S) ids padded with pad_id (each row ends with EOS before padding).
    prefix: target ids forced at the start of every sentence's translation.
    need_weights: capture cross / decoder-self / encoder-self attention.
    draft: target ids expected after the prefix (a guess of the output, such as an earlier translation of a
    similar text): verified in one pass, never forced (see the module docstring); beam search ignores it.
    stream: yield a SearchStep after every step. False: only the SearchDone, which lets greedy decoding and beam
    search on the fast path (no attention, no draft) run their whole loop in the compiled step when it is in
    use, with the same result.
    rules: per sentence, the output rules of constraints.py (None: none), applied to every row's distribution
    before anything is chosen or recorded.
    """
    if rules is not None and not any(r is not None and r.active for r in rules):
        rules = None
    if (rules is not None and not stream and config.strategy == "greedy" and not need_weights and not draft
            and _compiled_loop(model) is not None):
        yield _greedy_checked(model, src, config, list(prefix or []), list(rules))
        return
    yield from _search(model, src, config, prefix, need_weights, draft, stream, rules)


def _greedy_checked(model: Decoder, src: Tensor, config: DecodeConfig, prefix: list[int],
                    rules: list[SourceRules | None]) -> SearchDone:
    """Greedy decoding with rules, for the result only: the compiled loop decodes without them, and a sentence whose
    tokens and alternatives the rules would have left as they are keeps that result (greedy takes the best token;
    ruling out tokens it did not take, and that no alternative shows, changes nothing); the other sentences are
    decoded again with the rules, by the Python loop."""
    free = _last(_search(model, src, config, prefix, False, None, False, None))
    redo = [si for si, rule in enumerate(rules) if rule is not None and not _obeys(rule, free.hypotheses[si][0], len(prefix))]
    if not redo:
        return free
    rows = torch.tensor(redo, dtype=torch.long, device=src.device)
    again = _last(_search(model, src.index_select(0, rows), config, prefix, False, None, False, [rules[si] for si in redo]))
    hyps = list(free.hypotheses)
    for j, si in enumerate(redo):
        hyps[si] = again.hypotheses[j]
    return SearchDone(hyps, None, free.steps + again.steps)


def _obeys(rule: SourceRules, hyp: SearchHypothesis, start: int) -> bool:
    """Whether `rule` would have left `hyp` as it is: its tokens after the forced `start` ones and the alternatives
    at every position are all tokens the rule allows there."""
    tokens = hyp.tokens
    for i, alts in enumerate(hyp.alt_ids.tolist()):
        only, banned = rule.ruled_out(tokens[:i])
        shown = alts + [tokens[i]] if i >= start else alts
        if (only is not None and not set(shown) <= set(only)) or (banned and set(shown) & set(banned)):
            return False
    return True


def _last(events: Iterator[SearchStep | SearchDone]) -> SearchDone:
    """The SearchDone a search ends with (its steps consumed)."""
    final = None
    for final in events:
        pass
    assert isinstance(final, SearchDone)
    return final


def _search(model: Decoder, src: Tensor, config: DecodeConfig, prefix: list[int] | None, need_weights: bool,
            draft: list[int] | None, stream: bool, rules: Sequence[SourceRules | None] | None) -> Iterator[SearchStep | SearchDone]:
    """`search` itself, every argument given (see there); `rules` here is None or holds an active rule."""
    mc = model.config
    device = src.device
    b = src.size(0)
    strategy = STRATEGY_CLASSES[config.strategy](config, b)
    k_beam = strategy.width  # rows per sentence
    n = b * k_beam
    prefix = list(prefix or [])
    n_alt = config.n_alternatives
    room = mc.max_positions - 1 - len(prefix)  # target positions left after the start token and the prefix
    if room < 1:
        raise DecodingError(f"forced prefix of {len(prefix)} tokens does not fit the model's {mc.max_positions} positions")

    encoded = model.encode(src, need_weights=need_weights)
    src_len: list[int] = encoded.source_mask.sum(1).tolist()  # per sentence, its real source tokens
    max_new = [min(config.max_length(s, mc.max_positions), room) for s in src_len]
    capacity = len(prefix) + max(max_new) + 1
    # A draft token is fed as the input of the position after it: the last position a sentence may fill needs none.
    drafted = draft_tokens(draft, mc, max(max_new) - 1) if k_beam == 1 else []
    cache = model.start_cache(encoded, capacity)  # one row per sentence until the first step is taken
    banned = _banned_tensor(tuple(_banned_ids(model)), device)  # ids never generated
    rules = list(rules) if rules is not None else None
    hist = _History()

    # Beam scores: only the first beam of each sentence is live until the first free step. (N,)
    beam_scores = torch.tensor(([0.0] + [float("-inf")] * (k_beam - 1)) * b, device=device)
    seq = torch.empty(n, 0, dtype=torch.long, device=device)  # tokens of each live row
    finished: list[list[_Final]] = [[] for _ in range(b)]
    done = [False] * b

    # One top-k per row and step serves both the alternatives shown to the user and the search: beam
    # search's best 2K continuations of a sentence are among its rows' own best 2K (a candidate beaten by
    # 2K others of its own row is beaten by them overall), so it ranks K * 2K candidates instead of K * V.
    n_top = min(max(n_alt, strategy.candidates), mc.vocab_size)

    def record(out: StepOutput, t_index: int, logp: Tensor, raw: Tensor | None = None,
               sentences: list[int] | None = None, rows_so_far: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keep the next position's alternatives (and attention), read at index t_index of `out`'s new positions;
        return the rows' best (log-probs, ids), (N, n_top) each. With rules: `raw` the logits `logp` came from,
        `sentences` the alive sentences (row r belongs to sentences[r // K]) and `rows_so_far` (N, t) each row's
        tokens; the tokens the rules rule out become -inf in both."""
        position = len(hist.alt_ids)
        logp.index_fill_(-1, banned, float("-inf"))  # ids never generated; in place: nothing reads these ids later
        if rules is not None and sentences is not None:
            _apply_rules(rules, [si for si in sentences for _ in range(k_beam)], rows_so_far, logp, raw)
        top_lp, top_ids = torch.topk(logp, n_top, dim=-1)  # (N, n_top)
        # topk ranks NaN first, so a NaN anywhere in a row (or a row with nothing finite) shows in its best entry.
        # Checked on the N best values as Python floats: one tensor call per step instead of isfinite's four or five.
        if not all(map(math.isfinite, top_lp[:, 0].tolist())):
            raise _non_finite(position)
        hist.alt_ids.append(top_ids if n_top == n_alt else top_ids[:, :n_alt])
        hist.alt_lp.append(top_lp if n_top == n_alt else top_lp[:, :n_alt])
        if need_weights:
            hist.cross.append(out.cross_attention[:, :, :, t_index])  # (N, L, H, S)
            hist.self_.append(out.self_attention[:, :, :, t_index, : position + 1])  # (N, L, H, p+1): inputs 0..p
        return top_lp, top_ids

    def select(parent: Tensor, token: Tensor, chosen_lp: Tensor) -> None:
        hist.parent.append(parent)
        hist.token.append(token)
        hist.chosen_lp.append(chosen_lp)

    # -- the first pass: [start, p1..pP, d1..dD] at once (forced prefix, draft) ---------------------------
    # Every beam of a sentence starts from the same inputs, so this runs on one row per sentence; the rows
    # (cache, cross-attention keys/values and outputs) are then copied to the K beams.
    # With a draft the pass stops before the output layer: the logits of position j are one product on its states,
    # made when the search reaches j, so a draft rejected at its first token costs one output layer, not one per
    # drafted position (with int8 weights each position's product is its own call anyway: fbgemm scales per call).
    inputs = torch.tensor([[mc.decoder_start_id] + prefix + drafted], device=device).expand(b, -1)  # (B, 1+P+D)
    block = model.decode_step(inputs, cache, need_weights, logits=not drafted)  # position j at index j

    def block_logits(j: int) -> Tensor:
        """Position j's logits (rows, V) from the first pass (with a draft: from its states, as its one-token step
        computes them)."""
        if block.logits is not None:
            return block.logits[:, j].float()
        return model.logits(block.hidden[:, j].contiguous()).float()

    first = [block_logits(j) for j in range(len(prefix) + 1)]  # forced positions and the first free one, (B, V) each
    if k_beam > 1:
        beams = torch.arange(b, device=device).repeat_interleave(k_beam)  # (N,) row -> its sentence
        cache.reorder(beams)
        block = _rows(block, beams)
        first = [lg.index_select(0, beams) for lg in first]
    everyone = list(range(b))
    for j, tok in enumerate(prefix):
        logp = F.log_softmax(first[j], dim=-1)  # (N, V)
        record(block, j, logp, first[j], everyone, seq)
        tok_t = torch.full((n,), tok, dtype=torch.long, device=device)
        select(torch.arange(n, device=device), tok_t, logp[:, tok])
        beam_scores = beam_scores + hist.chosen_lp[-1]
        seq = torch.cat([seq, tok_t[:, None]], 1)
    raw_logits = first[len(prefix)]  # (N, V)
    logp = F.log_softmax(raw_logits, dim=-1)  # (N, V)
    row_lp, row_ids = record(block, len(prefix), logp, raw_logits, everyone, seq)

    alive = list(range(b))  # sentences still decoding; row r belongs to alive[r // K]
    last_partial: list[list[int]] = [[] for _ in range(b)]  # final partial of sentences already done
    step = 0
    compiled = (_compiled_loop(model) if not stream and config.strategy in ("greedy", "beam") and not need_weights
                and not drafted and rules is None else None)
    if compiled is not None:
        # the same loop in C++ (csrc/decoder_step.cpp, `Step.greedy` / `Step.beam`), for callers that only want the result
        args = (row_lp, row_ids, beam_scores, alive, max_new, len(prefix), mc.eos_id, n_alt, banned, cache.self_kv,
                cache.length, cache.cross_kv, cache.source_mask, cache.cross_mask)
        try:
            if config.strategy == "greedy":
                result = compiled.greedy(*args)
            else:
                result = compiled.beam(*args, k_beam, float(config.length_penalty), bool(config.early_stopping))
            parents, tokens, chosen_lps, alt_ids, alt_lps, ended, step, bad_position = result
        except RuntimeError:
            # e.g. fbgemm refusing NaN activations: the loop below starts over from the same state (the compiled loop
            # changed nothing it reads: the cache's length and history are as they were) and reports it as it does
            compiled = None
        else:
            if bad_position >= 0:
                raise _non_finite(bad_position)
            hist.parent += parents
            hist.token += tokens
            hist.chosen_lp += chosen_lps
            hist.alt_ids += alt_ids
            hist.alt_lp += alt_lps
            for si, score, position, row, tok, lp, eos in ended:
                finished[si].append(_Final(score, position, row, tok, lp, eos))
    while compiled is None:
        nb = len(alive)
        position = len(prefix) + step  # index of the target token chosen now
        at_limit = [step + 1 >= max_new[si] for si in alive]
        choice = strategy.step(StepInput(position, alive, at_limit, beam_scores, row_lp, row_ids, logp, raw_logits, finished,
                                         max_new, len(prefix), banned), mc.eos_id)
        parent, token, chosen, new_scores = choice.parents, choice.tokens, choice.token_lps, choice.scores
        for si, d in zip(alive, choice.done):
            done[si] = d

        if choice.reorder:
            seq = seq.index_select(0, parent)
        seq = torch.cat([seq, token[:, None]], 1)  # (N, t+1)
        step += 1
        # Sentences that are done leave the batch: their rows are dropped from everything that follows.
        keep_blocks = [bi for bi, si in enumerate(alive) if not done[si]]
        dropped = len(keep_blocks) < nb
        if dropped:
            for bi, si in enumerate(alive):
                if done[si]:
                    last_partial[si] = seq[bi * k_beam].tolist()
            keep = torch.tensor([bi * k_beam + kk for bi in keep_blocks for kk in range(k_beam)], dtype=torch.long, device=device)
            parent, token, chosen, new_scores, seq = (t.index_select(0, keep) for t in (parent, token, chosen, new_scores, seq))
            alive = [alive[bi] for bi in keep_blocks]
        select(parent, token, chosen)
        beam_scores = new_scores
        if not alive:
            break
        # Every row chose the draft's token: the first pass computed the next position's distribution already.
        i_draft = position - len(prefix)  # the draft's index at this position
        follows_draft = i_draft < len(drafted) and bool(token.eq(drafted[i_draft]).all())
        if not follows_draft:  # tokens taken from the draft show with the first one computed after them
            partial = list(last_partial)
            for bi, row in enumerate(seq[::k_beam].tolist()):  # row bi * K: the best live hypothesis of its sentence
                partial[alive[bi]] = row
            yield SearchStep(step, partial)

        if choice.reorder or dropped:
            cache.reorder(parent, same_source=not dropped)
        if follows_draft:
            if dropped:
                block = _rows(block, parent)
            raw_logits = block_logits(position + 1)
            logp = F.log_softmax(raw_logits, dim=-1)
            row_lp, row_ids = record(block, position + 1, logp, raw_logits, alive, seq)
            continue
        if block is not None:  # off the draft (or past its end): the first pass is used up
            cache.truncate(position + 1)  # the draft's positions past the tokens kept are forgotten
            drafted, block = [], None
        out = model.decode_step(token[:, None], cache, need_weights)
        raw_logits = out.logits[:, -1].float()
        logp = F.log_softmax(raw_logits, dim=-1)  # (N, V)
        row_lp, row_ids = record(out, 0, logp, raw_logits, alive, seq)

    records = _Records.of(hist)
    hyps = [
        [_trace(hist, records, f, need_weights, src_len[si]) for f in sorted(finished[si], key=lambda f: -f.score)[: config.top_beams]]
        for si in range(b)
    ]
    enc_attn = None
    if need_weights:
        enc_attn = [encoded.self_attention[si, :, :, : src_len[si], : src_len[si]] for si in range(b)]
    yield SearchDone(hyps, enc_attn, step)


@dataclass
class _Records:
    """The history's per-position tensors, each kind concatenated over positions once per search, so that tracing
    a hypothesis reads Python lists and gathers its alternatives in one call instead of a few tensor calls per
    position. Row r of position p is entry `start[p] + r` (`alt_start` for the alternatives: pre-selection rows)."""

    start: list[int]  # per p: offset of the selection's rows
    token: list[int]
    parent: list[int]
    chosen_lp: list[float]
    alt_start: list[int]  # per p: offset of the alternatives' rows
    alt_ids: Tensor  # (Σ N_p, k)
    alt_lp: Tensor  # (Σ N_p, k)

    @classmethod
    def of(cls, hist: _History) -> "_Records":
        def offsets(ts: list[Tensor]) -> list[int]:
            out, total = [], 0
            for t in ts:
                out.append(total)
                total += t.size(0)
            return out

        start = offsets(hist.token)
        flat = torch.cat(hist.token + hist.parent).tolist()  # tokens, then parents: both long
        half = len(flat) // 2
        return cls(start, flat[:half], flat[half:], torch.cat(hist.chosen_lp).tolist(),
                   offsets(hist.alt_ids), torch.cat(hist.alt_ids), torch.cat(hist.alt_lp))


def _trace(hist: _History, records: _Records, final: _Final, need_weights: bool, s_real: int) -> SearchHypothesis:
    """Follow the back-pointers from the last token to the first and gather each position's records."""
    tokens, lps, alt_rows, cross, self_ = [], [], [], [], []
    r, tok, lp = final.row, final.token, final.token_lp
    for p in range(final.position, -1, -1):
        tokens.append(tok)
        lps.append(lp)
        alt_rows.append(records.alt_start[p] + r)
        if need_weights:
            cross.append(hist.cross[p][r, :, :, :s_real])  # (L, H, S_real)
            self_.append(hist.self_[p][r])  # (L, H, p+1)
        if p > 0:
            # row r at position p was created by the selection at p-1
            i = records.start[p - 1] + r
            tok, lp, r = records.token[i], records.chosen_lp[i], records.parent[i]
    tokens.reverse()
    lps.reverse()
    alt_rows.reverse()
    rows = torch.tensor(alt_rows, dtype=torch.long, device=records.alt_ids.device)  # (T,)
    return SearchHypothesis(
        tokens=tokens,
        token_logprobs=lps,
        alt_ids=records.alt_ids.index_select(0, rows),  # (T, k)
        alt_logprobs=records.alt_lp.index_select(0, rows),
        logprob=float(sum(lps)),
        score=final.score,
        finished=final.eos,
        cross_attention=torch.stack(cross[::-1], dim=2) if need_weights else None,  # (L, H, T, S)
        self_attention=_stack_self(self_[::-1]) if need_weights else None,
    )


def _stack_self(rows: list[Tensor]) -> Tensor:
    """Rows of growing width p+1 -> (L, H, T, T) with future positions exactly 0."""
    t = len(rows)
    l, h, _ = rows[0].shape
    out = rows[0].new_zeros(l, h, t, t)
    for i, r in enumerate(rows):
        out[:, :, i, : r.size(-1)] = r
    return out
