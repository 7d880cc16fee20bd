"""Decoding flags, generated from `DecodeConfig`'s fields: names, types, defaults and choices are written
once, in the dataclass; the command line and its help follow it."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .config import STRATEGIES, DecodeConfig

_DEFAULT = DecodeConfig()

# The app, `translate` and `eval` decode with int8 weights unless --fp32 is given: on both shipped models
# their BLEU is within 0.35 of float32 on both validation sets (Tatoeba and newstest2013; the model cards
# hold the measurement) and decoding is faster.
INT8_DEFAULT = True

# field -> (flag, metavar, help); the default is appended from DecodeConfig
_FLAGS = {
    "strategy": ("--strategy", None, "decoding strategy"),
    "beam_size": ("--beam-size", "N", "beam width for --strategy beam"),
    "length_penalty": ("--length-penalty", "A", "GNMT length penalty alpha for beam search"),
    "top_beams": ("--nbest", "N", "number of beam hypotheses to return"),
    "early_stopping": ("--early-stopping", None, "beam search stops as soon as N hypotheses have finished"),
    "temperature": ("--temperature", "T", "sampling temperature"),
    "top_k": ("--top-k", "K", "sample from the K most probable tokens (0 = off)"),
    "top_p": ("--top-p", "P", "nucleus sampling mass (1.0 = off)"),
    "seed": ("--seed", "S", "random seed for sampling"),
    "max_length_ratio": ("--max-length-ratio", "R",
                         f"max target tokens = R * source tokens + {_DEFAULT.max_length_offset}"),
    "keep_numbers": ("--free-numbers", None, "let the model write any digits (default: the output's numbers are the "
                     "source's digit runs, copied)"),
    "block_repeats": ("--allow-repeats", None, "let the model repeat a word three times in a row (default: ruled out)"),
}


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """--fp32 / --int8: the weights decoding multiplies by (sets `args.int8`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fp32", dest="int8", action="store_false",
                       help="decode with float32 weights (default: int8 weights per output channel, faster, BLEU within "
                       "0.35 of float32 on the shipped models' validation sets; see their model cards)")
    group.add_argument("--int8", dest="int8", action="store_true", help="decode with int8 weights (the default)")
    parser.set_defaults(int8=INT8_DEFAULT)


def add_decode_args(parser: argparse.ArgumentParser) -> None:
    """The `decoding` argument group: one flag per user-facing DecodeConfig field."""
    group = parser.add_argument_group("decoding")
    for f in fields(DecodeConfig):
        if f.name not in _FLAGS:
            continue
        flag, metavar, text = _FLAGS[f.name]
        default = getattr(_DEFAULT, f.name)
        if isinstance(default, bool):  # a flag turns the default around
            group.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=text)
        elif f.name == "strategy":
            group.add_argument(flag, dest=f.name, choices=STRATEGIES, default=default, help=f"{text} (default: {default})")
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=default, metavar=metavar,
                               help=f"{text} (default: {default})")


def decode_config_from_args(args: argparse.Namespace) -> DecodeConfig:
    """The DecodeConfig the parsed flags describe (n-best applies to beam search only)."""
    values = {name: getattr(args, name) for name in _FLAGS}
    if values["strategy"] != "beam":
        values["top_beams"] = 1
    return DecodeConfig(**values)
