"""Random sequences of operations and crashes (hypothesis stateful), the invariants checked after every recovery.

A crash is simulated in-process: a crash hook raises at the chosen point and at
the same moment the engine's file system goes dead, so the clean-up code that
a killed process would never run cannot change a byte; then the engine is
dropped without journaling anything, and the root is opened again.  A crash
may also be armed for the recovery that follows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from _engine_helpers import SimulatedCrash, journal_records
from _recovery_helpers import DyingFileSystem, dies_at, drop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shipslog import Engine
from shipslog.engine import RetentionIntended, verify_folder
from shipslog.journal import registered_crash_points
from shipslog.recovery import check_invariants

_PREFIXES = ("journal.", "checkpoint.", "pointer.", "retention.", "run.", "session.", "recovery.")
POINTS = sorted(p for p in registered_crash_points() if p.startswith(_PREFIXES))
CHECKPOINT_POINTS = [p for p in POINTS if p.startswith("checkpoint.after_")]
RECOVERY_POINTS = [p for p in POINTS if p.startswith(("recovery.", "session.", "journal.", "retention."))]
OPTIONS: dict[str, Any] = {"fsync": False, "segment_bytes": 2048, "snapshot_every": 9}


Crash = tuple[str, int, str | None, int] | None
"""(point, its nth hit, then a point of the recovery that follows or None, its nth hit), or no crash."""


_JOURNAL = ("journal.before_write", "journal.after_write", "journal.after_fsync")


def crashes(*points: str) -> st.SearchStrategy[Any]:
    """No crash, or a crash at one of ``points`` or the journal's append points (the first or second hit),
    and perhaps one more in the recovery that follows."""
    chosen = [p for p in (*points, *_JOURNAL) if p in POINTS]
    return st.none() | st.tuples(st.sampled_from(chosen), st.integers(1, 2), st.none() | st.sampled_from(RECOVERY_POINTS), st.integers(1, 2))


class Planned(Exception):
    """Raised inside a checkpoint's block on purpose."""


