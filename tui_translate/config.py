"""Frozen configuration dataclasses.

`ModelConfig` describes the architecture (it is what a model directory's
`config.json` holds), `DecodeConfig` one decoding strategy, `TrainConfig` one
training run. Checkpoints store `asdict(config)` and load it back with
`from_dict`, which rejects unknown keys so a typo never passes silently.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .errors import TranslateError

ACTIVATIONS = ("relu", "gelu", "swish", "silu", "gelu_new")
NORM_PLACEMENTS = ("post", "pre")
POSITION_LAYOUTS = ("interleaved", "split")
STRATEGIES = ("greedy", "beam", "sample")
MAX_BEAM_SIZE = 128
MAX_LENGTH_PENALTY = 10.0
BRANCH_INITS = ("xavier", "deepnet")
MAX_LENGTH_RATIO = 1000.0
MAX_LENGTH_OFFSET = 100_000


class ConfigError(TranslateError, ValueError):
    """A configuration value is out of range or unknown."""


def _from_dict(cls, data: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}")
    return cls(**data)


_POSITIVE_SIZES = ("vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff")
_RATES = ("dropout", "attention_dropout", "activation_dropout")


def _check_model_types(c: "ModelConfig") -> None:
    """Every field has its declared type and a usable value, before any size is used: a config.json
    is user-supplied, and `"d_model": "256"`, `n_heads: 0` or a NaN epsilon must be refused in one line,
    not crash later (ZeroDivisionError) or decode garbage."""
    import math

    for f in fields(c):
        value = getattr(c, f.name)
        want = {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type))
        if want is None:
            continue
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True  # JSON writes 1.0 as 1 only if someone edits it by hand; an int is a fine float
        if not ok:
            raise ConfigError(f"{f.name} must be {'an' if want is int else 'a'} {f.type}, got {value!r}")
    for name in _POSITIVE_SIZES:
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.max_positions < 2:
        raise ConfigError(f"max_positions must be >= 2, got {c.max_positions}")
    for name in _RATES:
        if not 0 <= getattr(c, name) < 1:  # also refuses NaN
            raise ConfigError(f"{name} must be in [0, 1), got {getattr(c, name)}")
    if not (math.isfinite(c.layer_norm_eps) and c.layer_norm_eps > 0):
        raise ConfigError(f"layer_norm_eps must be a finite number > 0, got {c.layer_norm_eps}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an encoder-decoder Transformer.

    The defaults are the project's own small model. Every option needed to
    represent Hugging Face `MarianMTModel` checkpoints exactly is a field here
    (post-norm, split sinusoid layout, scaled tied embeddings, final logits
    bias, activation, decoder start token), never a special case in code.
    """

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    activation: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    max_positions: int = 256
    norm_placement: str = "pre"  # "post" = paper / Marian, "pre" = normalise before each sublayer
    layer_norm_eps: float = 1e-5
    scale_embedding: bool = True  # multiply token embeddings by sqrt(d_model)
    share_embeddings: bool = True  # one embedding matrix for source and target
    tie_output: bool = True  # output projection = target embedding matrix
    final_logits_bias: bool = False
    position_layout: str = "interleaved"  # "interleaved" = paper, "split" = Marian (sin | cos halves)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    decoder_start_id: int = 1

    def __post_init__(self) -> None:
        _check_model_types(self)
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ConfigError(f"norm_placement must be one of {NORM_PLACEMENTS}")
        if self.position_layout not in POSITION_LAYOUTS:
            raise ConfigError(f"position_layout must be one of {POSITION_LAYOUTS}")
        for name in ("pad_id", "bos_id", "eos_id", "unk_id", "decoder_start_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}={value} is outside the vocabulary (size {self.vocab_size})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DecodeConfig:
    """One decoding strategy and its parameters.

    strategy: "greedy", "beam" or "sample".
    beam_size, length_penalty (GNMT alpha), top_beams (n-best returned), early_stopping: beam search.
    temperature, top_k (0 = off), top_p (1.0 = off), seed: sampling.
    Maximum target length = max_length_ratio * source length + max_length_offset
    (capped by the model's positions).
    n_alternatives: how many top-k alternatives are kept at every target position.
    keep_numbers: the output's numbers are digit runs of the source, copied (constraints.py).
    block_repeats: no word (block of up to four pieces) three times in a row (constraints.py).
    """

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    beam_size: int = 5
    length_penalty: float = 0.6
    top_beams: int = 1
    early_stopping: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = 0
    max_length_ratio: float = 1.5
    max_length_offset: int = 10
    n_alternatives: int = 5
    keep_numbers: bool = True
    block_repeats: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            # every beam is a row of the batch and of the KV cache: a huge beam is an allocation, not a search
            raise ConfigError(f"beam_size must be between 1 and {MAX_BEAM_SIZE}, got {self.beam_size}")
        if not 1 <= self.top_beams <= max(1, self.beam_size if self.strategy == "beam" else 1):
            raise ConfigError(f"top_beams must be between 1 and beam_size ({self.beam_size})")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature}")
        if not (math.isfinite(self.length_penalty) and abs(self.length_penalty) <= MAX_LENGTH_PENALTY):
            # ((5 + |Y|) / 6) ** alpha overflows (or underflows to 0, then divides by it) well before |alpha| = 1000
            raise ConfigError(f"length_penalty must be a number between -{MAX_LENGTH_PENALTY} and {MAX_LENGTH_PENALTY}, "
                              f"got {self.length_penalty}")
        if self.top_k < 0:
            raise ConfigError("top_k must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        # the model's positions cap the output anyway; the bounds keep ratio * length a finite integer
        if not (math.isfinite(self.max_length_ratio) and 0 < self.max_length_ratio <= MAX_LENGTH_RATIO):
            raise ConfigError(f"max_length_ratio must be > 0 and at most {MAX_LENGTH_RATIO:g}, got {self.max_length_ratio}")
        if not 0 <= self.max_length_offset <= MAX_LENGTH_OFFSET:
            raise ConfigError(f"max_length_offset must be between 0 and {MAX_LENGTH_OFFSET}, got {self.max_length_offset}")
        if self.n_alternatives < 1:
            raise ConfigError("n_alternatives must be >= 1")

    def max_length(self, source_length: int, max_positions: int) -> int:
        """Largest number of generated target tokens (EOS included)."""
        limit = int(self.max_length_ratio * source_length + self.max_length_offset)
        return max(1, min(limit, max_positions - 1))

    def describe(self) -> str:
        """Short human label, e.g. 'beam k=5 α=0.6' (used in transcripts and headers); an output rule turned off
        is named ('greedy free-numbers')."""
        off = ("" if self.keep_numbers else " free-numbers") + ("" if self.block_repeats else " allow-repeats")
        if self.strategy == "greedy":
            return "greedy" + off
        if self.strategy == "beam":
            extra = f" n={self.top_beams}" if self.top_beams > 1 else ""
            return f"beam k={self.beam_size} α={self.length_penalty:g}{extra}{off}"
        parts = [f"T={self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k={self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p={self.top_p:g}")
        parts.append(f"seed={self.seed}")
        return "sample " + " ".join(parts) + off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecodeConfig":
        return _from_dict(cls, data)

    def with_(self, **changes: Any) -> "DecodeConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Paths are strings so the dataclass stays JSON-able.

    train: corpora as 'PATH' or 'PATH:WEIGHT' (see corpus.py); valid: one or more validation files,
    all scored at every evaluation (early stopping and the best checkpoint follow their mean loss).
    """

    train: tuple[str, ...]
    valid: tuple[str, ...]
    out_dir: str
    direction: str = "fr-en"  # "<source>-<target>"; the TSV is French<TAB>English
    tokenizer: str | None = None  # an existing tokenizer.json; None = train one
    vocab_size: int = 8000
    model: dict[str, Any] = field(default_factory=dict)  # overrides for ModelConfig
    clean: bool = True  # language, length-ratio, copy and duplicate filters (corpus.py)
    max_tokens: int = 4096  # source + target tokens per batch (per process)
    max_len: int = 64  # drop pairs longer than this (tokens, either side)
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_steps: int = 20000
    cooldown_steps: int = 0  # the last N steps before max_steps take the rate linearly down to zero (0 = no cooldown)
    max_epochs: int = 100
    eval_every: int = 500
    eval_sentences: int = 300
    save_every: int = 250
    keep_last: int = 5
    average_last: int = 5
    patience: int = 6  # evaluations without validation-loss improvement before stopping
    seed: int = 1234
    threads: int = 0  # 0 = leave torch's default
    limit_pairs: int = 0  # 0 = use every training pair (else the first N of each corpus)
    amp: str = "none"  # "bf16" = bfloat16 autocast for the forward pass (fast on CPUs with AVX512-BF16/AMX), "none" = fp32
    init_from: str | None = None  # a model directory whose weights start the run (warm start; same tokenizer)
    branch_init: str = "xavier"  # "deepnet": attention value/output and feed-forward weights start scaled down (Transformer.scale_branch_init)

    def __post_init__(self) -> None:
        # a run saved before corpora became lists stored single paths
        if isinstance(self.train, str):
            object.__setattr__(self, "train", (self.train,))
        if isinstance(self.valid, str):
            object.__setattr__(self, "valid", (self.valid,))
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "valid", tuple(self.valid))
        if not self.train or not self.valid:
            raise ConfigError("training needs at least one --train and one --valid file")
        if self.branch_init not in BRANCH_INITS:
            raise ConfigError(f"branch-init must be one of {BRANCH_INITS}, got {self.branch_init!r}")
        if self.direction not in ("fr-en", "en-fr"):
            raise ConfigError(f"direction must be fr-en or en-fr, got {self.direction!r}")
        positive = ("vocab_size", "max_tokens", "max_len", "warmup_steps", "max_steps", "max_epochs", "eval_every",
                    "eval_sentences", "save_every", "keep_last", "average_last", "patience")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        for name in ("threads", "limit_pairs", "cooldown_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0")
        if self.cooldown_steps > self.max_steps:
            raise ConfigError(f"cooldown ({self.cooldown_steps}) cannot be longer than max-steps ({self.max_steps})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not (self.clip_norm >= 0 and math.isfinite(self.clip_norm)):
            raise ConfigError(f"clip-norm must be >= 0, got {self.clip_norm!r}")
        if self.amp not in ("none", "bf16"):
            raise ConfigError(f"amp must be none or bf16, got {self.amp!r}")

    @property
    def source_lang(self) -> str:
        return self.direction.split("-")[0]

    @property
    def target_lang(self) -> str:
        return self.direction.split("-")[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return _from_dict(cls, data)
