"""argparse types that refuse a bad flag value at parse time, with the flag named by argparse
("argument --steps: must be a whole number >= 1, got 0"), exit status 2."""

from __future__ import annotations

import argparse
import math

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


def positive_int(text: str) -> int:
    """A whole number >= 1 (steps, batch sizes, counts: 0 never means "all" here)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed, 0 <= seed < 2**64."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**64 - 1, got {value}")
    return value
