"""Injected faults through the engine: a failed fsync breaks it (every later call fails fast until
the root is re-opened), a full disk while writing a checkpoint aborts it cleanly, and the preflight
space check refuses a checkpoint before anything is written."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest
from _engine_helpers import (
    ENGINE_CALLS,
    commit_checkpoint,
    events_of,
    journal_records,
    kinds,
    open_engine,
    prepared_engine,
    tree,
    write_files,
    write_jsonl,
)

from shipslog.engine import SPACE_RESERVE_BYTES, EngineBrokenError, EngineClosedError
from shipslog.journal import InsufficientSpaceError, JournalBrokenError


def failing(err: int, *, after: int = 0, real: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A stand-in that lets the first ``after`` calls through to ``real``, then raises OSError(err)."""
    calls = {"n": 0}

    def fake(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if real is not None and calls["n"] <= after:
            return real(*args, **kw)
        raise OSError(err, os.strerror(err))

    return fake


# -- fsync failures break the engine -------------------------------------------------------------------


def test_a_journal_fsync_failure_breaks_the_engine(root: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_jsonl(os.path.join(tmp_path, "d.jsonl"), '{"a": 1}\n')
    e = open_engine(root, fsync=True)
    commit_checkpoint(e, "step-1", step=1)
    acknowledged = journal_records(root)
    monkeypatch.setattr(os, "fdatasync", failing(errno.EIO))
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(EngineBrokenError) as info:
        e.run(data)
    monkeypatch.undo()
    assert isinstance(info.value, JournalBrokenError) and isinstance(info.value, OSError)
    assert not isinstance(info.value, EngineClosedError)
    assert isinstance(e.broken, BaseException)
    assert "re-open" in str(info.value)
    assert e.state.seq == acknowledged[-1].seq, "the state moved past the last acknowledged record"
    with pytest.raises(EngineBrokenError, match="broken"):  # never retried, even with a healthy disk
        e.set_pointer("best", "step-1")
    e.close()
    assert e.closed
    with open_engine(root) as again:
        assert journal_records(root)[: len(acknowledged)] == acknowledged
        assert "step-1" in again.state.checkpoints
        assert again.status().shutdown == "unclean"
        assert all(r.state == "interrupted" for r in again.state.runs.values())


def test_a_checkpoint_file_fsync_failure_breaks_the_engine(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_engine(root, fsync=True)
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(OSError) as info, e.checkpoint("step-1", step=1) as ck:
        ck.write_bytes("model.bin", b"weights")
    monkeypatch.undo()
    assert info.value.errno == errno.EIO
    assert e.broken is info.value
    with pytest.raises(EngineBrokenError) as later:
        e.status()
    assert later.value.__cause__ is info.value
    assert "aborted" not in " ".join(kinds(root)), "a broken engine journaled after the failure"
    e.close()
    with open_engine(root) as again:  # nothing acknowledged was lost; recovery rolls the checkpoint back
        assert [(r.action.kind, r.action.target) for r in again.recovery.results][-1] == ("checkpoint.roll-back", ck.op)
        assert again.violations == []
    assert not os.path.exists(ck.path)




@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, id=n)
        for n in ENGINE_CALLS
    ],
)
def test_every_call_after_an_fsync_failure_raises_engine_broken(
    root: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    e, ctx = prepared_engine(root, tmp_path, fsync=True)
    monkeypatch.setattr(os, "fdatasync", failing(errno.EIO))
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(EngineBrokenError):
        e.set_pointer("second", "step-1")
    monkeypatch.undo()
    before_journal = journal_records(root)
    before_files = tree(root)
    try:
        with pytest.raises(EngineBrokenError):
            ENGINE_CALLS[name](e, ctx)
        assert journal_records(root) == before_journal
        assert tree(root) == before_files
    finally:
        e.close()


# -- a full disk while writing a checkpoint -------------------------------------------------------------


def test_enospc_while_writing_a_checkpoint_file_aborts_it(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_engine(root)
    commit_checkpoint(e, "before", step=1)
    monkeypatch.setattr(os, "write", failing(errno.ENOSPC, after=1, real=os.write))
    with pytest.raises(OSError) as info, e.checkpoint("step-2", step=2) as ck:
        ck.write_bytes("a.bin", b"a" * 1000)
        ck.write_bytes("b.bin", b"b" * 1000)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert "ENOSPC" in journal_records(root)[-1].event.reason or "space" in journal_records(root)[-1].event.reason
    assert os.listdir(os.path.join(root, "staging")) == []
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["before"]
    assert e.broken is None
    commit_checkpoint(e, "step-2", step=2)  # still usable, the name is free
    assert e.latest_checkpoint(deep=True).name == "step-2"  # type: ignore[union-attr]
    e.close()


def test_enospc_while_writing_a_checkpoint_raises_insufficient_space(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_engine(root) as e:
        monkeypatch.setattr(os, "write", failing(errno.ENOSPC))
        with pytest.raises(InsufficientSpaceError), e.checkpoint("step-2", step=2) as ck:
            ck.write_bytes("a.bin", b"a" * 1000)
        monkeypatch.undo()


def test_enospc_while_writing_the_manifest_aborts_and_leaves_no_temp_file(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-3", step=3)
    ck.write_bytes("a.bin", b"a")
    monkeypatch.setattr(os, "write", failing(errno.ENOSPC))
    with pytest.raises(OSError) as info:
        ck.commit()
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert os.listdir(os.path.join(root, "staging")) == []
    assert os.listdir(os.path.join(root, "checkpoints")) == []
    e.close()


def test_a_failed_rename_aborts_from_durable(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-4", step=4)
    ck.write_bytes("a.bin", b"a")
    monkeypatch.setattr(e.fs, "rename_durable", failing(errno.EXDEV))
    with pytest.raises(OSError):
        ck.commit()
    monkeypatch.undo()
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.aborted"]
    assert os.listdir(os.path.join(root, "staging")) == [] and os.listdir(os.path.join(root, "checkpoints")) == []
    e.close()


def test_a_staging_folder_that_cannot_be_created_aborts(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_engine(root)
    monkeypatch.setattr(e.fs, "mkdir", failing(errno.EACCES))
    with pytest.raises(PermissionError):
        e.checkpoint("step-5", step=5)
    monkeypatch.undo()
    assert kinds(root)[-2:] == ["checkpoint.begun", "checkpoint.aborted"]
    assert e.state.ops_of("checkpoint") == []
    e.close()


# -- preflight: refused before anything is written ---------------------------------------------------------


def test_preflight_refuses_a_checkpoint_larger_than_the_free_space(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_engine(root)
    before_journal = journal_records(root)
    before_files = tree(root)
    monkeypatch.setattr(e.fs, "free_bytes", lambda path: 5_000_000)
    with pytest.raises(InsufficientSpaceError) as info:
        e.checkpoint("big", step=1, expected_bytes=10_000_000_000)
    err = info.value
    assert err.needed == 10_000_000_000 + SPACE_RESERVE_BYTES and err.free == 5_000_000
    assert err.errno == errno.ENOSPC and isinstance(err, OSError)
    assert str(err.needed) in str(err) and "5000000" in str(err)
    assert journal_records(root) == before_journal
    assert tree(root) == before_files
    assert os.listdir(os.path.join(root, "staging")) == []
    monkeypatch.undo()
    commit_checkpoint(e, "big", step=1)  # the engine goes on
    e.close()


def test_preflight_keeps_a_reserve_for_the_journal(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_engine(root) as e:
        monkeypatch.setattr(e.fs, "free_bytes", lambda path: SPACE_RESERVE_BYTES + 99)
        with pytest.raises(InsufficientSpaceError):
            e.checkpoint("x", step=1, expected_bytes=100)
        ck = e.checkpoint("y", step=1, expected_bytes=99)
        ck.abort()


def test_preflight_refuses_adopting_a_folder_larger_than_the_free_space(root: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    src = os.path.join(tmp_path, "checkpoint-100")
    write_files(src, {"w.bin": b"w" * 4096})
    with open_engine(root) as e:
        before = journal_records(root)
        monkeypatch.setattr(e.fs, "free_bytes", lambda path: SPACE_RESERVE_BYTES + 100)
        with pytest.raises(InsufficientSpaceError) as info:
            e.adopt_checkpoint(src)
        assert info.value.needed == 4096 + SPACE_RESERVE_BYTES
        assert journal_records(root) == before
        assert os.listdir(os.path.join(root, "staging")) == [] and os.listdir(os.path.join(root, "checkpoints")) == []


def test_negative_expected_bytes_are_refused(root: str) -> None:
    with open_engine(root) as e:
        with pytest.raises(ValueError, match="expected bytes"):
            e.checkpoint("x", step=1, expected_bytes=-1)
        assert kinds(root) == ["session.opened"]
