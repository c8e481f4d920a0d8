"""Run a distributed save or load on N gloo ranks, one process each, on CPU: the harness of the distributed tests.

:func:`run_ranks` starts ``world`` processes of this module (rank 0 opens the
engine on ``root``; the others pass None), waits for them (all are killed at
the timeout), and returns what each reported.  Every rank's state is one
global tensor sharded by rows over the ranks (a ``DTensor`` on a CPU device
mesh), one tensor every rank holds whole, and a plain integer, all derived
from ``seed`` and the step alone, so a checkpoint saved by N ranks can be
checked after a load into M.  A save acknowledged to a rank (the call
returned) is appended to ``acks-<rank>`` in ``work`` and fsynced before the
next.  Imports torch (in the ranks only).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from shipslog.journal import CRASH_AT_ENV, CRASH_TRACE_ENV, OS_FS, DelegatingFileSystem, FileSystem

__all__ = ["RankResult", "read_acks", "read_trace", "run_ranks", "shared_bytes"]

_MODULE = "shipslog.tools._dcp_ranks"
SCENARIOS = ("save", "save-async", "load", "shared", "choose")
_ROWS, _COLS = 48, 8


@dataclass(frozen=True)
class RankResult:
    """What one rank reported (``report``) and how its process ended (``returncode``; negative: a signal)."""

    rank: int
    returncode: int | None
    report: dict[str, Any]
    stderr_tail: str


def run_ranks(
    scenario: str,
    world: int,
    root: str,
    work: str,
    *,
    step: int | tuple[int, ...] = 1,
    seed: int = 0,
    name: str | None = None,
    fail_rank: int | None = None,
    stall_rank: int | None = None,
    die_rank: int | None = None,
    crash: dict[int, str] | None = None,
    trace: bool = False,
    hosts: int = 1,
    pg_timeout_s: float = 60.0,
    timeout_s: float = 120.0,
) -> list[RankResult]:
    """Run ``scenario`` on ``world`` ranks; one :class:`RankResult` per rank, by rank.

    ``save`` saves each step with ``save_distributed``; ``save-async`` with a
    ``DistributedCheckpointer`` (a step is acknowledged when the next save,
    or the final close, returned); ``load`` loads the newest (or ``name``).
    ``shared`` saves each step with ``shared_checkpoint``: every rank writes
    ``rank-<r>.bin`` (:func:`shared_bytes`) through its file system and
    records it, rank 0 also ``common.bin`` unrecorded; ``choose`` runs
    ``choose_verified`` over the committed checkpoints, newest first, each
    rank reading the common file and its own (reported as ``chosen``).

    ``step``: the step saved, or several saved one after the other.
    ``fail_rank`` (save only): that rank's file system fails its first write
    with ``ENOSPC``; ``stall_rank``: that rank's first write waits three
    process-group timeouts (a rank that stops reporting mid-save);
    ``die_rank``: that rank is killed in its first write, after half of it.  ``crash`` arms crash points per rank
    (``{1: "distributed.after_rank_files@2"}``); with ``trace`` each rank
    lists the crash points it hits in ``trace-<rank>`` (:func:`read_trace`).
    ``hosts`` splits the ranks into that many simulated hosts (ranks in
    order, evenly): each host gets its own local folder ``host-<h>`` in
    ``work`` as its working directory, ``TMPDIR`` and ``HOME``; only ``root``
    (the engine's) and ``work``'s rendezvous file are shared, as a shared
    file system would be.  ``pg_timeout_s`` is the
    process group's timeout; ``timeout_s`` the harness's, after which every
    rank still running is killed (its ``returncode`` is None).  ``work``
    holds the rendezvous file, the reports and the acknowledgements.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario is one of {SCENARIOS}, got {scenario!r}")
    os.makedirs(work, exist_ok=True)
    store = os.path.join(work, f"store-{time.monotonic_ns()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPSLOG_CRASH", "SHIPSLOG_KILL"))}
    steps = (step,) if isinstance(step, int) else tuple(step)
    procs = []
    for rank in range(world):
        args = [sys.executable, "-m", _MODULE, scenario, "--rank", str(rank), "--world", str(world), "--store", store,
                "--root", root, "--report", os.path.join(work, f"rank-{rank}.json"), "--acks", os.path.join(work, f"acks-{rank}"),
                "--steps", ",".join(map(str, steps)), "--seed", str(seed), "--pg-timeout", str(pg_timeout_s)]
        if name is not None:
            args += ["--name", name]
        if fail_rank is not None:
            args += ["--fail-rank", str(fail_rank)]
        if stall_rank is not None:
            args += ["--stall-rank", str(stall_rank)]
        if die_rank is not None:
            args += ["--die-rank", str(die_rank)]
        host_dir = os.path.join(work, f"host-{rank * hosts // world}")
        rank_env = dict(env)
        if hosts > 1:
            os.makedirs(os.path.join(host_dir, "tmp"), exist_ok=True)
            rank_env.update(TMPDIR=os.path.join(host_dir, "tmp"), HOME=host_dir)
        if crash and rank in crash:
            rank_env[CRASH_AT_ENV] = crash[rank]
        if trace:
            rank_env[CRASH_TRACE_ENV] = os.path.join(work, f"trace-{rank}")
        with open(os.path.join(work, f"rank-{rank}.stderr"), "w", encoding="utf-8") as err:
            procs.append(subprocess.Popen(args, cwd=host_dir if hosts > 1 else work, env=rank_env, stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    results = []
    for rank, code in enumerate(codes):
        report_path = os.path.join(work, f"rank-{rank}.json")
        report: dict[str, Any] = {}
        if os.path.exists(report_path):
            with open(report_path, encoding="utf-8") as f:
                report = json.load(f)
            os.remove(report_path)
        with open(os.path.join(work, f"rank-{rank}.stderr"), encoding="utf-8") as f:
            tail = "\n".join(f.read().strip().splitlines()[-5:])
        results.append(RankResult(rank, code, report, tail))
    return results


class _StallingWrites(DelegatingFileSystem):
    """The first write waits ``seconds`` first (a rank that stops reporting: a hung disk, a stuck process)."""

    def __init__(self, inner: FileSystem, seconds: float) -> None:
        super().__init__(inner)
        self.seconds = seconds
        self.stalled = False

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        if not self.stalled:
            self.stalled = True
            time.sleep(self.seconds)
        super().write_all(fd, data, offset)


class _DyingWrites(DelegatingFileSystem):
    """The first write stops after half of its bytes and the process dies (SIGKILL): a rank lost mid-file."""

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        view = memoryview(data)
        super().write_all(fd, view[: max(1, len(view) // 2)], offset)
        os.kill(os.getpid(), signal.SIGKILL)


class _FailingWrites(DelegatingFileSystem):
    """The first write fails with ``ENOSPC`` (a full disk on one rank)."""

    def __init__(self, inner: FileSystem) -> None:
        super().__init__(inner)
        self.failed = False

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        if not self.failed:
            self.failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write_all(fd, data, offset)


def _state(seed: int, step: int, mesh: Any, *, zeros: bool = False) -> dict[str, Any]:
    """The state every rank saves at ``step`` (or a zeroed one of the same layout, to load into)."""
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    rows = torch.randn(_ROWS, _COLS, generator=torch.Generator().manual_seed(seed * 1000 + step))
    whole = torch.arange(16, dtype=torch.float64) * (seed + step + 1)
    if zeros:
        rows, whole = torch.zeros_like(rows), torch.zeros_like(whole)
    return {"model": {"rows": distribute_tensor(rows, mesh, [Shard(0)]), "whole": whole}, "extra": {"step": -1 if zeros else step}}


def shared_bytes(seed: int, step: int, rank: int) -> bytes:
    """What rank ``rank`` writes into ``rank-<rank>.bin`` at ``step`` in the ``shared`` scenario."""
    return f"seed {seed} step {step} rank {rank}\n".encode() * (1000 + 37 * rank)


def _write_new(fs: FileSystem, path: str, data: bytes) -> None:
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fs.write_all(fd, data)
    finally:
        fs.close(fd)


def _ack(path: str, step: int) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{step}\n")
        f.flush()
        os.fsync(f.fileno())


def read_trace(work: str, rank: int) -> list[str]:
    """The crash points ``rank`` hit in a run with ``trace``, in order."""
    try:
        with open(os.path.join(work, f"trace-{rank}"), encoding="utf-8") as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def read_acks(work: str, rank: int) -> list[int]:
    """The steps whose save returned on ``rank``, in order."""
    try:
        with open(os.path.join(work, f"acks-{rank}"), encoding="utf-8") as f:
            return [int(line) for line in f.read().split() if line.isdigit()]
    except FileNotFoundError:
        return []


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shipslog-dcp-rank")
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--acks", required=True)
    parser.add_argument("--steps", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None)
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--stall-rank", type=int, default=None)
    parser.add_argument("--die-rank", type=int, default=None)
    parser.add_argument("--pg-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    import datetime
    import warnings

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from shipslog import Engine
    from shipslog.gpu import checkpoints_newest_first
    from shipslog.gpu.distributed import (
        DistributedCheckpointer,
        choose_verified,
        load_distributed,
        save_distributed,
        shared_checkpoint,
    )

    warnings.simplefilter("ignore")
    timeout = datetime.timedelta(seconds=args.pg_timeout)
    dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=args.world, timeout=timeout)
    report: dict[str, Any] = {"rank": args.rank}
    try:
        mesh = init_device_mesh("cpu", (args.world,))
        engine = Engine.open(args.root) if args.rank == 0 else None
        try:
            fs: FileSystem = OS_FS
            if args.scenario in ("save", "shared"):
                if args.fail_rank == args.rank:
                    fs = _FailingWrites(OS_FS)
                elif args.stall_rank == args.rank:
                    fs = _StallingWrites(OS_FS, 3 * args.pg_timeout)
                elif args.die_rank == args.rank:
                    fs = _DyingWrites(OS_FS)
            if args.scenario == "save":
                for step in (int(s) for s in args.steps.split(",")):
                    saved = save_distributed(engine, _state(args.seed, step, mesh), step=step, name=args.name, fs=fs)
                    _ack(args.acks, step)
                    report["checkpoint"] = vars(saved)
            elif args.scenario == "shared":
                for step in (int(s) for s in args.steps.split(",")):
                    with shared_checkpoint(engine, args.name or f"step-{step}", step=step, fs=fs) as ck:
                        _write_new(fs, os.path.join(ck.path, f"rank-{args.rank}.bin"), shared_bytes(args.seed, step, args.rank))
                        ck.record(f"rank-{args.rank}.bin")
                        if args.rank == 0:
                            with open(os.path.join(ck.path, "common.bin"), "wb") as common:
                                common.write(b"common %d\n" % step)
                    assert ck.info is not None
                    _ack(args.acks, step)
                    report["checkpoint"] = vars(ck.info)
            elif args.scenario == "choose":
                candidates = [a.path for a in checkpoints_newest_first(engine)] if engine is not None else []
                mine = f"rank-{args.rank}.bin"
                chosen = choose_verified(engine, candidates, reads=lambda rel: not rel.startswith("rank-") or rel == mine)
                report["chosen"] = None if chosen is None else vars(chosen[0])
            elif args.scenario == "save-async":
                fs = _FailingWrites(OS_FS) if args.fail_rank == args.rank else OS_FS
                # a group of its own: the background saves' collectives never interleave with the main thread's
                checkpointer = DistributedCheckpointer(engine, fs=fs, process_group=dist.new_group(backend="gloo"))
                previous: int | None = None
                for step in (int(s) for s in args.steps.split(",")):
                    checkpointer.save(_state(args.seed, step, mesh), step=step, name=args.name)
                    if previous is not None:
                        _ack(args.acks, previous)
                    previous = step
                done = checkpointer.close()
                if previous is not None:
                    _ack(args.acks, previous)
                report["checkpoint"] = None if done is None else vars(done)
            else:
                state = _state(args.seed, 0, mesh, zeros=True)
                found = load_distributed(engine, state, name=args.name)
                report["checkpoint"] = None if found is None else vars(found)
                if found is not None:
                    expected = _state(args.seed, found.step or 0, mesh)
                    local, want = state["model"]["rows"].to_local(), expected["model"]["rows"].to_local()
                    report["rows_equal"] = bool(torch.equal(local, want))
                    report["whole_equal"] = bool(torch.equal(state["model"]["whole"], expected["model"]["whole"]))
                    report["extra"] = state["extra"]["step"]
        finally:
            if engine is not None:
                engine.close()
    except Exception as exc:  # noqa: BLE001 - reported to the harness, which checks it
        report["error"] = f"{type(exc).__name__}: {exc}"
    with open(args.report, "w", encoding="utf-8") as f:
        json.dump(report, f)
    if "error" not in report:
        dist.destroy_process_group()
    # After a failed collective, torch's gloo threads can abort the interpreter's teardown ("terminate called
    # without an active exception"); the report is written, so this rank ends here, without a teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
