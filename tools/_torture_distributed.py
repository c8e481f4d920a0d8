"""``shipslog torture --ops distributed``: kill a rank of a multi-rank save at every crash point, recover, load.

For each world size (2 and 4 gloo ranks on CPU, one process each) and each
way of saving (``save``: DCP through :func:`shipslog.gpu.distributed.save_distributed`;
``shared``: files every rank writes itself, through
:func:`shipslog.gpu.distributed.shared_checkpoint`, as the HF Trainer and
Lightning do under DDP) a traced run of the workload (two saves, steps 1
and 2) lists the crash points every rank reaches.  Then, for every
point the coordinator (rank 0) reaches and every point the last rank
reaches, the workload runs again in a fresh root with that rank killed
(SIGKILL) at the point's hit in the second save, and the harness requires:

* no rank hangs: every process ends before the harness's timeout, each
  survivor with the save's error unless the save committed;
* the coordinator's next open recovers the root by the single-rank rule:
  step 2 is committed exactly when the coordinator died after
  ``checkpoint.durable`` was journaled, and rolled back (no checkpoint, no
  staging folder) otherwise; step 1 is committed; no invariant is violated;
  no save acknowledged to any rank is missing;
* a load on the same number of ranks finds the newest committed checkpoint
  and every rank reads back exactly the values saved (``shared``: every
  rank chooses the newest with ``choose_verified``, and each rank's file in
  it holds exactly what that rank wrote).

``quick`` (for ``make test``) runs a seeded sample of the 2-rank points.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._dcp_ranks import read_acks, read_trace, run_ranks, shared_bytes

__all__ = ["run_distributed_torture"]

_STEPS = (1, 2)
_ROLLED_FORWARD = ("checkpoint.after_durable", "checkpoint.after_rename")
"""Coordinator crash points after which recovery rolls the save forward (``checkpoint.durable`` is journaled)."""
_QUICK_SAMPLE = 3
SCENARIOS = ("save", "shared")


def _counted_points(registered: Sequence[str], reached: set[str]) -> list[str]:
    """The points that count: every ``distributed.*`` one, and the ``checkpoint.*`` ones the coordinator reaches."""
    return sorted(p for p in registered if p.startswith("distributed.") or (p.startswith("checkpoint.") and p in reached))


def run_distributed_torture(
    *,
    worlds: Sequence[int] = (2, 4),
    scenarios: Sequence[str] = SCENARIOS,
    quick: bool = False,
    sample: int = _QUICK_SAMPLE,
    seed: int = 0,
    workdir: str | None = None,
    keep: bool = False,
    timeout_s: float = 180.0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the harness (see the module); return ``{"crash_points", "covered", "uncovered", "runs", "violations", ...}``.

    ``quick`` runs ``sample`` seeded points of each scenario on 2 ranks."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"scenarios are {SCENARIOS}, got {unknown}")
    from shipslog.gpu.distributed import (
        DCP_FORMAT,  # registers the distributed crash points in this process
    )
    from shipslog.journal import registered_crash_points

    say = log or (lambda _msg: None)
    started = time.monotonic()
    worlds = (2,) if quick else tuple(worlds)
    base = os.path.abspath(tempfile.mkdtemp(prefix="shipslog-torture-distributed-", dir=workdir))
    violations: list[dict[str, Any]] = []
    covered: set[str] = set()
    counted: set[str] = set()
    runs = 0
    try:
        for world in worlds:
            for scenario in scenarios:
                traced = os.path.join(base, f"{scenario}-w{world}-trace")
                results = run_ranks(scenario, world, os.path.join(traced, "root"), traced, step=_STEPS, seed=seed, trace=True,
                                    timeout_s=timeout_s)
                failed = [r for r in results if r.returncode != 0 or "error" in r.report]
                if failed:
                    raise RuntimeError(f"the uninterrupted {world}-rank {scenario} workload failed: {failed[0].report} "
                                       f"{failed[0].stderr_tail}")
                last = world - 1
                reached = {0: set(read_trace(traced, 0)), last: set(read_trace(traced, last))}
                points = _counted_points(list(registered_crash_points()), reached[0])
                if scenario == "shared":  # no DCP: the points of DCP's own steps (.metadata) are not on its path
                    points = [p for p in points if p in reached[0] | reached[last]]
                counted.update(points)
                kills = [(rank, point) for point in points for rank in (0, last) if point in reached[rank]]
                if quick:
                    kills = sorted(random.Random(seed).sample(kills, min(sample, len(kills))))
                say(f"{world} ranks, {scenario}: {len(kills)} kill point(s)")
                for rank, point in kills:
                    hits = read_trace(traced, rank).count(point)
                    spec = f"{point}@{hits // len(_STEPS) + 1}"  # the first hit in the second save
                    label = f"{world} ranks, {scenario}, rank {rank} killed at {spec}"
                    folder = os.path.join(base, f"{scenario}-w{world}-r{rank}-{point}")
                    problems = _one(folder, scenario, world, rank, spec, point, seed, timeout_s, DCP_FORMAT)
                    runs += 1
                    covered.add(point)
                    violations += [{"scenario": label, "point": point, "rank": rank, "world": world, "problem": p} for p in problems]
                    say(f"{label}: {'ok' if not problems else '; '.join(problems)}")
        return {
            "worlds": list(worlds),
            "scenarios": list(scenarios),
            "quick": quick,
            "seed": seed,
            "crash_points": sorted(counted),
            "covered": sorted(covered),
            "uncovered": [] if quick else sorted(counted - covered),
            "runs": runs,
            "violations": violations,
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _one(folder: str, scenario: str, world: int, rank: int, spec: str, point: str, seed: int, timeout_s: float,
         dcp_format: str) -> list[str]:
    """One kill: run, check the survivors, recover, check the root, load; the problems found."""
    from shipslog import Engine

    root = os.path.join(folder, "root")
    problems: list[str] = []
    results = run_ranks(scenario, world, root, os.path.join(folder, "save"), step=_STEPS, seed=seed, crash={rank: spec},
                        timeout_s=timeout_s)
    for r in results:
        if r.returncode is None:
            problems.append(f"rank {r.rank} hung (killed by the harness after {timeout_s} s)")
        elif r.rank == rank and r.returncode >= 0:
            problems.append(f"rank {r.rank} was not killed at {spec} (exit {r.returncode}): the point was not reached")
        elif r.rank != rank and r.returncode != 0:
            problems.append(f"rank {r.rank} exited {r.returncode} instead of reporting the failed save: {r.stderr_tail}")
    acked = {step for r in range(world) for step in read_acks(os.path.join(folder, "save"), r)}
    forward = rank == 0 and point in _ROLLED_FORWARD
    expected = {f"step-{s}" for s in _STEPS if s == 1 or forward}
    with Engine.open(root) as engine:
        committed = {name for name, art in engine.state.checkpoints.items()
                     if scenario == "shared" or (art.meta or {}).get("format") == dcp_format}
        if engine.violations:
            problems.append(f"invariants violated after recovery: {engine.violations}")
        staging = sorted(os.listdir(engine.path("staging"))) if os.path.isdir(engine.path("staging")) else []
    if committed != expected:
        problems.append(f"after recovery the committed checkpoints are {sorted(committed)}, expected {sorted(expected)}")
    lost = sorted(s for s in acked if f"step-{s}" not in committed)
    if lost:
        problems.append(f"saves acknowledged to a rank were lost: steps {lost}")
    if staging:
        problems.append(f"staging folders left after recovery: {staging}")
    newest = max(int(name.split("-")[1]) for name in committed) if committed else None
    if scenario == "shared":
        return problems + _check_shared(root, folder, world, newest, seed, timeout_s)
    loads = run_ranks("load", world, root, os.path.join(folder, "load"), seed=seed, timeout_s=timeout_s)
    for r in loads:
        found = r.report.get("checkpoint")
        if r.returncode != 0 or "error" in r.report:
            problems.append(f"the load after recovery failed on rank {r.rank}: {r.report.get('error') or r.stderr_tail}")
        elif found is None or found.get("step") != newest:
            problems.append(f"rank {r.rank} loaded {found}, not the newest committed step {newest}")
        elif not (r.report.get("rows_equal") and r.report.get("whole_equal")):
            problems.append(f"rank {r.rank} read back values that differ from those saved at step {newest}")
    return problems


def _check_shared(root: str, folder: str, world: int, newest: int | None, seed: int, timeout_s: float) -> list[str]:
    """After a recovered ``shared`` run: every rank chooses the newest checkpoint, whose rank files hold what was written."""
    problems: list[str] = []
    for r in run_ranks("choose", world, root, os.path.join(folder, "choose"), seed=seed, timeout_s=timeout_s):
        chosen = r.report.get("chosen")
        if r.returncode != 0 or "error" in r.report:
            problems.append(f"the choice after recovery failed on rank {r.rank}: {r.report.get('error') or r.stderr_tail}")
        elif (chosen or {}).get("step") != newest:
            problems.append(f"rank {r.rank} chose {chosen}, not the newest committed step {newest}")
    if newest is not None:
        for rank in range(world):
            path = os.path.join(root, "checkpoints", f"step-{newest}", f"rank-{rank}.bin")
            try:
                with open(path, "rb") as f:
                    held = f.read()
            except OSError as exc:
                problems.append(f"{path} cannot be read: {exc}")
                continue
            if held != shared_bytes(seed, newest, rank):
                problems.append(f"{path} does not hold what rank {rank} wrote at step {newest}")
    return problems
