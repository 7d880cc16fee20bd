"""Request bookkeeping for the app, with no Textual in it: request ids, the exchanges of the running
request, the request waiting for a model, progress coalescing between the decoding thread and the UI,
and the garbage-collection policy that keeps pauses short while translations stream in.

Each request has an id; a result whose id is not the current one belongs to a superseded request and
is dropped, so a stale translation never overwrites a newer one.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DecodeConfig
from ..results import Cancelled, Translation

GC_EVERY_SENTENCES = 50  # see GcPolicy
GC_IDLE_SECONDS = 3.0


@dataclass
class Exchange:
    """The app's record of one request and its outcome."""

    id: int
    source: str
    label: str  # strategy and parameters
    model: str
    translation: Translation | None = None
    partial: str = ""
    status: str = "running"  # running | done | cancelled | failed | restored
    error: str = ""
    restored_text: str = ""
    restored_meta: dict = field(default_factory=dict)
    compare: tuple[str, str] | None = None  # (label, text) of an earlier result for the same source (re-run)

    def has_tokens(self) -> bool:
        t = self.translation
        return t is not None and bool(t.hypotheses) and bool(t.best.pieces)

    @property
    def text(self) -> str:
        if self.translation is not None:
            return self.translation.text
        return self.restored_text or self.partial

    def to_record(self) -> dict:
        t = self.translation
        rec = {"source": self.source, "translation": self.text, "strategy": self.label, "model": self.model, "status": self.status}
        if t is not None:
            rec.update({"elapsed_s": round(t.elapsed_s, 4), "score": round(t.best.score, 4) if t.hypotheses else None,
                        "nbest": [h.text for h in t.hypotheses[1:]]})
        elif self.restored_meta:
            rec.update(self.restored_meta)
        return rec


Draft = list[int] | str  # a guess of a translation (target ids or text), which may make decoding it faster


@dataclass
class Pending:
    """A request made before a model was loaded: it starts when the model it waited for is ready."""

    exchanges: list[Exchange]
    config: DecodeConfig
    prefix: list[int] | None
    drafts: dict[str, Draft] = field(default_factory=dict)  # source -> a guess of its translation (re-run, forced alternative)


@dataclass
class RequestTracker:
    exchanges: list[Exchange] = field(default_factory=list)  # every exchange of the session, restored ones first
    request_id: int = 0
    running: list[Exchange] = field(default_factory=list)  # the exchanges of the current request
    pending: Pending | None = None

    def restore(self, records: list[dict]) -> None:
        """Exchanges of an earlier session, from the saved transcript."""
        for rec in records:
            meta = {k: rec[k] for k in ("elapsed_s", "score", "nbest") if k in rec}
            self.exchanges.append(Exchange(self.next_id(), str(rec["source"]), str(rec.get("strategy", "")), str(rec.get("model", "")),
                                           status="restored", restored_text=str(rec.get("translation", "")), restored_meta=meta))

    def new_exchanges(self, segments: list[str], config: DecodeConfig, model: str, note: str = "",
                      compare: dict[str, tuple[str, str]] | None = None) -> list[Exchange]:
        """One exchange per sentence, labelled with the strategy (and the note, and which sentence it is)."""
        exchanges: list[Exchange] = []
        for i, segment in enumerate(segments):
            label = config.describe() + (f" · {note}" if note else "") + (f" · sentence {i + 1}/{len(segments)}" if len(segments) > 1 else "")
            exchanges.append(Exchange(self.next_id(exchanges), segment, label, model, compare=(compare or {}).get(segment)))
        self.exchanges.extend(exchanges)
        return exchanges

    def next_id(self, extra: list[Exchange] = ()) -> int:
        return max((e.id for e in [*self.exchanges, *extra]), default=0) + 1

    def find(self, exchange_id: int) -> Exchange | None:
        return next((e for e in self.exchanges if e.id == exchange_id), None)

    def queue(self, request: Pending) -> None:
        """No model yet: the request waits for the one loading."""
        for ex in request.exchanges:
            ex.partial = "waiting for the model to load…"
        self.running, self.pending = request.exchanges, request

    def find_running(self, exchange_id: int) -> Exchange | None:
        return next((e for e in self.running if e.id == exchange_id), None)

    def supersede(self) -> list[Exchange]:
        """Mark the running request's unfinished exchanges cancelled; returns them (their views change)."""
        cancelled = [ex for ex in self.running if ex.status == "running"]
        for ex in cancelled:
            ex.status = "cancelled"
        return cancelled

    def start(self, exchanges: list[Exchange]) -> int:
        """A new request owns the screen: returns its id."""
        self.request_id += 1
        self.running = exchanges
        return self.request_id

    def exchange_for(self, request_id: int, index: int) -> Exchange | None:
        if request_id != self.request_id or index >= len(self.running):
            return None  # superseded: a newer request owns the screen
        return self.running[index]

    def busy(self) -> bool:
        return any(e.status == "running" for e in self.running)

    def drop_pending(self, status: str, error: str = "") -> list[Exchange]:
        """The queued request will not run (its model failed, or another was chosen); returns its exchanges."""
        pending, self.pending = self.pending, None
        dropped = pending.exchanges if pending else []
        for ex in dropped:
            ex.status, ex.error = status, error
        return dropped


