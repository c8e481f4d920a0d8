"""The crash harness behind ``shipslog torture``: kill a realistic workload at every crash point, recover, check.

1. A coverage run of the workload (:mod:`shipslog.tools._workload`) with
   ``SHIPSLOG_CRASH_TRACE`` learns which crash points it reaches and how often
   (and, from a fresh process, which points are registered).
2. For every registered point ``P`` that counts for the chosen operations and
   each chosen hit ``k`` of it (the first, the last, and in a full run one in
   the middle), a child runs the workload armed with ``SHIPSLOG_CRASH_AT=P@k``
   and dies there without clean-up (SIGKILL, or ``os._exit`` every other run).
3. A fresh checker process (``python -m shipslog.tools._torture check``)
   opens the root, so recovery runs; it records ``engine.violations`` and
   :func:`check_invariants` (deep), checks the report is consistent and that
   nothing the workload was told is done (a committed checkpoint, a pointer
   set, a finished run) was lost; closes, opens again, and checks that this
   second open recovers nothing and finds the same checkpoints, models and
   pointers.  It prints one JSON line.
   It also checks that no process of a worker incarnation journaled before
   recovery (by pid *and* create time, or by its op id for a start cut off
   before its pid was journaled) is alive after it (invariant ``workers-stopped``).
4. Crashes during recovery: for each crash whose recovery carried out actions,
   the crashed root is copied and recovery is killed at each point (and hit)
   it reaches -- the ``recovery.*`` points, the journal's, the session's --
   then a clean checker recovers and checks as above.  When the crash left
   worker processes alive, the copy would only hold the journal of processes
   the first checker stopped already: such a crash is instead repeated in a
   fresh root (the workload is deterministic), so the killed recovery meets
   live workers.

After every child that ran or recovered a workload, the harness looks for
processes whose environment names that workload's root
(:data:`~shipslog.tools._workload.WORKLOAD_ROOT_ENV`): a worker that
neither its supervisor nor recovery stopped.  Each is killed and reported as a
violation of invariant ``no-orphans``, so no run leaves a process behind.

A point is *covered* when some child actually died there.  Registered points
that count but were never covered are reported in ``uncovered`` and as
violations of invariant ``covered``, so a run passes when ``violations`` is
empty.  :func:`run_torture` returns the result as a dict.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil

from shipslog.journal import (
    CRASH_AT_ENV,
    CRASH_EXIT_CODE,
    CRASH_MODE_ENV,
    CRASH_TRACE_ENV,
    JournalReader,
)

from ._workload import (
    ALWAYS_PREFIXES,
    ENGINE_OPTIONS,
    WORKLOAD_OPS,
    WORKLOAD_ROOT_ENV,
    parse_ops,
    points_for_ops,
)

__all__ = ["TortureResult", "check_root", "kill_orphans", "run_torture", "workload_processes"]

TortureResult = dict[str, Any]

_WORKLOAD_MODULE = "shipslog.tools._workload"
_CHECK_MODULE = "shipslog.tools._torture"
_OPENED_MARK = "=opened"
_CHILD_TIMEOUT_S = 120
_QUICK_PAIRS = (
    "checkpoint.after_durable",
    "pointer.after_intended",
    "retention.after_delete",
    "worker.after_started",
    "consolidation.after_merged",
)
"""In a quick run, the crashes whose recovery is itself crashed (one of each kind of recovery work)."""
_EVERY_HIT = ("journal.before_write", "journal.after_fsync")
"""During recovery these are crashed at every hit (each of recovery's few appends, before and after it)."""
_ORPHAN_GRACE_S = 5.0
"""Seconds to wait for a killed leftover process to be gone."""
_SAME_AS_FSYNC = "journal.after_write"
"""Not crashed during recovery: with fsync off (a process crash keeps the page cache) it leaves the same
bytes as ``journal.after_fsync``; the workload's crashes cover it."""


# -- the checker (runs in a fresh child process) ----------------------------------------------


def _read_acks(acks_path: str | None) -> list[dict[str, Any]]:
    if not acks_path or not os.path.exists(acks_path):
        return []
    with open(acks_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _acked_problems(root: str, state: Any, acks: list[dict[str, Any]], reg: Any) -> list[dict[str, str]]:
    """Everything the workload was told is done must still be so (unless a retention deleted it)."""
    from shipslog.engine import RetentionIntended

    if not acks:
        return []
    retired: set[str] = set()
    for rec in JournalReader(os.path.join(root, "journal")).records():
        ev = reg.typed(rec).event
        if isinstance(ev, RetentionIntended):
            retired.update(ev.paths)
    found = []
    for ack in acks:
        kind = ack["kind"]
        if kind == "artifact":
            table = state.checkpoints if ack["artifact"] == "checkpoint" else state.models
            art = table.get(ack["name"])
            if (art is None or art.path != ack["path"]) and ack["path"] not in retired:
                found.append({"invariant": "no-acked-loss", "message": f"committed {ack['artifact']} {ack['path']} was acknowledged and is gone"})
        elif kind == "pointer":
            ptr = state.pointers.get(ack["name"])
            if ptr is None or ptr.seq < ack["seq"]:
                now = f"names {ptr.target} (set at seq {ptr.seq})" if ptr else "is unset"
                found.append(
                    {"invariant": "no-acked-loss", "message": f"pointer {ack['name']!r} was set to {ack['target']} at seq {ack['seq']} and now {now}"}
                )
        elif kind == "run":
            run = state.runs.get(ack["op"])
            if run is None or run.state != ack["state"]:
                found.append({"invariant": "no-acked-loss", "message": f"run {ack['op']} was {ack['state']} and is now {run.state if run else 'gone'}"})
        elif kind == "retention":
            for path in ack["paths"]:
                folder, _, name = path.partition("/")
                table = state.checkpoints if folder == "checkpoints" else state.models
                if (name in table and table[name].path == path) or os.path.lexists(os.path.join(root, *path.split("/"))):
                    found.append({"invariant": "no-acked-loss", "message": f"{path} was deleted by an acknowledged retention and is back"})
    return found


def _worker_problems(before: Any, after: Any, session: str) -> list[str]:
    """What is wrong with the workers after recovery: a worker op of a dead session still in progress, or a live
    process of an incarnation journaled in ``before`` (the state before recovery; None when it could not be read)."""
    from shipslog.engine import WORKER, find_worker_processes, probe_worker, worker_incarnations

    found = [
        f"worker op {op.id} ({op.state}) of session {op.session} is still in progress after recovery"
        for op in after.ops.values()
        if op.type == WORKER.name and op.session != session
    ]
    for op in worker_incarnations(before) if before is not None else []:
        info = op.info
        if op.state == "started":
            pid = int(info["pid"])
            if probe_worker(pid, float(info["create_time"]), start_ticks=info.get("start_ticks"), boot_id=info.get("boot_id") or None):
                found.append(f"worker {info.get('name')} (op {op.id}, pid {pid}) is still alive after recovery")
        alive = [p.pid for p in find_worker_processes(op.id)]
        if alive:
            found.append(f"processes {alive} carrying worker op {op.id} ({info.get('name')}, {op.state}) are still alive after recovery")
    return found


def check_root(
    root: str,
    *,
    acks: str | None = None,
    mark: str | None = None,
    operations: str | None = None,
    acked: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Open ``root`` (recovery runs), check every invariant, close, open again and check nothing is left to do.

    ``mark`` names the crash trace file: a line is appended to it when the
    first open has returned, so the harness can tell recovery's crash points
    from the rest.  ``operations`` names a host module (``--operations``):
    its types are registered and its ``check(engine, acks)`` (when defined)
    reports problems as violations of invariant ``host-check``.  ``acked``
    (instead of the ``acks`` file) lists the acknowledged results to check.
    Returns ``{"violations": [...], "recovered": [...], "outcomes": [...]}``
    (``outcomes``: what each recovery action did).
    """
    from shipslog import Engine
    from shipslog.engine import Registry, replay
    from shipslog.recovery import check_invariants

    from ._workload import host_operations

    out: list[dict[str, str]] = []
    module, types = host_operations(operations) if operations else (None, ())
    registry = Registry(types)
    if acked is None:
        acked = _read_acks(acks)

    def add(invariant: str, message: str) -> None:
        out.append({"invariant": invariant, "message": message})

    try:
        before: Any = replay(root, registry=registry)  # the worker incarnations recovery must stop (read-only)
    except Exception:  # noqa: BLE001  (damage is for Engine.open to report)
        before = None
    try:
        e = Engine.open(root, operations=types, **ENGINE_OPTIONS)
    except Exception as exc:  # noqa: BLE001  (any failure to recover is the finding)
        add("open", f"the first open after the crash failed: {type(exc).__name__}: {exc}")
        return {"violations": out, "recovered": [], "outcomes": []}
    if mark:
        with open(mark, "a", encoding="utf-8") as f:
            f.write(_OPENED_MARK + "\n")
    report = e.recovery
    try:
        for v in e.violations:
            add(v.invariant, f"reported by Engine.open: {v}")
        for v in check_invariants(e.root, e.state, registry=e.registry, live_session=e.session, deep=True):
            add(v.invariant, str(v))
        if len(report.results) != len(report.found):
            add("recovery-report", f"recovery found {len(report.found)} thing(s) and reports {len(report.results)} result(s)")
        leftover = [op.id for op in e.state.ops.values() if op.session != e.session]
        if leftover:
            add("ops-terminal", f"operations still in progress after recovery: {leftover}")
        for problem in _acked_problems(root, e.state, acked, registry):
            add(problem["invariant"], problem["message"])
        if module is not None and getattr(module, "check", None) is not None:
            for message in module.check(e, [a for a in acked if a.get("kind") == "host"]):
                add("host-check", str(message))
        for message in _worker_problems(before, e.state, e.session):
            add("workers-stopped", message)
        first = e.state
    finally:
        e.close()
    try:
        again = Engine.open(root, operations=types, **ENGINE_OPTIONS)
    except Exception as exc:  # noqa: BLE001
        add("recovery-idempotent", f"the second open failed: {type(exc).__name__}: {exc}")
        return {"violations": out, "recovered": report.found, "outcomes": [r.outcome for r in report.results]}
    try:
        if again.recovery.found:
            add("recovery-idempotent", f"a second open still recovered: {again.recovery.found}")
        for v in again.violations:
            add(v.invariant, f"after the second open: {v}")

        def view(state: Any) -> dict[str, Any]:
            return {
                "checkpoints": {n: a.path for n, a in state.checkpoints.items()},
                "models": {n: a.path for n, a in state.models.items()},
                "pointers": {n: p.target for n, p in state.pointers.items()},
            }

        if view(again.state) != view(first):
            add("recovery-idempotent", f"the second open sees {view(again.state)}, the first {view(first)}")
    finally:
        again.close()
    if replay(root, registry=registry) != again.state:
        add("replay", "a read-only replay of the journal differs from the engine's state")
    return {"violations": out, "recovered": report.found, "outcomes": [r.outcome for r in report.results]}


# -- the harness (runs in the parent) -------------------------------------------------------------


def workload_processes(root: str) -> list[psutil.Process]:
    """The live processes whose environment names workload root ``root`` (its workers and their children)."""
    wanted = os.path.abspath(root)
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.environ().get(WORKLOAD_ROOT_ENV) != wanted:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if _running(proc):
            found.append(proc)
    return found


def kill_orphans(root: str) -> list[str]:
    """Kill every live process whose environment names workload root ``root``; describe each one found.

    A crashed workload's workers outlive it (each leads its own session);
    recovery must stop them, so anything found here is a leftover.  Zombies
    (dead, waiting for a parent to reap them) do not count.
    """
    found = workload_processes(root)
    described = []
    for proc in found:
        try:
            described.append(f"pid {proc.pid} {' '.join(proc.cmdline())!r}")
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    deadline = time.monotonic() + _ORPHAN_GRACE_S
    alive = [p for p in found if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [p for p in alive if _running(p)]
    for proc in alive:
        described.append(f"pid {proc.pid} survived SIGKILL for {_ORPHAN_GRACE_S} s")
    return described


def _running(proc: psutil.Process) -> bool:
    """True while ``proc`` is alive; a zombie (dead, not reaped yet: PID 1 may take seconds) is not."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass
class _Scenario:
    """One crash (``point`` = ``P@k``), optionally followed by a crash of its recovery (``then`` = ``B@j``)."""

    label: str
    point: str
    then: str | None = None
    crashed_root: str | None = None
    index: int = 0
    rerun: bool = False
    """Crash the workload at ``point`` again in a fresh root instead of copying ``crashed_root`` (live workers)."""
    outcome: dict[str, Any] = field(default_factory=dict)


def _child_env(pycache: str | None, **extra: str) -> dict[str, str]:
    """This process's environment without any crash-point arming, plus ``extra``.

    Children keep compiled bytecode under ``pycache`` (the harness's temporary
    folder, never the source tree): hundreds of children each compiling every
    module from source would double the run time.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPSLOG_CRASH")}
    if pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    env.update(extra)
    return env


def _died(rc: int) -> bool:
    return rc in (-signal.SIGKILL, CRASH_EXIT_CODE)


def _trace_counts(path: str) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Hits before the checker's mark (the first open: recovery) and after it."""
    before: collections.Counter[str] = collections.Counter()
    after: collections.Counter[str] = collections.Counter()
    if not os.path.exists(path):
        return before, after
    current = before
    with open(path, encoding="utf-8") as f:
        for line in f:
            name = line.strip()
            if name == _OPENED_MARK:
                current = after
            elif name:
                current[name] += 1
    return before, after


_SETTLE = re.compile(r"^worker\.settle: worker \S+ \(([\w-]+)\)")


def _work_shape(point: str, recovered: Sequence[str], live_workers: int) -> tuple[str, ...]:
    """What recovery had to do after a crash at ``point``, for telling apart crashes worth crashing recovery after.

    Another hit of the same point that leaves the same file work adds nothing
    new.  Worker work is told apart by what recovery met (the states of the
    incarnations it settled, how many of their processes were alive), not by
    the point: every journal append while workers run leaves one of a few
    such shapes, and each one's recovery crashes cost a workload run.
    """
    work = [line.split(":")[0] for line in recovered]
    if "worker.settle" in work:
        states = [m.group(1) for m in map(_SETTLE.match, recovered) if m]
        others = [kind for kind in work if kind not in ("close", "worker.settle")]
        return ("workers", *states, f"live={live_workers}", *others)
    return (point, *(kind for kind in work if kind != "close"))


def _hits(count: int, full: bool) -> list[int]:
    """Which hits of a point reached ``count`` times to crash at: first, (middle,) last."""
    chosen = {1, count}
    if full and count > 2:
        chosen.add((count + 1) // 2)
    return sorted(chosen)


class _Harness:
    def __init__(
        self, workdir: str, ops: tuple[str, ...], seed: int, full: bool, log: Callable[[str], None], operations: str | None = None
    ) -> None:
        self.workdir = workdir
        self.ops = ops
        self.operations = operations
        """The host module (``--operations``) whose workload and types are tortured instead of the built-ins'."""
        self.seed = seed
        self.full = full
        self.log = log
        self.children = 0
        self.pycache = os.path.join(workdir, "pycache")
        self._ids = iter(range(1, 1 << 30))
        self.findings: list[dict[str, str]] = []
        """Violations found by the harness itself (processes left behind, a crash that did not repeat)."""

    def env(self, **extra: str) -> dict[str, str]:
        return _child_env(self.pycache, **extra)

    def _slot(self) -> str:
        path = os.path.join(self.workdir, f"r{next(self._ids):05d}")
        os.makedirs(path)
        return path

    def _run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        self.children += 1
        # cwd: never the caller's folder, where a folder named shipslog would shadow the installed package
        return subprocess.run(
            [sys.executable, *args], cwd=self.workdir, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, check=False
        )

    def workload(self, slot: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
        args = ["-m", _WORKLOAD_MODULE, os.path.join(slot, "root"), "--seed", str(self.seed), "--acks", os.path.join(slot, "acks")]
        if self.operations:
            args += ["--operations", self.operations]
        elif self.ops != WORKLOAD_OPS:
            args += ["--ops", ",".join(self.ops)]
        return self._run(args + list(extra), env)

    def check(self, slot: str, trace: str | None = None, armed: str | None = None, mode: str = "kill") -> subprocess.CompletedProcess[str]:
        env = self.env()
        args = ["-m", _CHECK_MODULE, "check", os.path.join(slot, "root"), "--acks", os.path.join(slot, "acks")]
        if self.operations:
            args += ["--operations", self.operations]
        if trace:
            env[CRASH_TRACE_ENV] = trace
            args += ["--mark", trace]
        if armed:
            env[CRASH_AT_ENV] = armed
            env[CRASH_MODE_ENV] = mode
        return self._run(args, env)

    def coverage(self) -> tuple[dict[str, str], collections.Counter[str]]:
        slot = self._slot()
        trace = os.path.join(slot, "trace")
        points = os.path.join(slot, "points.json")
        proc = self.workload(slot, self.env(**{CRASH_TRACE_ENV: trace}), "--list-points", points)
        if proc.returncode != 0:
            raise RuntimeError(f"the workload failed without any crash (exit {proc.returncode}): {proc.stderr[-2000:]}")
        with open(points, encoding="utf-8") as f:
            registered: dict[str, str] = json.load(f)
        counts, _ = _trace_counts(trace)
        for leftover in kill_orphans(os.path.join(slot, "root")):
            self.findings.append({"point": "coverage", "invariant": "no-orphans", "message": f"the workload finished and left {leftover}"})
        return registered, counts

    def _orphans(self, sc: _Scenario, slot: str, after: str) -> None:
        """Kill the processes the workload in ``slot`` left alive ``after`` something; report each (``no-orphans``)."""
        for leftover in kill_orphans(os.path.join(slot, "root")):
            self.findings.append({"point": sc.label, "invariant": "no-orphans", "message": f"{after}: {leftover} is still alive"})

    def _checked(self, sc: _Scenario, slot: str, trace: str | None) -> dict[str, Any]:
        proc = self.check(slot, trace=trace)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"violations": [{"invariant": "checker", "message": f"the checker exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"}]}
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def crash(self, sc: _Scenario) -> None:
        """Kill the workload at ``sc.point``, keep a copy of the crashed root, recover and check it."""
        slot = self._slot()
        mode = "exit" if sc.index % 2 else "kill"
        proc = self.workload(slot, self.env(**{CRASH_AT_ENV: sc.point, CRASH_MODE_ENV: mode}))
        if not _died(proc.returncode):
            sc.outcome = {"died": False, "rc": proc.returncode, "stderr": proc.stderr.strip()[-1500:]}
            self._orphans(sc, slot, f"the workload exited {proc.returncode} without reaching the point")
            return
        live = len(workload_processes(os.path.join(slot, "root")))
        keep = os.path.join(slot, "crashed")
        shutil.copytree(slot, keep, symlinks=True, ignore=shutil.ignore_patterns("crashed"))
        sc.crashed_root = keep
        trace = os.path.join(slot, "trace")
        result = self._checked(sc, slot, trace)
        self._orphans(sc, slot, "recovery after the crash returned")
        recovery_hits, _ = _trace_counts(trace)
        sc.outcome = {"died": True, "result": result, "recovery_hits": dict(recovery_hits), "live_workers": live}

    def _copy_crashed(self, sc: _Scenario) -> str:
        assert sc.crashed_root is not None
        slot = self._slot()
        for name in os.listdir(sc.crashed_root):
            src, dst = os.path.join(sc.crashed_root, name), os.path.join(slot, name)
            if os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)
        return slot

    def with_stray(self, sc: _Scenario) -> _Scenario:
        """The crashed root of ``sc`` plus what a power cut can leave beside it (a temporary file in
        staging/), so that recovery has file work to do even after a crash that left none."""
        slot = self._copy_crashed(sc)
        staging = os.path.join(slot, "root", "staging")
        os.makedirs(staging, exist_ok=True)
        with open(os.path.join(staging, ".torture.tmp-00000000"), "wb") as f:
            f.write(b"half-written by a process that died")
        keep = os.path.join(slot, "crashed")
        shutil.copytree(slot, keep, symlinks=True, ignore=shutil.ignore_patterns("crashed"))
        planted = _Scenario(label=f"{sc.label}+stray", point=sc.point, crashed_root=keep, index=sc.index)
        trace = os.path.join(slot, "trace")
        result = self._checked(planted, slot, trace)
        recovery_hits, _ = _trace_counts(trace)
        planted.outcome = {"died": True, "result": result, "recovery_hits": dict(recovery_hits)}
        return planted

    def crash_recovery(self, sc: _Scenario) -> None:
        """Copy the crashed root of ``sc.point`` (or crash the workload there again, when it left live workers),
        kill its recovery at ``sc.then``, recover cleanly and check."""
        assert sc.crashed_root is not None and sc.then is not None
        mode = "exit" if sc.index % 2 else "kill"
        if sc.rerun:
            slot = self._slot()
            first = self.workload(slot, self.env(**{CRASH_AT_ENV: sc.point, CRASH_MODE_ENV: "kill"}))
            if not _died(first.returncode):
                self._orphans(sc, slot, f"the repeated workload exited {first.returncode} without reaching the point")
                message = f"repeating the crash at {sc.point} (the workload is deterministic), it exited {first.returncode} without reaching it"
                self.findings.append({"point": sc.label, "invariant": "workload", "message": f"{message}: {first.stderr.strip()[-1500:]}"})
                sc.outcome = {"died": False}
                return
        else:
            slot = self._copy_crashed(sc)
        proc = self.check(slot, armed=sc.then, mode=mode)
        if not _died(proc.returncode):
            self._orphans(sc, slot, f"recovery exited {proc.returncode} without reaching the point")
            sc.outcome = {"died": False, "rc": proc.returncode, "stderr": proc.stderr.strip()[-1500:]}
            return
        sc.outcome = {"died": True, "result": self._checked(sc, slot, None)}
        self._orphans(sc, slot, "recovery after the crashed recovery returned")


def run_torture(
    *,
    ops: Sequence[str] | None = None,
    seed: int = 0,
    quick: bool = False,
    workdir: str | None = None,
    jobs: int = 2,
    keep: bool = False,
    log: Callable[[str], None] | None = None,
    operations: str | None = None,
) -> TortureResult:
    """Run the crash harness; return ``{"crash_points", "covered", "uncovered", "runs", "violations", "seconds", ...}``.

    ``ops`` restricts the workload and the points that count (default: every
    built-in operation).  The full run crashes the workload at the first,
    middle and last hit of every point, and crashes the recovery of every
    crash that left file work to recover (one per point and kind of work) at
    every point recovery reaches: the first, middle and last hit, and every
    one of recovery's journal appends.  ``quick`` (for ``make test``) crashes
    the workload at the first hit of each point, and the recovery of a few
    crashes at each recovery point's first hit.  ``jobs`` children run at a
    time.  ``workdir`` (default: the system's temporary folder) holds the
    roots, in a new folder removed afterwards unless ``keep``.

    ``operations`` (a host module, as ``--operations`` takes it) tortures the
    module's own operation types instead: its ``workload(engine, ack)`` is
    the workload, the points that count are its types' (``<type>.*``) and the
    journal's and recovery's, and its ``check(engine, acks)`` runs after
    every recovery; in a quick run, recovery is crashed after every one of
    its points that leaves recovery work.
    """
    started = time.monotonic()
    say = log or (lambda _msg: None)
    if operations:
        if ops:
            raise ValueError("choose either ops (built-in operations) or operations (a host module), not both")
        if os.path.isfile(operations):
            operations = os.path.abspath(operations)  # the children may run elsewhere
        from ._workload import host_operations

        chosen = tuple(t.name for t in host_operations(operations)[1])
    else:
        chosen = tuple(ops) if ops else WORKLOAD_OPS
        parse_ops(",".join(chosen))
    base = os.path.abspath(tempfile.mkdtemp(prefix="shipslog-torture-", dir=workdir))
    harness = _Harness(base, chosen, seed, not quick, say, operations)
    try:
        registered, counts = harness.coverage()
        if operations:
            host_prefixes = tuple(f"{name}." for name in chosen)
            considered = sorted(p for p in registered if p.startswith(ALWAYS_PREFIXES + host_prefixes))
        else:
            host_prefixes = ()
            considered = points_for_ops(list(registered), None if chosen == WORKLOAD_OPS else chosen)
        say(f"{len(considered)} crash point(s) count; the workload reaches {len(counts)} of the registered ones")
        scenarios: list[_Scenario] = []
        extra: list[_Scenario] = []
        for point in considered:
            for k in (_hits(counts[point], harness.full) if harness.full else [1]) if counts.get(point) else []:
                scenarios.append(_Scenario(label=f"{point}@{k}", point=f"{point}@{k}", index=len(scenarios)))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(harness.crash, scenarios))
        say(f"{len(scenarios)} workload crash(es) done in {time.monotonic() - started:.1f} s")
        pairs: list[_Scenario] = []
        shapes: set[tuple[str, ...]] = set()
        sources = list(scenarios)
        if not any("recovery.after_begun" in (sc.outcome.get("recovery_hits") or {}) for sc in scenarios):
            # Crashes of these operations leave recovery no file work (runs and sessions are settled by
            # journal records alone): crash the recovery of a stray file left beside the first crash instead.
            first = next((sc for sc in scenarios if sc.outcome.get("died")), None)
            if first is not None:
                planted = harness.with_stray(first)
                sources.append(planted)
                extra.append(planted)
        for sc in sources:
            hits = sc.outcome.get("recovery_hits") or {}
            if not sc.outcome.get("died") or "recovery.after_begun" not in hits:
                continue
            base_point = sc.point.partition("@")[0]
            quick_pair = base_point in _QUICK_PAIRS or base_point.startswith(host_prefixes or ("\0",))
            if not harness.full and sc not in extra and (not quick_pair or not sc.point.endswith("@1")):
                continue
            shape = _work_shape(base_point, sc.outcome["result"].get("recovered", []), sc.outcome.get("live_workers", 0))
            if shape in shapes:
                continue
            shapes.add(shape)
            for b, count in sorted(hits.items()):
                if b not in considered and not b.startswith("recovery."):
                    continue
                if not harness.full:
                    wanted = [1] if b.startswith(("recovery.", "session.")) else []
                elif b == _SAME_AS_FSYNC:
                    wanted = []
                elif b in _EVERY_HIT:
                    wanted = list(range(1, count + 1)) if count <= 8 else _hits(count, True)
                else:
                    wanted = _hits(count, True)
                for j in wanted:
                    pairs.append(
                        _Scenario(
                            label=f"{sc.label} then {b}@{j}",
                            point=sc.point,
                            then=f"{b}@{j}",
                            crashed_root=sc.crashed_root,
                            index=len(pairs),
                            rerun=bool(sc.outcome.get("live_workers")),
                        )
                    )
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(harness.crash_recovery, pairs))
        say(f"{len(pairs)} crash(es) during recovery done in {time.monotonic() - started:.1f} s")
        covered: set[str] = set()
        violations: list[dict[str, str]] = []
        missed: list[str] = []
        for sc in scenarios + extra + pairs:
            if not sc.outcome.get("died"):
                missed.append(sc.label)
                if sc.outcome.get("rc") not in (0, None):
                    violations.append(
                        {"point": sc.label, "invariant": "workload", "message": f"exited {sc.outcome.get('rc')} without reaching the point: {sc.outcome.get('stderr', '')}"}
                    )
                continue
            covered.add((sc.then or sc.point).partition("@")[0])
            for v in sc.outcome["result"]["violations"]:
                violations.append({"point": sc.label, "invariant": v["invariant"], "message": v["message"]})
        violations.extend(harness.findings)
        covered &= set(considered)
        uncovered = sorted(set(considered) - covered)
        for point in uncovered:
            why = "the workload never reaches it" if not counts.get(point) else "no child died there"
            violations.append({"point": point, "invariant": "covered", "message": f"registered crash point never crashed at: {why}"})
        return {
            "crash_points": considered,
            "covered": sorted(covered),
            "uncovered": uncovered,
            "runs": len(scenarios) + len(pairs),
            "crashes": len(scenarios),
            "recovery_crashes": len(pairs),
            "missed": missed,
            "processes": harness.children,
            "ops": list(chosen),
            "operations": operations,
            "seed": seed,
            "quick": quick,
            "violations": violations,
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m shipslog.tools._torture check ROOT [--acks FILE] [--mark FILE]``: the checker child."""
    parser = argparse.ArgumentParser(prog="python -m shipslog.tools._torture")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="recover ROOT, check it, print one JSON line")
    check.add_argument("root")
    check.add_argument("--acks", default=None)
    check.add_argument("--mark", default=None)
    check.add_argument("--operations", default=None, metavar="MODULE")
    args = parser.parse_args(argv)
    result = check_root(args.root, acks=args.acks, mark=args.mark, operations=args.operations)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
