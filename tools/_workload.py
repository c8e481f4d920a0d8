"""The crash harness's workload: a realistic, deterministic day of a training host.

Run in a child process that the harness arms to die at one crash point::

    python -m shipslog.tools._workload ROOT [--ops checkpoint,pointer,...] [--seed N] [--acks FILE]
    python -m shipslog.tools._workload ROOT --operations MODULE [--acks FILE]

It opens an :class:`~shipslog.Engine` on ``ROOT`` with ``fsync=False`` (a
process killed by SIGKILL keeps the page cache, so fsync does not change what
a process crash leaves) and small journal segments and frequent snapshots, so
that segment rolls and snapshots happen too.  Then, depending on ``--ops``: a
run over a generated JSONL file with progress; checkpoints with a few files
each (``write_bytes``, ``write_json``, a subfolder, one added with
``add_file``); a Hugging Face-like folder adopted; a checkpoint whose block
raises (aborted); pointer moves; a retention pass; a model saved and pointed
to; the run finished; supervised worker processes (one that exits with an
error once, one killed by the workload, both restarted, then stopped); extra
sessions opened and closed.

With ``--operations MODULE`` the workload is instead the host's own: the
module's ``OPERATIONS`` are registered and its ``workload(engine, ack)`` runs
on the engine (``ack(**fields)`` records what it was told is done, for its
``check``).

What the engine acknowledged (a checkpoint committed, a pointer set, a run
finished, a retention done) is appended to ``--acks`` right after the call
returned, so the checker can tell that nothing acknowledged was lost.  Files
outside the root (the data file, the folder to adopt) live in ``ROOT.src``.
Every worker process carries ``SHIPSLOG_WORKLOAD_ROOT=<absolute ROOT>`` in its
environment (:data:`WORKLOAD_ROOT_ENV`), so the harness can find any process a
crashed workload left behind that recovery did not stop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import zlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import shipslog.engine  # registers the engine's crash points
import shipslog.recovery  # noqa: F401  (registers the recovery crash points)
from shipslog import Engine
from shipslog.engine import FileEntry, Health, OperationType, Registry, Supervisor, WorkerSpec
from shipslog.journal import FileSystem, registered_crash_points

from ._operations_module import OperationsModuleError, load_operations_module, operation_types

__all__ = [
    "ALWAYS_PREFIXES",
    "ENGINE_OPTIONS",
    "OP_PREFIXES",
    "WORKLOAD_OPS",
    "WORKLOAD_ROOT_ENV",
    "host_operations",
    "main",
    "parse_ops",
    "points_for_ops",
    "run_host_workload",
    "run_workload",
]

WORKLOAD_OPS: tuple[str, ...] = ("checkpoint", "pointer", "retention", "run", "session", "workers", "consolidation")
"""The operations the workload can exercise (``--ops`` chooses a subset; default: all)."""

OP_PREFIXES: dict[str, tuple[str, ...]] = {
    "checkpoint": ("checkpoint.",),
    "pointer": ("pointer.",),
    "retention": ("retention.",),
    "run": ("run.",),
    "session": ("session.",),
    "workers": ("worker.",),
    "consolidation": ("consolidation.",),
}
"""The crash points that belong to each operation, by name prefix."""

ALWAYS_PREFIXES: tuple[str, ...] = ("journal.", "recovery.")
"""Crash points that count whichever operations are chosen."""

ENGINE_OPTIONS: dict[str, Any] = {"fsync": False, "segment_bytes": 1024, "snapshot_every": 8}
"""How the workload and the checker open the root: no fsync (a process crash keeps the page cache),
segments of 1 KiB and a snapshot every 8 records, so rolls and snapshots happen in every workload."""


def parse_ops(text: str | None) -> tuple[str, ...]:
    """``"checkpoint,pointer"`` -> the operations, checked against :data:`WORKLOAD_OPS` (None or "": all)."""
    if not text:
        return WORKLOAD_OPS
    ops = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [op for op in ops if op not in WORKLOAD_OPS]
    if unknown or not ops:
        raise ValueError(f"unknown operation(s) {unknown or [text]} for --ops; choose from {','.join(WORKLOAD_OPS)}")
    return ops


def points_for_ops(points: Sequence[str], ops: Sequence[str] | None) -> list[str]:
    """The crash points that count for ``ops``: every point when ``ops`` is None (all operations),
    else the journal's, recovery's and those of the chosen operations."""
    if ops is None or set(ops) == set(WORKLOAD_OPS):
        return sorted(points)
    prefixes = ALWAYS_PREFIXES + tuple(p for op in ops for p in OP_PREFIXES[op])
    return sorted(p for p in points if p.startswith(prefixes))


WORKLOAD_ROOT_ENV = "SHIPSLOG_WORKLOAD_ROOT"
"""Set (to the absolute root) in the environment of every worker process the workload supervises."""

_WAIT_S = 30.0
"""Seconds the workload waits for a worker to (re)start: generous, a busy 2-core host must not fail it."""
_LOADER_SCRIPT = 'if [ -e "$1" ]; then exec sleep 1000; fi; : > "$1"; exit 3'
"""The loader worker: exits with 3 the first time (its marker file is missing), runs until stopped once restarted."""


class PlannedFailure(Exception):
    """Raised on purpose inside a checkpoint's block: the checkpoint must abort."""