class CrashAndRecover(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="shipslog-property-")
        self.root = os.path.join(self.tmp, "root")
        self.data = os.path.join(self.tmp, "train.jsonl")
        with open(self.data, "w", encoding="utf-8") as f:
            f.write('{"text": "a"}\n{"text": "b"}\n')
        self.fs = DyingFileSystem()
        self.engine: Engine | None = None
        self.acked: dict[str, str] = {}
        self.pointer_acks: dict[str, int] = {}
        self.counter = 0
        self.crashes = 0

    # -- opening, crashing, checking -------------------------------------------------------

    @initialize()
    def open_root(self) -> None:
        self.engine = self._open(None)

    def _open(self, crash: tuple[str, int] | None) -> Engine:
        """Open the root (recovery runs); with ``crash``, recovery dies there first and is opened again."""
        if crash is not None:
            with dies_at(self.fs, crash[0], crash[1]) as hit:
                try:
                    e = Engine.open(self.root, fs=self.fs, **OPTIONS)
                except SimulatedCrash:
                    e = None
            if e is not None:
                assert not hit
                return self._checked(e)
            self.fs.dead = False
        return self._checked(Engine.open(self.root, fs=self.fs, **OPTIONS))

    def _checked(self, e: Engine) -> Engine:
        assert e.violations == []
        assert check_invariants(self.root, e.state, registry=e.registry, live_session=e.session, deep=True) == []
        retired = {p for r in journal_records(self.root) if isinstance(r.event, RetentionIntended) for p in r.event.paths}
        for name, path in self.acked.items():
            if path in retired:
                continue
            assert name in e.state.checkpoints, f"acknowledged checkpoint {name} was lost"
            verify_folder(os.path.join(self.root, path), deep=True)
        for name, seq in self.pointer_acks.items():
            assert name in e.state.pointers and e.state.pointers[name].seq >= seq, f"acknowledged move of {name} was lost"
        return e

    def _do(self, op: Any, crash: Crash) -> Any:
        """Run ``op(engine)``; when ``crash`` names a point it reaches, the process "dies" there and the root is recovered."""
        assert self.engine is not None
        if crash is None:
            return op(self.engine)
        point, nth, then, then_nth = crash
        with dies_at(self.fs, point, nth) as hit:
            try:
                result = op(self.engine)
            except SimulatedCrash:
                result = None
        if not hit:
            return result
        self.crashes += 1
        drop(self.engine, self.fs)
        self.engine = None
        self.engine = self._open((then, then_nth) if then else None)
        return None

    def teardown(self) -> None:
        if self.engine is not None:
            self.fs.dead = False
            self.engine.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- rules: each operation may die at one of its crash points (and its recovery at another) --

    @rule(step=st.integers(0, 5000), files=st.integers(1, 3), crash=crashes(*CHECKPOINT_POINTS))
    def checkpoint(self, step: int, files: int, crash: Crash) -> None:
        self.counter += 1
        name = f"ck-{self.counter}"

        def op(e: Engine) -> Any:
            with e.checkpoint(name, step=step) as ck:
                for i in range(files):
                    ck.write_bytes(f"f{i}.bin" if i != 2 else "sub/f2.bin", bytes([i]) * (10 + step % 7))
                ck.write_json("config.json", {"step": step})
            return ck.info

        info = self._do(op, crash)
        if info is not None:
            self.acked[name] = info.path

    @rule(crash=crashes("checkpoint.after_begun", "checkpoint.after_file", "checkpoint.abort.after_remove"))
    def failing_checkpoint(self, crash: Crash) -> None:
        self.counter += 1
        name = f"bad-{self.counter}"

        def op(e: Engine) -> None:
            try:
                with e.checkpoint(name, step=1) as ck:
                    ck.write_bytes("f.bin", b"half")
                    raise Planned("the block failed")
            except Planned:
                pass

        self._do(op, crash)

    @precondition(lambda self: self.engine is not None and bool(self.engine.state.checkpoints))
    @rule(pointer=st.sampled_from(["best", "serving"]), pick=st.integers(0, 100), crash=crashes("pointer.after_intended", "pointer.after_write"))
    def set_pointer(self, pointer: str, pick: int, crash: Crash) -> None:
        assert self.engine is not None
        names = sorted(self.engine.state.checkpoints)
        target = names[pick % len(names)]
        info = self._do(lambda e: e.set_pointer(pointer, target), crash)
        if info is not None:
            self.pointer_acks[pointer] = info.seq

    @rule(keep=st.integers(1, 3), crash=crashes("retention.after_intended", "retention.after_delete"))
    def retain(self, keep: int, crash: Crash) -> None:
        self._do(lambda e: e.retain(keep), crash)

    @rule(steps=st.integers(0, 3), crash=crashes("run.after_started", "run.after_progress"))
    def run(self, steps: int, crash: Crash) -> None:
        def op(e: Engine) -> None:
            with e.run(self.data, required_fields=["text"]) as r:
                for i in range(steps):
                    r.progress(r.start_step + i + 1)

        self._do(op, crash)

    @rule(crash=crashes("journal.snapshot.after_write", "journal.roll.after_create"))
    def reopen(self, crash: Crash) -> None:
        """A clean close (a snapshot may be written) and an open."""
        self._do(lambda e: e.close(), crash)
        if self.engine is not None and self.engine.closed:
            self.engine = self._open(None)

    @invariant()
    def no_run_says_training_for_a_dead_session(self) -> None:
        if self.engine is None or self.engine.closed:
            return
        for run in self.engine.state.runs.values():
            assert run.state not in ("started", "validated") or run.session == self.engine.session


CrashAndRecover.TestCase.settings = settings(max_examples=60, stateful_step_count=20, deadline=None, derandomize=True)


@pytest.mark.slow
def test_random_operations_and_crashes_keep_every_invariant() -> None:
    CrashAndRecover.TestCase().runTest()
