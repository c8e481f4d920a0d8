"""argparse value types shared by the ``shipslog`` commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["non_negative_int", "positive_int"]


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of ``low`` or more (underscores allowed, as in 1_000_000); anything else is a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a number of {low} or more, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
"""argparse type: an integer of 1 or more."""
non_negative_int = _int_at_least(0)
"""argparse type: an integer of 0 or more."""