class _Acks:
    """Appends one JSON line per acknowledged result (O_APPEND: a crash keeps every whole line written).

    With ``stamp``, each line also holds ``position``: ``stamp()`` when the
    result was acknowledged (the crash-image file system's count of effects).
    """

    def __init__(self, path: str | None, stamp: Callable[[], int] | None = None) -> None:
        self.path = path
        self.stamp = stamp

    def __call__(self, **fields: Any) -> None:
        if self.path is None:
            return
        if self.stamp is not None:
            fields["position"] = self.stamp()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(fields, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)


def _prepare_sources(src: str, rng: random.Random) -> tuple[str, str]:
    """The data file and the folder to adopt, outside the root (written once, the same for every seed's runs)."""
    os.makedirs(src, exist_ok=True)
    data = os.path.join(src, "train.jsonl")
    hf = os.path.join(src, "checkpoint-200")
    lines = "".join(json.dumps({"text": f"example {i}", "label": rng.randrange(4)}) + "\n" for i in range(40))
    files = {
        data: lines.encode(),
        os.path.join(hf, "config.json"): json.dumps({"model_type": "toy", "hidden_size": 16}).encode(),
        os.path.join(hf, "model.safetensors"): rng.randbytes(2048),
        os.path.join(hf, "trainer_state.json"): json.dumps({"global_step": 200}).encode(),
        os.path.join(hf, "tokenizer", "tokenizer.json"): json.dumps({"vocab": ["a", "b"]}).encode(),
    }
    for path, content in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    return data, hf


def _checkpoint(e: Engine, ack: _Acks, rng: random.Random, name: str, step: int, *, extra: bool = False) -> None:
    with e.checkpoint(name, step=step, meta={"lr": 0.001, "step": step}) as ck:
        ck.write_bytes("model.bin", rng.randbytes(1500 + step))
        ck.write_json("config.json", {"step": step, "name": name})
        ck.write_bytes("optim/state.bin", rng.randbytes(700))
        if extra:  # written by "another writer" straight into staging, then recorded
            blob = rng.randbytes(300)
            with open(os.path.join(ck.path, "extra.bin"), "wb") as f:
                f.write(blob)
            ck.add_file(FileEntry("extra.bin", len(blob), zlib.crc32(blob)))
    assert ck.info is not None
    ack(kind="artifact", artifact="checkpoint", name=name, path=ck.info.path)


def _pointer(e: Engine, ack: _Acks, name: str, target: str) -> None:
    info = e.set_pointer(name, target)
    ack(kind="pointer", name=name, target=info.target, seq=info.seq)


def _restarted(name: str) -> Callable[[Supervisor], bool]:
    """A :meth:`Supervisor.wait_until` predicate: worker ``name``'s first restart runs."""

    def predicate(sv: Supervisor) -> bool:
        status = sv.workers()[name]
        return status.attempt >= 1 and status.health is Health.HEALTHY and status.pid is not None

    return predicate


