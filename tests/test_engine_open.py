"""Engine.open and close: new roots, replay (whole, to a prefix, from snapshots), settling an
unclean shutdown, refusing cut-off operations, the root lock, and the closed engine."""

from __future__ import annotations

import logging
import os
from typing import Any

import msgspec
import pytest
from _engine_helpers import (
    ENGINE_CALLS,
    SimulatedCrash,
    commit_checkpoint,
    crash,
    dies_at_point,
    journal_records,
    kind_of,
    kinds,
    open_engine,
    prepared_engine,
    tree,
    write_jsonl,
)

from shipslog import Engine
from shipslog.engine import (
    CutOffOperationsError,
    EngineBrokenError,
    EngineClosedError,
    EngineLockedError,
    EngineState,
    RunInterrupted,
    RunValidated,
    SessionCrashed,
    replay,
)
from shipslog.journal import (
    JournalClosedError,
    JournalLockedError,
    encode_snapshot,
    list_snapshots,
    read_snapshot,
)

FOLDERS = sorted(["checkpoints", "journal", "models", "pointers", "quarantine", "snapshots", "staging", "adapters", "retired"])


def busy_day(e: Engine, data: str, n: int = 3) -> list[tuple[int, EngineState]]:
    """A few of every operation; returns the state after each call."""
    states = [(e.state.seq, e.state)]
    for i in range(1, n + 1):
        commit_checkpoint(e, f"step-{i * 100}", step=i * 100, meta={"i": i})
        states.append((e.state.seq, e.state))
        e.set_pointer("best", f"step-{i * 100}")
        states.append((e.state.seq, e.state))
    with e.run(data) as run:
        run.progress(n * 100 + 50)
        states.append((e.state.seq, e.state))
    states.append((e.state.seq, e.state))
    e.retain(2)
    states.append((e.state.seq, e.state))
    return states


@pytest.fixture
def data(tmp_path: Any) -> str:
    return write_jsonl(os.path.join(tmp_path, "train.jsonl"), '{"text": "a"}\n{"text": "b"}\n')


# -- a new root, and reopening ------------------------------------------------------------------


def test_a_new_root_gets_its_folders_and_a_session(root: str) -> None:
    with open_engine(root) as e:
        assert sorted(n for n in os.listdir(root) if n != "LOCK") == FOLDERS
        assert os.path.isfile(os.path.join(root, "LOCK"))
        recs = journal_records(root)
        assert [kind_of(r.event) for r in recs] == ["session.opened"]
        assert recs[0].event.op == f"session-{e.session}" and recs[0].event.pid == os.getpid()
        assert e.replayed == 0 and e.settled == []
        assert e.status().shutdown == "none"
    assert kinds(root) == ["session.opened", "session.closed"]


def test_open_refuses_a_bad_snapshot_every(root: str) -> None:
    with pytest.raises(ValueError, match="snapshot_every"):
        open_engine(root, snapshot_every=-1)
    assert not os.path.exists(root)


def test_reopening_after_close_replays_the_same_state(root: str, data: str) -> None:
    e = open_engine(root)
    busy_day(e, data)
    e.close()
    closed = e.state
    assert replay(root) == closed
    with open_engine(root) as again:
        assert again.replayed == closed.seq
        assert again.settled == []
        assert replay(root, until=closed.seq) == closed
        for field in ("checkpoints", "pointers", "runs", "latest", "global_step", "unclean_sessions", "retiring"):
            assert getattr(again.state, field) == getattr(closed, field), field
        assert again.state.previous_session is not None and again.state.previous_session.state == "closed"
        assert again.status().shutdown == "clean"
        assert replay(root) == again.state


def test_replay_until_gives_the_state_at_that_prefix(root: str, data: str) -> None:
    with open_engine(root) as e:
        states = busy_day(e, data)
        for seq, state in states:
            assert replay(root, until=seq) == state, f"replay to seq {seq} differs from the engine's state then"


def test_replay_past_the_end_is_refused(root: str) -> None:
    with open_engine(root) as e:
        end = e.state.seq
    with pytest.raises(ValueError, match=f"ends at seq {end + 1}"):
        replay(root, until=end + 5)


def test_replay_reads_a_live_root_without_changing_it(root: str, data: str) -> None:
    with open_engine(root) as e:
        busy_day(e, data, n=2)
        before = tree(root, skip=())
        state = replay(root)
        assert state == e.state
        assert tree(root, skip=()) == before


# -- snapshots ----------------------------------------------------------------------------------------


def test_snapshots_are_taken_every_n_records_and_shorten_replay(root: str, data: str) -> None:
    e = open_engine(root, snapshot_every=5)
    busy_day(e, data, n=4)
    e.close()
    snaps = list_snapshots(os.path.join(root, "snapshots"))
    assert snaps, "no snapshot was written"
    newest = read_snapshot(snaps[0][1])
    total = e.state.seq
    assert total - newest.seq < 5 + 3, "snapshots lag far behind the journal"
    with open_engine(root, snapshot_every=5) as again:
        assert again.replayed == total - newest.seq
        assert again.replayed < total
        assert replay(root) == again.state, "state from the snapshot differs from a full replay"


