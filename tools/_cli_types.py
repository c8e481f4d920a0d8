"""argparse value types shared by the ``shipslog`` commands."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: an integer of 1 or more (underscores allowed, as in 1_000_000); anything else is a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of 0 or more; anything else is a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {value}")
    return value
