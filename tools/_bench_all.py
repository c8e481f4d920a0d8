"""``shipslog bench all``: every benchmark in one run, one result object, every target with its verdict.

Runs, one after the other in temporary folders under one folder:
``journal``, ``engine``, ``checkpoint`` and ``distributed`` (these two need
torch; without it they are listed under ``skipped``) and ``workers``, each
with its defaults (``quick``: small sizes, for a smoke test; the figures
then mean little).  The result holds each benchmark's own result under
``benches``, every target's row under ``verdicts`` (with the benchmark's
name), the keys of the missed ones under ``missed``, the date and the
machine's CPU count.
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["BENCHES", "run_all_benches"]

_log = logging.getLogger("shipslog.tools.bench")

BENCHES = ("journal", "engine", "checkpoint", "distributed", "workers")
_NEEDS_TORCH = ("checkpoint", "distributed")


def _runners(quick: bool) -> dict[str, Callable[[str], dict[str, Any]]]:
    def journal(folder: str) -> dict[str, Any]:
        from ._bench_journal import run_journal_bench

        return run_journal_bench(folder, **({"records": 40, "replay_events": 2000, "threads": 2, "rounds": 1} if quick else {}))

    def engine(folder: str) -> dict[str, Any]:
        from ._bench_engine import run_engine_bench

        return run_engine_bench(folder, **({"records": 20_000, "repeats": 3} if quick else {}))

    def checkpoint(folder: str) -> dict[str, Any]:
        from ._bench_checkpoint import run_checkpoint_bench

        return run_checkpoint_bench(folder, **({"mib": 2, "repeats": 1} if quick else {}))

    def distributed(folder: str) -> dict[str, Any]:
        from ._bench_distributed import run_distributed_bench

        return run_distributed_bench(folder, **({"mib": 16, "repeats": 1} if quick else {}))

    def workers(folder: str) -> dict[str, Any]:
        from ._bench_workers import run_workers_bench

        return run_workers_bench(folder, **({"rounds": 2} if quick else {}))

    return {"journal": journal, "engine": engine, "checkpoint": checkpoint, "distributed": distributed, "workers": workers}


def run_all_benches(folder: str, *, quick: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every benchmark under ``folder`` (see the module); return the one result object."""
    say = log or _log.info
    have_torch = importlib.util.find_spec("torch") is not None
    benches: dict[str, Any] = {}
    skipped: list[str] = []
    for name, run in _runners(quick).items():
        if name in _NEEDS_TORCH and not have_torch:
            skipped.append(name)
            continue
        say(f"bench {name}")
        benches[name] = run(folder)
    verdicts = [{"bench": name, **row} for name, result in benches.items() for row in result["verdicts"]]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "dir": os.path.abspath(folder),
        "benches": benches,
        "skipped": skipped,
        "verdicts": verdicts,
        "missed": [f"{v['bench']}.{v['target']}" for v in verdicts if v["verdict"] != "PASS"],
    }
