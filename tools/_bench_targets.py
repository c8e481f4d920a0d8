"""Benchmark targets declared once, beside each benchmark, and judged the same way everywhere.

A :class:`Target` names a figure of a benchmark's result (a top-level key or
``ratios.<key>``), a bound and its direction.  Each benchmark module lists
its targets in ``TARGETS``; :func:`judge` turns a result's figures into the
``targets`` booleans every result carries and the ``verdicts`` rows (figure,
value, wanted, PASS/MISS) that ``shipslog bench all`` prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = ["Target", "judge"]


@dataclasses.dataclass(frozen=True)
class Target:
    """``figure`` (``"open_ms_1m"`` or ``"ratios.load_vs_torch_load"``) must be ``op`` (``<=``/``>=``) ``bound``."""

    key: str
    figure: str
    op: str
    bound: float
    label: str

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"a target's op is '<=' or '>=', got {self.op!r}")

    def value(self, result: dict[str, Any]) -> float:
        """The figure's value in ``result``."""
        found: Any = result
        for part in self.figure.split("."):
            found = found[part]
        return float(found)

    def met(self, result: dict[str, Any]) -> bool:
        """Whether ``result`` meets the target."""
        value = self.value(result)
        return value <= self.bound if self.op == "<=" else value >= self.bound


def judge(targets: Sequence[Target], result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``targets`` (key -> met) and ``verdicts`` (one row per target) filled in; returns it."""
    result["targets"] = {t.key: t.met(result) for t in targets}
    result["verdicts"] = [
        {"target": t.key, "label": t.label, "figure": t.figure, "value": round(t.value(result), 4), "wanted": f"{t.op} {t.bound:g}",
         "verdict": "PASS" if t.met(result) else "MISS"}
        for t in targets
    ]
    return result