def test_snapshots_work_across_segment_rolls(root: str, data: str) -> None:
    e = open_engine(root, snapshot_every=3, segment_bytes=1024, preallocate=False)
    busy_day(e, data, n=5)
    e.close()
    assert len(os.listdir(os.path.join(root, "journal"))) > 2
    with open_engine(root, snapshot_every=3, segment_bytes=1024, preallocate=False) as again:
        assert again.replayed < e.state.seq
        assert replay(root) == again.state


def test_save_snapshot_while_a_checkpoint_is_open(root: str) -> None:
    e = open_engine(root, snapshot_every=1000)
    ck = e.checkpoint("open-one", step=1)
    try:
        e.save_snapshot()
    finally:
        ck.abort()
        e.close()
    with open_engine(root) as again:
        assert replay(root) == again.state


def test_without_snapshots_open_replays_everything(root: str, data: str) -> None:
    e = open_engine(root, snapshot_every=0)
    busy_day(e, data)
    e.journal.close()  # no close(): see the test below
    with open_engine(root, snapshot_every=0) as again:
        assert again.replayed == e.state.seq
        assert list_snapshots(os.path.join(root, "snapshots")) == []


def test_snapshot_every_0_writes_no_snapshot_at_close(root: str, data: str) -> None:
    e = open_engine(root, snapshot_every=0)
    busy_day(e, data)
    e.close()
    assert list_snapshots(os.path.join(root, "snapshots")) == []


def test_a_snapshot_of_a_newer_state_version_is_ignored_with_a_warning(
    root: str, data: str, caplog: pytest.LogCaptureFixture
) -> None:
    e = open_engine(root, snapshot_every=5)
    busy_day(e, data)
    e.close()
    snaps = list_snapshots(os.path.join(root, "snapshots"))
    assert snaps
    for _seq, path in snaps:
        snap = read_snapshot(path)
        payload = msgspec.msgpack.decode(snap.payload)
        payload["version"] = payload.get("version", 1) + 1
        with open(path, "wb") as f:
            f.write(encode_snapshot(snap.seq, snap.position, msgspec.msgpack.encode(payload)))
    caplog.set_level(logging.WARNING, logger="shipslog")
    with open_engine(root, snapshot_every=0) as again:
        assert again.replayed == e.state.seq, "the newer snapshot was used instead of a full replay"
        assert replay(root) == again.state
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "snapshot" in r.getMessage()]
    assert warnings and "version" in warnings[0].getMessage()