def resolve_seed(config: DecodeConfig) -> DecodeConfig:
    """Sampling without a seed gets a fresh one per run, written in the label so the sample can be reproduced."""
    if config.strategy == "sample" and config.seed is None:
        return config.with_(seed=random.randrange(2**31))
    return config


def decode_request(post: Callable[[object], object], worker, request_id: int, translator, texts: list[str],
                   config: DecodeConfig, prefix: list[int] | None, progress: "ProgressSlot",
                   drafts: dict[str, Draft] | None = None) -> None:
    """The body of the app's decode worker (a thread): translates `texts` in order and posts progress,
    results and failures as messages; stops at the first step after the worker is cancelled. drafts: text ->
    a guess of its translation, handed to the translator."""
    from .messages import TranslationDone, TranslationFailed, TranslationProgress

    for index, text in enumerate(texts):
        try:
            for event in translator.stream(text, config, attention=True, prefix=prefix, cancelled=lambda: worker.is_cancelled,
                                           draft=(drafts or {}).get(text)):
                if worker.is_cancelled:
                    return
                if isinstance(event, Translation):
                    post(TranslationDone(request_id, event, index))
                elif progress.offer(message := TranslationProgress(request_id, event, index), time.monotonic()):
                    post(message)
        except Cancelled:
            return
        except Exception as e:  # noqa: BLE001 - errors become notifications, never crashes
            post(TranslationFailed(request_id, str(e).splitlines()[0] if str(e) else type(e).__name__, index))


class ProgressSlot:
    """Progress is coalesced: the decoding thread keeps only the newest partial result and asks to post a
    message only when the previous one has been shown and at least `interval` seconds have passed.

    Decoding steps come every few milliseconds; redrawing the screen for each one kept the UI thread busy,
    queued keystrokes behind a backlog and, holding the GIL, slowed the decoder itself in a real terminal."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._latest = None
        self._posted = False
        self._last_post = -1e9

    def offer(self, progress, now: float) -> bool:
        """Decoding thread: keep `progress`; True when the caller should post a message for it."""
        with self._lock:
            self._latest = progress
            if self._posted or now - self._last_post < self.interval:
                return False
            self._posted, self._last_post = True, now
            return True

    def take(self, posted):
        """UI thread: the newest progress (possibly past the one posted); the next offer may post again."""
        with self._lock:
            self._posted = False
            return self._latest if self._latest is not None else posted


class GcPolicy:
    """Python's full garbage collections traverse every live object; with the libraries, the model and a
    growing transcript that froze the UI for a noticeable moment every second or two while translations
    streamed in. Objects that survived until a sentence finished are moved out of the collector's view
    (gc.freeze), so collections only look at what is new. After GC_EVERY_SENTENCES sentences, once
    nothing has been decoding for GC_IDLE_SECONDS, one real collection frees what became garbage."""

    def __init__(self) -> None:
        self.sentences_since_collect = 0

    def finished(self, sentences: int, request_finished: bool) -> float | None:
        """Sentences were just shown; returns the delay after which to call `collect_if_idle`, or None."""
        self.sentences_since_collect += sentences
        gc.freeze()
        if request_finished and self.sentences_since_collect >= GC_EVERY_SENTENCES:
            return GC_IDLE_SECONDS
        return None

    def collect_if_idle(self, busy: bool) -> None:
        if self.sentences_since_collect < GC_EVERY_SENTENCES or busy:
            return  # already done, or busy again: the next finished request schedules another try
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.sentences_since_collect = 0