def _workers(e: Engine, root: str, src: str, seed: int) -> None:
    """Supervise two workers: ``loader`` exits with 3 once and is restarted; ``trainer`` is killed and restarted; stop.

    Every step (starting, started, exited, died, the restarts with their
    seeded backoff, stopped, released) is journaled by the supervisor; the
    order is fixed, so each worker crash point is hit the same number of times
    in every run.  Raises :class:`RuntimeError` when a worker does not
    (re)start within :data:`_WAIT_S` seconds.
    """
    marker = os.path.join(src, "loader-failed-once")
    if os.path.exists(marker):
        os.remove(marker)
    common: dict[str, Any] = {
        "env": {WORKLOAD_ROOT_ENV: os.path.abspath(root)},
        "output": "devnull",  # a crashed workload's orphans must not hold the harness's pipes open
        "restart": "on-failure",
        "backoff_initial": 0.02,
        "backoff_max": 0.1,
        "backoff_jitter": 0.5,
        "stop_timeout": 2.0,
    }
    specs = [  # the long-lived one first: the first hit of each start point leaves a live worker for recovery
        WorkerSpec(name="trainer", argv=("sleep", "1000"), **common),
        WorkerSpec(name="loader", argv=("sh", "-c", _LOADER_SCRIPT, "loader", marker), **common),
    ]
    sv = Supervisor(e, specs, seed=seed)
    sv.start()
    try:
        if not sv.wait_until(_restarted("loader"), _WAIT_S):
            raise RuntimeError(f"the loader worker was not restarted after its failure: {sv.workers()['loader']}")
        first = sv.workers()["trainer"].pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        if not sv.wait_until(_restarted("trainer"), _WAIT_S):
            raise RuntimeError(f"the trainer worker was not restarted after it was killed: {sv.workers()['trainer']}")
    finally:
        sv.stop(timeout=_WAIT_S)


def run_workload(
    root: str,
    ops: Sequence[str] = WORKLOAD_OPS,
    seed: int = 0,
    acks: str | None = None,
    *,
    fs: FileSystem | None = None,
    stamp: Callable[[], int] | None = None,
) -> None:
    """Run the workload for ``ops`` on ``root`` (deterministic for a given ``seed``).

    ``fs`` (the power-loss harness's crash-image file system) is what every
    opening of the root uses; ``stamp`` stamps each acknowledgement.
    """
    chosen = set(ops)
    rng = random.Random(seed)
    ack = _Acks(acks, stamp)
    data, hf = _prepare_sources(os.fspath(root) + ".src", random.Random(seed + 1))
    artifacts = bool(chosen & {"checkpoint", "pointer", "retention"})

    def open_root() -> Engine:
        return Engine.open(root, fs=fs, **ENGINE_OPTIONS)

    e = open_root()
    run = e.run(data, required_fields=["text"]) if "run" in chosen else None

    def progress(step: int) -> None:
        if run is not None:
            run.progress(step)

    if artifacts:
        _checkpoint(e, ack, rng, "step-100", 100, extra=True)
        progress(100)
        info = e.adopt_checkpoint(hf)
        ack(kind="artifact", artifact="checkpoint", name=info.name, path=info.path)
        progress(200)
        try:
            with e.checkpoint("step-250", step=250) as ck:
                ck.write_bytes("model.bin", rng.randbytes(900))
                raise PlannedFailure("the training step blew up half-way through a save")
        except PlannedFailure:
            pass
        if "pointer" in chosen:
            _pointer(e, ack, "best", "step-100")
        _checkpoint(e, ack, rng, "step-300", 300)
        progress(300)
        if "pointer" in chosen:
            _pointer(e, ack, "best", "checkpoints/step-300")
            _pointer(e, ack, "latest", "checkpoint-200")
        _checkpoint(e, ack, rng, "step-400", 400, extra=True)
        progress(400)
        if "pointer" in chosen:
            _pointer(e, ack, "latest", "step-400")
        if "retention" in chosen:
            plan = e.retain(keep_last=2)
            ack(kind="retention", paths=plan.delete)
        with e.save_model("base", meta={"arch": "toy"}) as model:
            model.write_bytes("weights.bin", rng.randbytes(2500))
            model.write_json("config.json", {"arch": "toy"})
        assert model.info is not None
        ack(kind="artifact", artifact="model", name="base", path=model.info.path)
        if "pointer" in chosen:
            _pointer(e, ack, "serving", "models/base")
    elif run is not None:
        for step in range(10, 130, 10):
            progress(step)
    if "workers" in chosen:
        _workers(e, root, os.fspath(root) + ".src", seed)
    if run is not None:
        run.finish()
        ack(kind="run", op=run.op, state="finished", step=run.step)
    if "session" in chosen:
        for i in range(1, 7):
            e.close()
            e = open_root()
            if artifacts and i == 1:
                _checkpoint(e, ack, rng, "step-500", 500)
                if "pointer" in chosen:
                    _pointer(e, ack, "best", "step-500")
            if "run" in chosen and i == 2:
                with e.run(data) as again:
                    again.progress(again.start_step + 10)
                ack(kind="run", op=again.op, state="finished", step=again.step)
    if "consolidation" in chosen:
        _consolidation(e, ack)
    e.close()


