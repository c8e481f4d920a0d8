"""Recovery of bad input and faults, one shape per test: what is on disk and in the journal afterwards."""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from _engine_helpers import (
    SimulatedCrash,
    commit_checkpoint,
    crash,
    events_of,
    flip_bit,
    journal_records,
    kind_of,
    kinds,
    open_engine,
    tree,
    truncate,
)
from _helpers import frames, segments
from _recovery_helpers import DyingFileSystem, dies_at, drop, open_with

from shipslog import Engine
from shipslog.engine import FileEntry, RecoveryDone, replay
from shipslog.journal import CorruptJournalError
from shipslog.recovery import check_invariants, list_root, plan


def recovered_cleanly(e: Engine) -> None:
    assert e.violations == []
    assert check_invariants(e.root, e.state, registry=e.registry, live_session=e.session, deep=True) == []


def nothing_left(root: str) -> None:
    """A second recovery plans nothing."""
    assert plan(replay(root), list_root(root)) == []


def quarantined(root: str) -> dict[str, Any]:
    return tree(os.path.join(root, "quarantine"))


def left_durable(root: str, name: str = "step-5", files: dict[str, bytes] | None = None) -> tuple[str, str]:
    """A root whose checkpoint ``name`` is durable in staging (the process died before the rename); (op, staging path)."""
    fs = DyingFileSystem()
    e = open_with(root, fs)
    ck = e.checkpoint(name, step=5)
    for rel, data in (files or {"model.bin": b"whole weights", "sub/opt.bin": b"optimizer"}).items():
        ck.write_bytes(rel, data)
    with dies_at(fs, "checkpoint.after_durable"), pytest.raises(SimulatedCrash):
        ck.commit()
    drop(e, fs)
    return ck.op, ck.path


def left_pointer_intended(root: str) -> tuple[str, str]:
    """A root whose pointer 'best' was moving from step-1 to step-2 when the process died; (op, pointer file)."""
    fs = DyingFileSystem()
    e = open_with(root, fs)
    commit_checkpoint(e, "step-1", step=1)
    commit_checkpoint(e, "step-2", step=2)
    e.set_pointer("best", "step-1")
    with dies_at(fs, "pointer.after_intended"), pytest.raises(SimulatedCrash):
        e.set_pointer("best", "step-2")
    op = next(o.id for o in e.state.ops.values() if o.type == "pointer")
    drop(e, fs)
    return op, os.path.join(root, "pointers", "best")


# -- staging ------------------------------------------------------------------------------------------


def test_a_half_written_staging_folder_is_removed_and_the_checkpoint_aborted(root: str) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-5", step=5)
    ck.write_bytes("model.bin", b"complete file")
    with open(os.path.join(ck.path, "optim.bin"), "wb") as f:  # a write cut off half-way
        f.write(b"half of it")
    crash(e)
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert [r.action.kind for r in again.recovery.results] == ["close", "checkpoint.roll-back"]
        assert "step-5" not in again.state.checkpoints and again.state.ops_of("checkpoint") == []
    assert not os.path.exists(ck.path) and not os.path.exists(ck.final_path)
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    nothing_left(root)


