"""Parallel data: reading TSV pairs, encoding them once, length-bucketed token-count batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import TranslateError
from .tokenizer import Tokenizer

LANG_COLUMNS = {"fr": 0, "en": 1}


class DataError(TranslateError, ValueError):
    """A data file (TSV pairs, sentences) that cannot be used as given."""


def read_pairs(path: str | Path, direction: str = "fr-en", limit: int = 0) -> list[tuple[str, str]]:
    """Read a French<TAB>English file and return (source, target) pairs for `direction`."""
    try:
        src_lang, tgt_lang = direction.split("-")
        si, ti = LANG_COLUMNS[src_lang], LANG_COLUMNS[tgt_lang]
    except (ValueError, KeyError):
        raise DataError(f"direction must be fr-en or en-fr, got {direction!r}") from None
    pairs = []
    with _utf8(path) as lines:
        for n, line in enumerate(lines, 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2:
                if line.strip():
                    raise DataError(f"{path}:{n}: expected French<TAB>English")
                continue
            pairs.append((cols[si], cols[ti]))
            if limit and len(pairs) >= limit:
                break
    return pairs


@contextmanager
def _utf8(path: str | Path) -> Iterator[Iterator[str]]:
    """The lines of a text file; bytes that are not UTF-8 are the file's problem, said in one line."""
    with open(path, encoding="utf-8") as f:
        try:
            yield f
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block)") from None


def read_sources(path: str | Path, direction: str = "fr-en", limit: int = 0) -> list[str]:
    """Sentences to translate from a French<TAB>English file (the source column of `direction`) or from a
    plain text file, one sentence per line in the source language (a file whose first non-empty line has no
    tab). Empty lines are skipped."""
    with _utf8(path) as lines:
        first = next((line for line in lines if line.strip()), "")
    if "\t" in first:
        return [src for src, _ in read_pairs(path, direction, limit)]
    sources = []
    with _utf8(path) as lines:
        for line in lines:
            if line.strip():
                sources.append(line.strip())
                if limit and len(sources) >= limit:
                    break
    return sources


@dataclass
class EncodedPairs:
    """Token ids of every pair, stored flat (no pickling): ids[offsets[i]:offsets[i+1]]."""

    src_ids: np.ndarray  # (total_src,) int32
    src_offsets: np.ndarray  # (n+1,) int64
    tgt_ids: np.ndarray
    tgt_offsets: np.ndarray
    corpus_sizes: np.ndarray | None = None  # pairs per corpus when several were concatenated

    @classmethod
    def build(cls, pairs: list[tuple[str, str]], tokenizer: Tokenizer, max_len: int = 0) -> "EncodedPairs":
        src = tokenizer.encode_ids([s for s, _ in pairs])
        tgt = tokenizer.encode_target_ids([t for _, t in pairs])
        keep = [i for i in range(len(pairs)) if not max_len or (len(src[i]) <= max_len and len(tgt[i]) <= max_len)]
        src = [src[i] for i in keep]
        tgt = [tgt[i] for i in keep]

        def flat(seqs):
            lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            ids = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
            return ids, offsets

        si, so = flat(src)
        ti, to = flat(tgt)
        return cls(si, so, ti, to)

    @classmethod
    def concat(cls, parts: list["EncodedPairs"]) -> "EncodedPairs":
        """One table of several corpora, in order; `corpus_sizes` remembers where each one starts."""
        def join(ids, offsets):
            shifts = np.cumsum([0] + [int(o[-1]) for o in offsets[:-1]])
            return (np.concatenate(ids).astype(np.int32),
                    np.concatenate([[0]] + [o[1:] + s for o, s in zip(offsets, shifts)]).astype(np.int64))

        si, so = join([p.src_ids for p in parts], [p.src_offsets for p in parts])
        ti, to = join([p.tgt_ids for p in parts], [p.tgt_offsets for p in parts])
        return cls(si, so, ti, to, np.array([len(p) for p in parts], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def src(self, i: int) -> np.ndarray:
        return self.src_ids[self.src_offsets[i] : self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_ids[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]

    def save(self, path: str | Path) -> None:
        from .atomic import write_with

        sizes = self.corpus_sizes if self.corpus_sizes is not None else np.array([len(self)], dtype=np.int64)

        def build(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, src_ids=self.src_ids, src_offsets=self.src_offsets, tgt_ids=self.tgt_ids,
                         tgt_offsets=self.tgt_offsets, corpus_sizes=sizes)

        write_with(path, build)

    @classmethod
    def load(cls, path: str | Path) -> "EncodedPairs":
        with np.load(path, allow_pickle=False) as z:
            sizes = z["corpus_sizes"] if "corpus_sizes" in z.files else None
            return cls(z["src_ids"], z["src_offsets"], z["tgt_ids"], z["tgt_offsets"], sizes)


def token_batches(data: EncodedPairs, max_tokens: int, seed: int, epoch: int, shuffle: bool = True,
                  subset: np.ndarray | None = None) -> list[np.ndarray]:
    """Group pairs of similar length so that padded (source + target) tokens per batch <= max_tokens.

    Deterministic for (seed, epoch): sort by length with a seeded random tie-break,
    cut into batches, then shuffle the batch order. `subset` (pair indices, repeats allowed) limits
    the epoch to those pairs, e.g. a weighted mixture of corpora.
    """
    rng = np.random.default_rng([seed, epoch])
    pool = np.arange(len(data)) if subset is None else np.asarray(subset, dtype=np.int64)
    src_len, tgt_len = data.src_lengths[pool], data.tgt_lengths[pool]
    noise = rng.random(len(pool)) if shuffle else np.arange(len(pool)) / max(1, len(pool))
    order = pool[np.lexsort((noise, tgt_len, src_len))]
    src_len, tgt_len = data.src_lengths, data.tgt_lengths
    batches, start = [], 0
    max_s = max_t = 0
    for pos, i in enumerate(order):
        ns, nt = max(max_s, src_len[i]), max(max_t, tgt_len[i])
        if pos > start and (pos - start + 1) * (ns + nt) > max_tokens:
            batches.append(order[start:pos])
            start, ns, nt = pos, src_len[i], tgt_len[i]
        max_s, max_t = ns, nt
    if start < len(order):
        batches.append(order[start:])
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[j] for j in perm]
    return batches


def collate(data: EncodedPairs, indices: np.ndarray, pad_id: int, start_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> src (B, S), tgt_in (B, T) = [start, y1..y_{T-1}], tgt_out (B, T) = [y1..y_T=EOS], padded with pad_id."""
    srcs = [data.src(i) for i in indices]
    tgts = [data.tgt(i) for i in indices]
    s_max = max(len(s) for s in srcs)
    t_max = max(len(t) for t in tgts)
    src = np.full((len(indices), s_max), pad_id, dtype=np.int64)
    tgt_in = np.full((len(indices), t_max), pad_id, dtype=np.int64)
    tgt_out = np.full((len(indices), t_max), pad_id, dtype=np.int64)
    for r, (s, t) in enumerate(zip(srcs, tgts)):
        src[r, : len(s)] = s
        tgt_out[r, : len(t)] = t
        tgt_in[r, 0] = start_id
        tgt_in[r, 1 : len(t)] = t[:-1]
    return torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out)