def test_a_corrupt_snapshot_is_ignored_with_a_warning(root: str, data: str, caplog: pytest.LogCaptureFixture) -> None:
    e = open_engine(root, snapshot_every=5)
    busy_day(e, data)
    e.close()
    for _seq, path in list_snapshots(os.path.join(root, "snapshots")):
        with open(path, "r+b") as f:
            f.seek(40)
            b = f.read(1)
            f.seek(40)
            f.write(bytes([b[0] ^ 0x10]))
    caplog.set_level(logging.WARNING, logger="shipslog")
    with open_engine(root, snapshot_every=0) as again:
        assert again.replayed == e.state.seq
        assert replay(root) == again.state
    assert any("snapshot" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- an unclean shutdown ------------------------------------------------------------------------------


def test_an_unclean_shutdown_is_journaled_and_reported(root: str) -> None:
    e = open_engine(root)
    old_session = e.session
    commit_checkpoint(e, "step-1", step=1)
    crash(e)
    assert kinds(root)[-1] == "checkpoint.committed"
    with open_engine(root) as again:
        crashed = [r for r in again.settled if isinstance(r.event, SessionCrashed)]
        assert len(crashed) == 1
        assert crashed[0].event.op == f"session-{old_session}"
        assert again.session in crashed[0].event.found_by
        st = again.status()
        assert st.shutdown == "unclean" and st.unclean_sessions == 1
        assert st.previous_session is not None and st.previous_session.id == f"session-{old_session}"
        assert "step-1" in again.state.checkpoints
    assert kinds(root)[-3:] == ["session.crashed", "session.opened", "session.closed"]
    with open_engine(root) as third:
        assert third.status().shutdown == "clean"
        assert third.status().unclean_sessions == 1


def test_a_run_left_started_becomes_interrupted(root: str, data: str) -> None:
    e = open_engine(root)
    commit_checkpoint(e, "step-10", step=10)
    run = e.run(data)
    run.progress(25)
    crash(e)
    with open_engine(root) as again:
        info = again.state.runs[run.op]
        assert info.state == "interrupted" and info.step == 25 and info.start_step == 10
        interrupted = [r for r in journal_records(root) if isinstance(r.event, RunInterrupted)]
        assert [r.event.op for r in interrupted] == [run.op]
        assert interrupted[0].event.step == 25
        assert again.state.ops_of("run") == []
        assert again.status().training is None
        assert [kind_of(r.event) for r in again.settled] == ["session.crashed", "run.interrupted"]


def test_a_run_left_validated_becomes_interrupted(root: str) -> None:
    e = open_engine(root)
    e.journal_events(RunValidated(op="run-hand-1", data_file="/d.jsonl", lines=1, size=2, crc32=3))
    crash(e)
    with open_engine(root) as again:
        assert again.state.runs["run-hand-1"].state == "interrupted"
        assert events_for(root, "run-hand-1") == ["run.validated", "run.interrupted"]


def events_for(root: str, op: str) -> list[str]:
    return [kind_of(r.event) for r in journal_records(root) if r.event.op == op]


# -- cut-off operations ---------------------------------------------------------------------------


def test_a_checkpoint_left_begun_is_rolled_back_at_open(root: str) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-5", step=5)
    ck.write_bytes("model.bin", b"half")
    crash(e)
    assert os.path.isdir(ck.path)
    with open_engine(root) as again:
        assert [r.action.kind for r in again.recovery.results] == ["close", "checkpoint.roll-back"]
        assert again.violations == []
        assert ck.op not in again.state.ops and "step-5" not in again.state.checkpoints
    assert not os.path.exists(ck.path) and os.listdir(os.path.join(root, "staging")) == []
    assert events_for(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert kinds(root)[-6:] == ["session.opened", "recovery.begun", "recovery.step", "checkpoint.aborted", "recovery.done", "session.closed"]


def test_a_root_needing_recovery_is_refused_with_recover_false_and_nothing_changes(root: str) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-5", step=5)
    crash(e)
    before = journal_records(root)
    with pytest.raises(CutOffOperationsError) as info:
        open_engine(root, recover=False)
    assert info.value.ops == ((ck.op, "checkpoint", "begun"),)
    assert ck.op in str(info.value) and "'begun'" in str(info.value) and "shipslog recover" in str(info.value)
    assert journal_records(root) == before, "a refused open wrote to the journal"
    assert os.path.isdir(ck.path)
    with pytest.raises(CutOffOperationsError):  # the lock was released: the same error again, not EngineLockedError
        open_engine(root, recover=False)


def test_a_checkpoint_left_durable_is_rolled_forward_at_open(root: str) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-5", step=5)
    ck.write_bytes("model.bin", b"whole")
    with dies_at_point("checkpoint.after_durable"), pytest.raises(SimulatedCrash):
        ck.commit()
    crash(e)
    with open_engine(root) as again:
        assert again.state.checkpoints["step-5"].path == "checkpoints/step-5"
        assert again.latest_checkpoint(deep=True) is not None
        assert again.violations == []
    with open(os.path.join(root, "checkpoints", "step-5", "model.bin"), "rb") as f:
        assert f.read() == b"whole"
    assert events_for(root, ck.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]


def test_every_cut_off_operation_is_recovered_oldest_first(root: str) -> None:
    e = open_engine(root)
    for i in range(1, 4):
        commit_checkpoint(e, f"c{i}", step=i)
    with dies_at_point("pointer.after_intended"), pytest.raises(SimulatedCrash):
        e.set_pointer("best", "c3")
    with dies_at_point("retention.after_intended"), pytest.raises(SimulatedCrash):
        e.retain(1)
    ck = e.checkpoint("c4", step=4)
    crash(e)
    with open_engine(root) as again:
        kinds_done = [r.action.kind for r in again.recovery.results]
        assert kinds_done == ["close", "pointer.settle", "retention.redo", "checkpoint.roll-back"]
        assert again.recovery.results[-1].action.target == ck.op
        assert again.pointer("best").endswith(os.path.join("checkpoints", "c3"))
        assert sorted(again.state.checkpoints) == ["c3"]
        assert again.violations == []


# -- the lock ------------------------------------------------------------------------------------------


def test_a_second_open_of_a_locked_root_is_refused(root: str) -> None:
    first = open_engine(root)
    try:
        before = journal_records(root)
        with pytest.raises(EngineLockedError) as info:
            open_engine(root)
        assert isinstance(info.value, JournalLockedError)
        assert str(os.getpid()) in str(info.value)
        assert journal_records(root) == before
        commit_checkpoint(first, "still-mine", step=1)
    finally:
        first.close()
    with open_engine(root) as second:
        assert "still-mine" in second.state.checkpoints


# -- closed --------------------------------------------------------------------------------------------


CLOSED_CALLS = [pytest.param(name, id=name) for name in ENGINE_CALLS]


@pytest.mark.parametrize("name", CLOSED_CALLS)
def test_every_call_after_close_raises_engine_closed(root: str, tmp_path: Any, name: str) -> None:
    e, ctx = prepared_engine(root, tmp_path)
    e.close()
    before_journal = journal_records(root)
    before_files = tree(root)
    with pytest.raises(EngineClosedError) as info:
        ENGINE_CALLS[name](e, ctx)
    assert isinstance(info.value, JournalClosedError) and not isinstance(info.value, EngineBrokenError)
    assert "closed" in str(info.value)
    assert journal_records(root) == before_journal
    assert tree(root) == before_files


def test_close_is_idempotent_and_drops_nothing_twice(root: str) -> None:
    e = open_engine(root)
    e.close()
    e.close()
    assert e.closed
    assert kinds(root) == ["session.opened", "session.closed"]
    assert "closed" in repr(e)