def _consolidation(e: Engine, ack: _Acks) -> None:
    """Save a small base model and an adapter, then merge, install, point and retire through the engine.

    The merge here is a byte-level stand-in (the base's files, plus a record of the adapter that went
    into it), so that the workload needs no torch: the harness tests the operation's protocol and its
    recovery; the LoRA arithmetic is tested in tests/test_consolidation.py.
    """
    with e.save_model("toy-base") as model:
        model.write_bytes("model.safetensors", bytes(range(256)) * 8)
        model.write_json("config.json", {"arch": "toy"})
    ack(kind="artifact", artifact="model", name="toy-base", path="models/toy-base")
    with e.save_adapter("lora-1") as adapter:
        adapter.write_bytes("adapter_model.safetensors", bytes(range(64)) * 4)
        adapter.write_json("adapter_config.json", {"r": 2, "lora_alpha": 4, "target_modules": ["q"]})
    merged = e.consolidate_with(_byte_merge, base="toy-base", adapter="lora-1", into="toy-merged", pointer="serving")
    ack(kind="artifact", artifact="model", name=merged.name, path=merged.path)


def _byte_merge(
    base: str, base_files: list[FileEntry], adapter: str, adapter_files: list[FileEntry], out: str, *, fs: FileSystem
) -> tuple[list[FileEntry], dict[str, Any]]:
    """The workload's merge: copy the base's files into ``out`` and record the adapter's checksums (fsynced, through ``fs``)."""
    written: list[FileEntry] = []
    for entry in base_files:
        with open(os.path.join(base, entry.path), "rb") as f:
            data = f.read()
        written.append(_write_synced(fs, out, entry.path, data))
    record = json.dumps({"adapter": [[f.path, f.crc32] for f in adapter_files]}).encode()
    written.append(_write_synced(fs, out, "merged_from.json", record))
    return written, {"merged_modules": 1, "crc": zlib.crc32(record)}


def _write_synced(fs: FileSystem, folder: str, name: str, data: bytes) -> FileEntry:
    fd = fs.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fs.write_all(fd, data)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    return FileEntry(name, len(data), zlib.crc32(data))


def host_operations(spec: str) -> tuple[ModuleType, tuple[OperationType, ...]]:
    """The module ``spec`` names (loaded once) and its checked ``OPERATIONS``.

    The module must also define ``workload(engine, ack)``, and may define
    ``check(engine, acks) -> list of problems``; raises
    :class:`OperationsModuleError` otherwise.
    """
    module = load_operations_module(spec)
    types = operation_types(module, spec=spec)
    try:
        Registry(types)
    except ValueError as exc:
        raise OperationsModuleError(spec, f"its OPERATIONS cannot be registered beside the built-ins: {exc}") from exc
    if not callable(getattr(module, "workload", None)):
        raise OperationsModuleError(spec, "the crash harness needs workload(engine, ack), a function that runs the module's operations")
    check = getattr(module, "check", None)
    if check is not None and not callable(check):
        raise OperationsModuleError(spec, "check, when defined, must be a function check(engine, acks) -> list of problems")
    return module, types


def run_host_workload(root: str, module: ModuleType, types: tuple[OperationType, ...], acks: str | None = None) -> None:
    """Run a host module's ``workload(engine, ack)`` on ``root`` with its operation types registered."""
    ack = _Acks(acks)
    e = Engine.open(root, operations=types, **ENGINE_OPTIONS)
    try:
        module.workload(e, lambda **fields: ack(kind="host", **fields))
    finally:
        e.close()


def main(argv: list[str] | None = None) -> int:
    """The workload's command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m shipslog.tools._workload", description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--ops", default=None, help=f"comma-separated subset of {','.join(WORKLOAD_OPS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acks", default=None, metavar="FILE", help="append one JSON line per acknowledged result")
    parser.add_argument("--list-points", default=None, metavar="FILE", help="write the registered crash points (JSON) first")
    parser.add_argument("--operations", default=None, metavar="MODULE", help="run this host module's workload instead")
    args = parser.parse_args(argv)
    host: tuple[ModuleType, tuple[OperationType, ...]] | None = None
    try:
        ops = parse_ops(args.ops)
        if args.operations:
            host = host_operations(args.operations)  # imported now: its crash points are registered before they are listed
    except ValueError as exc:
        parser.error(str(exc))
    if args.list_points:
        with open(args.list_points, "w", encoding="utf-8") as f:
            json.dump(registered_crash_points(), f, sort_keys=True)
    if host is not None:
        run_host_workload(args.root, host[0], host[1], args.acks)
    else:
        run_workload(args.root, ops, args.seed, args.acks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