@pytest.mark.parametrize("damage", ["missing-file", "wrong-size"])
def test_a_durable_staging_folder_that_does_not_match_its_manifest_is_quarantined_and_aborted(root: str, damage: str) -> None:
    op, staging = left_durable(root)
    victim = os.path.join(staging, "sub", "opt.bin")
    if damage == "missing-file":
        os.unlink(victim)
    else:
        truncate(victim, 3)
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert "step-5" not in again.state.checkpoints
        assert [r.action.kind for r in again.recovery.results][-1] == "checkpoint.roll-forward"
        assert again.recovery.quarantined and again.recovery.quarantined[0].startswith("quarantine/")
        assert "no copy verifies" in again.recovery.results[-1].outcome
    assert not os.path.exists(staging) and not os.path.exists(os.path.join(root, "checkpoints", "step-5"))
    kept = quarantined(root)
    assert any(k.endswith("model.bin") and v == b"whole weights" for k, v in kept.items()), "the staged files were not kept"
    assert events_of(root, op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.aborted"]
    nothing_left(root)


def test_a_durable_checkpoint_whose_staged_copy_verifies_is_committed(root: str) -> None:
    op, staging = left_durable(root)
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert again.state.checkpoints["step-5"].path == "checkpoints/step-5"
        again.verify("step-5")
    assert not os.path.exists(staging)
    assert events_of(root, op)[-1] == "checkpoint.committed"


def test_a_broken_final_folder_is_quarantined_and_the_verified_staged_copy_committed(root: str) -> None:
    op, _staging = left_durable(root)
    final = os.path.join(root, "checkpoints", "step-5")
    os.makedirs(final)
    with open(os.path.join(final, "model.bin"), "wb") as f:
        f.write(b"not what the manifest says")
    with open_engine(root) as again:
        recovered_cleanly(again)
        again.verify("step-5")
        assert len(again.recovery.quarantined) == 1
    with open(os.path.join(final, "model.bin"), "rb") as f:
        assert f.read() == b"whole weights"
    assert b"not what the manifest says" in quarantined(root).values()
    assert events_of(root, op)[-1] == "checkpoint.committed"


def test_a_final_folder_that_exists_while_the_journal_says_begun_is_quarantined(root: str) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-5", step=5)
    ck.write_bytes("model.bin", b"partial")
    crash(e)
    final = os.path.join(root, "checkpoints", "step-5")
    os.makedirs(final)
    with open(os.path.join(final, "model.bin"), "wb") as f:
        f.write(b"who wrote this?")
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert "step-5" not in again.state.checkpoints
        assert [r.action.kind for r in again.recovery.results] == ["close", "checkpoint.roll-back", "quarantine"]
        assert len(again.recovery.quarantined) == 1
    assert not os.path.exists(final) and not os.path.exists(ck.path)
    assert b"who wrote this?" in quarantined(root).values()
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    nothing_left(root)


# -- pointers -------------------------------------------------------------------------------------------


POINTER_DAMAGE: dict[str, Callable[[str], None]] = {
    "empty": lambda path: open(path, "wb").close(),
    "truncated": lambda path: truncate(path, os.path.getsize(path) // 2),
    "names-nothing": lambda path: _write(path, b'{"version":1,"pointer":"best","target":"checkpoints/ghost","op":"x"}\n'),
    "missing": os.unlink,
}


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("damage", list(POINTER_DAMAGE))
def test_a_damaged_pointer_file_during_an_intended_move_is_written_again(root: str, damage: str) -> None:
    op, pointer_file = left_pointer_intended(root)
    POINTER_DAMAGE[damage](pointer_file)
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert again.state.pointers["best"].target == "checkpoints/step-2"
        assert again.pointer("best") == os.path.join(root, "checkpoints", "step-2")
    with open(pointer_file, "rb") as f:
        assert b'"target":"checkpoints/step-2"' in f.read()
    assert events_of(root, op) == ["pointer.intended", "pointer.set"]
    nothing_left(root)


@pytest.mark.parametrize("damage", ["empty", "truncated", "names-nothing"])
def test_a_damaged_pointer_file_whose_new_target_does_not_verify_goes_back_to_the_old_target(root: str, damage: str) -> None:
    op, pointer_file = left_pointer_intended(root)
    POINTER_DAMAGE[damage](pointer_file)
    flip_bit(os.path.join(root, "checkpoints", "step-2", "model.bin"))
    with open_engine(root) as again:
        assert again.state.pointers["best"].target == "checkpoints/step-1"
        found = check_invariants(root, again.state, live_session=again.session, deep=True)
        assert [(v.invariant, v.path) for v in found] == [("checkpoints-verify", os.path.join(root, "checkpoints", "step-2"))]
    with open(pointer_file, "rb") as f:
        assert b'"target":"checkpoints/step-1"' in f.read()
    assert events_of(root, op) == ["pointer.intended", "pointer.aborted"]


def test_a_new_pointer_whose_target_does_not_verify_is_quarantined_not_deleted(root: str) -> None:
    fs = DyingFileSystem()
    e = open_with(root, fs)
    commit_checkpoint(e, "step-1", step=1)
    with dies_at(fs, "pointer.after_intended"), pytest.raises(SimulatedCrash):
        e.set_pointer("fresh", "step-1")
    drop(e, fs)
    _write(os.path.join(root, "pointers", "fresh"), b"garbage")
    flip_bit(os.path.join(root, "checkpoints", "step-1", "model.bin"))
    with open_engine(root) as again:
        assert "fresh" not in again.state.pointers
        assert again.recovery.quarantined
    assert not os.path.exists(os.path.join(root, "pointers", "fresh"))
    assert b"garbage" in quarantined(root).values()


# -- unaccounted entries -----------------------------------------------------------------------------------


def test_unaccounted_entries_are_moved_to_quarantine_and_reported_never_deleted(root: str) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "step-1", step=1)
        e.set_pointer("best", "step-1")
    strays = {
        "staging/leftover/model.bin": b"staged by nobody",
        "pointers/.best.tmp-1234abcd": b"a temp file",
        "checkpoints/stray/model.bin": b"a folder nobody committed",
        "models/.base.tmp-00ff00ff": b"another temp file",
        "checkpoints/.gone.deleting/x.bin": b"a removal nobody journaled",
    }
    for rel, data in strays.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write(path, data)
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert sorted(r.action.target for r in again.recovery.results) == sorted(
            ["checkpoints/.gone.deleting", "checkpoints/stray", "models/.base.tmp-00ff00ff", "pointers/.best.tmp-1234abcd", "staging/leftover"]
        )
        assert len(again.recovery.quarantined) == 5
        assert again.state.pointers["best"].target == "checkpoints/step-1"
    for rel in strays:
        assert not os.path.exists(os.path.join(root, *rel.split("/")))
    assert sorted(quarantined(root)[k] for k in quarantined(root) if quarantined(root)[k] != "<dir>") == sorted(strays.values())
    done = [r.event for r in journal_records(root) if isinstance(r.event, RecoveryDone)]
    assert len(done) == 1 and sorted(done[0].quarantined) == sorted(again.recovery.quarantined)
    nothing_left(root)


# -- disk full while recovery writes --------------------------------------------------------------------------


def _enospc(real: Callable[..., Any], after: int = 0) -> Callable[..., Any]:
    """A stand-in for ``real`` that lets the first ``after`` calls through, then raises ENOSPC."""
    calls = [0]

    def fake(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] <= after:
            return real(*args, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return fake


@pytest.mark.parametrize(
    ("left", "call"),
    [("durable", "replace"), ("pointer", "write"), ("durable", "pwrite")],  # pwrite: the lock's and the settling frame go through
    ids=["rename-enospc", "pointer-write-enospc", "journal-enospc"],
)
def test_a_full_disk_while_recovery_writes_loses_nothing_and_a_later_open_recovers(
    root: str, monkeypatch: pytest.MonkeyPatch, left: str, call: str
) -> None:
    if left == "durable":
        _op, staging = left_durable(root)
        kept = tree(staging)
    else:
        _op, pointer_file = left_pointer_intended(root)
        with open(pointer_file, "rb") as f:
            old_pointer = f.read()
    before = journal_records(root)
    monkeypatch.setattr(os, call, _enospc(getattr(os, call), after=2 if call == "pwrite" else 0))
    with pytest.raises(OSError) as info:
        open_engine(root)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    records = journal_records(root)
    assert records[: len(before)] == before, "acknowledged records changed"
    assert all(kind_of(r.event).startswith(("session.", "recovery.")) for r in records[len(before) :])
    if call == "pwrite":  # the disk filled after the settling frame, at recovery's first record
        assert [kind_of(r.event) for r in records[len(before) :]] == ["session.crashed", "session.opened"]
    if left == "durable":
        assert tree(staging) == kept, "the staged checkpoint was touched"
    else:
        with open(pointer_file, "rb") as f:
            assert f.read() == old_pointer
        assert [n for n in os.listdir(os.path.dirname(pointer_file)) if n.startswith(".")] == []
    with open_engine(root) as again:
        recovered_cleanly(again)
        if left == "durable":
            assert again.state.checkpoints["step-5"].path == "checkpoints/step-5"
            again.verify("step-5")
        else:
            assert again.state.pointers["best"].target == "checkpoints/step-2"
    nothing_left(root)


def test_a_full_disk_while_taking_the_lock_leaves_the_root_unlocked(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_engine(root):
        pass
    monkeypatch.setattr(os, "pwrite", _enospc(os.pwrite))
    with pytest.raises(OSError) as info:
        open_engine(root)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    with open_engine(root) as again:  # not EngineLockedError: the failed open let go of the lock
        assert again.state.session is not None


# -- twice, and a corrupt journal -------------------------------------------------------------------------


def test_recovery_run_twice_plans_nothing_the_second_time(root: str) -> None:
    _op, _staging = left_durable(root)
    with open_engine(root) as first:
        assert first.recovery.results
    count = len(journal_records(root))
    nothing_left(root)
    with open_engine(root) as second:
        assert second.recovery.empty and second.recovery.results == [] and second.violations == []
    assert kinds(root)[count:] == ["session.opened", "session.closed"]


def _corrupt_the_middle(root: str) -> tuple[str, int]:
    with open_engine(root) as e:
        for i in range(1, 4):
            commit_checkpoint(e, f"step-{i}", step=i)
    path = segments(root)[0]
    offset, length = frames(path)[2]
    flip_bit(path, offset + 8 + length // 2)
    return path, offset


def test_a_journal_corrupt_in_the_middle_is_refused_with_its_offset_and_nothing_changes(root: str) -> None:
    path, offset = _corrupt_the_middle(root)
    before = tree(root, skip=())
    with pytest.raises(CorruptJournalError) as info:
        open_engine(root)
    assert info.value.offset == offset and info.value.path == path
    assert str(offset) in str(info.value)
    assert tree(root, skip=()) == before


def test_a_crc_is_what_catches_the_corruption(root: str) -> None:
    path, offset = _corrupt_the_middle(root)
    with open(path, "rb") as f:
        data = f.read()
    length = int.from_bytes(data[offset : offset + 4], "little")
    assert zlib.crc32(data[offset + 8 : offset + 8 + length]) != 0  # the frame still parses; only its checksum is wrong
    with pytest.raises(CorruptJournalError, match=r"crc|checksum|CRC"):
        replay(root)


def test_add_file_entries_are_checked_at_recovery_like_the_others(root: str) -> None:
    fs = DyingFileSystem()
    e = open_with(root, fs)
    ck = e.checkpoint("step-5", step=5)
    blob = b"written by another writer"
    _write(os.path.join(ck.path, "extra.bin"), blob)
    ck.add_file(FileEntry("extra.bin", len(blob), zlib.crc32(blob)))
    with dies_at(fs, "checkpoint.after_manifest"), pytest.raises(SimulatedCrash):
        ck.commit()
    drop(e, fs)
    assert os.path.exists(os.path.join(ck.path, "MANIFEST")), "the dead process's abort handler removed staging"
    with open_engine(root) as again:
        recovered_cleanly(again)
        assert "step-5" not in again.state.checkpoints
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
