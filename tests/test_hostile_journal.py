"""Every byte read back from disk is hostile: journal records and snapshots that try to act outside the root.

Each test writes well-formed records (correct msgpack, correct crc) that name
paths or values no engine writes, opens the root, and checks that the open is
refused with a clear :class:`~shipslog.journal.CorruptJournalError` (or the
snapshot ignored) and that nothing outside the root changed: a sibling tree
is hashed before and after.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _engine_helpers import commit_checkpoint, open_engine, tree

import shipslog
from shipslog.engine import EngineState, OpRecord, Registry, check_state
from shipslog.journal import (
    MAX_FRAME_BYTES,
    MAX_RECORDS_PER_FRAME,
    CorruptJournalError,
    CorruptRecordError,
    Journal,
    JournalReader,
)

packb = msgspec.msgpack.encode


@pytest.fixture
def place(tmp_path: Path) -> dict[str, str]:
    """A root at ``tmp_path/host/root`` with a clean first session, and siblings it must never touch."""
    host = tmp_path / "host"
    root = host / "root"
    for folder in (tmp_path / "victim", host / "victim", tmp_path / "victims"):
        folder.mkdir(parents=True)
        (folder / "precious.txt").write_text(f"precious data in {folder.name}\n")
    (tmp_path / "target.txt").write_text("do not overwrite\n")
    (host / "target.txt").write_text("do not overwrite either\n")
    open_engine(str(root)).close()
    return {"root": str(root), "outside": str(tmp_path)}


def outside(place: dict[str, str]) -> dict[str, Any]:
    """Every byte outside the root (the root itself is left out)."""
    return {k: v for k, v in tree(place["outside"], skip=()).items() if not k.startswith(os.path.join("host", "root"))}


def append(root: str, *events: dict[str, Any]) -> None:
    """Append each event as its own well-formed record, as a writer without the engine's checks would."""
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        for event in events:
            journal.append(packb(event))


def refused(place: dict[str, str], *events: dict[str, Any], field: str) -> CorruptRecordError:
    """Append ``events``, open the root, and return the error, after checking nothing outside changed."""
    before = outside(place)
    append(place["root"], *events)
    with pytest.raises(CorruptRecordError) as caught:
        open_engine(place["root"])
    assert caught.value.field == field
    assert outside(place) == before
    assert f"record seq {caught.value.seq}" in str(caught.value)
    return caught.value


def test_checkpoint_staging_outside_the_root_is_refused_and_nothing_is_deleted(place: dict[str, str]) -> None:
    err = refused(place, {"kind": "checkpoint.begun", "op": "ck-1", "name": "x", "staging": "../../victim"}, field="staging")
    assert err.value == "../../victim" and err.expected == "'staging/ck-1'"
    assert err.kind == "checkpoint.begun"


def test_pointer_name_outside_the_root_is_refused_and_nothing_is_overwritten(place: dict[str, str]) -> None:
    event = {"kind": "pointer.intended", "op": "p-1", "name": "../../target.txt", "old": "attacker text", "new": "checkpoints/none"}
    refused(place, event, field="name")


def test_pointer_old_target_that_is_not_a_folder_path_is_refused(place: dict[str, str]) -> None:
    event = {"kind": "pointer.intended", "op": "p-1", "name": "current", "old": "attacker text", "new": "checkpoints/none"}
    refused(place, event, field="old")


def test_durable_checkpoint_named_outside_the_root_is_never_renamed_out(place: dict[str, str]) -> None:
    refused(
        place,
        {"kind": "checkpoint.begun", "op": "ck-1", "name": "../../victims/x", "staging": "staging/ck-1"},
        {"kind": "checkpoint.durable", "op": "ck-1", "files": 0, "bytes": 0, "manifest_crc": 0},
        field="name",
    )


def test_committed_path_outside_the_root_is_refused(place: dict[str, str]) -> None:
    err = refused(
        place,
        {"kind": "checkpoint.begun", "op": "ck-1", "name": "x", "staging": "staging/ck-1"},
        {"kind": "checkpoint.durable", "op": "ck-1", "files": 0, "bytes": 0, "manifest_crc": 0},
        {"kind": "checkpoint.committed", "op": "ck-1", "path": "../../../../etc"},
        field="path",
    )
    assert err.expected == "'checkpoints/x'"


def test_consolidation_cut_off_at_installed_with_an_escaping_pointer_is_refused(place: dict[str, str]) -> None:
    refused(
        place,
        {"kind": "consolidation.begun", "op": "c-1", "base": "models/b", "adapter": "adapters/a", "into": "m",
         "pointer": "../../../target.txt", "staging": "staging/c-1"},
        {"kind": "consolidation.merged", "op": "c-1", "files": 0, "bytes": 0, "manifest_crc": 0},
        {"kind": "consolidation.installed", "op": "c-1", "path": "models/m"},
        field="pointer",
    )


def test_consolidation_adapter_outside_adapters_is_refused(place: dict[str, str]) -> None:
    event = {"kind": "consolidation.begun", "op": "c-1", "base": "models/b", "adapter": "../victim", "into": "m",
             "pointer": "current", "staging": "staging/c-1"}
    refused(place, event, field="adapter")


def test_retention_paths_outside_the_engine_folders_are_refused(place: dict[str, str]) -> None:
    err = refused(place, {"kind": "retention.intended", "op": "r-1", "paths": ["checkpoints/ok", "../../victim"]}, field="paths[1]")
    assert "'checkpoints/<name>'" in err.expected


def test_operation_id_that_is_a_path_is_refused(place: dict[str, str]) -> None:
    # op ids become folder names (staging/<op>, retired/<op>-<adapter>)
    refused(place, {"kind": "checkpoint.begun", "op": "../../victim", "name": "x", "staging": "staging/../../victim"}, field="op")


def test_worker_pid_that_would_signal_every_process_is_refused(place: dict[str, str]) -> None:
    refused(
        place,
        {"kind": "worker.starting", "op": "w-1", "slot": "w-0", "name": "loader", "attempt": 0, "delay": 0.0},
        {"kind": "worker.started", "op": "w-1", "pid": -1, "create_time": 1.0},
        field="pid",
    )


def test_meta_nested_past_the_limit_is_refused(place: dict[str, str]) -> None:
    meta: Any = "leaf"
    for _ in range(40):
        meta = {"m": meta}
    refused(place, {"kind": "checkpoint.begun", "op": "ck-1", "name": "x", "staging": "staging/ck-1", "meta": meta}, field="meta")


def test_event_nested_beyond_the_decoder_is_a_corrupt_journal_error_everywhere(place: dict[str, str]) -> None:
    depth = 100_000
    deep = b"\x81\xa1m" * depth + b"\x00"  # {"m": {"m": ... 0}}
    head = {"kind": "checkpoint.begun", "op": "ck-1", "name": "x", "staging": "staging/ck-1"}
    event = b"\x85" + b"".join(packb(k) + packb(v) for k, v in head.items()) + packb("meta") + deep
    before = outside(place)
    with Journal.open(place["root"], fsync=False, segment_bytes=1 << 20) as journal:
        journal.append(event)
    with pytest.raises(CorruptJournalError, match="nested deeper"):
        open_engine(place["root"])
    with pytest.raises(CorruptJournalError, match="nested deeper"):
        shipslog.replay(place["root"])
    with pytest.raises(CorruptJournalError, match="nested deeper"):
        list(JournalReader(os.path.join(place["root"], "journal")).batches(decode=Registry().decode_frame))
    with pytest.raises(CorruptJournalError, match="nested deeper"):  # the writer's open reads the last record's seq
        Journal.open(place["root"], fsync=False, segment_bytes=1 << 20)
    assert outside(place) == before


def test_record_of_an_unknown_kind_nested_deeply_is_corrupt_not_a_recursion_error(place: dict[str, str]) -> None:
    event = b"\x83" + b"".join(packb(k) + packb(v) for k, v in {"kind": "foo.go", "op": "f-1"}.items()) + packb("d") + b"\x91" * 50_000 + b"\x00"
    with Journal.open(place["root"], fsync=False, segment_bytes=1 << 20) as journal:
        journal.append(event)
    with pytest.raises(CorruptJournalError):
        list(JournalReader(os.path.join(place["root"], "journal")).batches(decode=Registry().decode_frame))


# -- snapshots ---------------------------------------------------------------------------


def hostile_snapshot(root: str, op: OpRecord) -> None:
    """Store a snapshot (valid checksum, valid position) whose state holds ``op``, a record replay would refuse."""
    state = shipslog.replay(root)
    bad = msgspec.structs.replace(state, ops={**state.ops, op.id: op})
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        journal.save_snapshot(journal.last_seq, packb(bad))


def test_snapshot_with_a_staging_outside_the_root_is_ignored_and_the_journal_replayed(
    place: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    root = place["root"]
    op = OpRecord("ck-9", "checkpoint", "begun", 1, 1, "gone", 0.0, {"name": "x", "artifact": "checkpoint", "staging": "../../victim"})
    hostile_snapshot(root, op)
    before = outside(place)
    with caplog.at_level(logging.WARNING, logger="shipslog"):
        engine = open_engine(root)
    try:
        assert "ck-9" not in engine.state.ops
        assert engine.replayed == engine.state.seq - 1  # everything but the new session's record came from the journal
        assert any("cannot be used" in r.getMessage() and "staging" in r.getMessage() for r in caplog.records)
    finally:
        engine.close()
    assert outside(place) == before


@pytest.mark.parametrize(
    ("op", "why"),
    [
        (OpRecord("consolidation-9", "consolidation", "begun", 1, 1, "gone", 0.0,
                  {"adapter": "adapters/a", "into": "m", "pointer": "p", "staging": "journal"}), "every field of one of"),
        (OpRecord("checkpoint-9", "checkpoint", "durable", 1, 1, "gone", 0.0,
                  {"staging": "staging/checkpoint-9", "files": 1, "bytes": 1, "manifest_crc": 1}), "every field of one of"),
        (OpRecord("worker-9", "worker", "started", 1, 1, "gone", 0.0,
                  {"slot": "worker-8", "name": "w", "attempt": 0, "delay": 0.0, "pid": 4242}), "every field of one of"),
        (OpRecord("checkpoint-9", "checkpoint", "begun", 1, 1, "gone", 0.0,
                  {"name": "x", "artifact": "bogus", "path": "checkpoints/x", "staging": "staging/checkpoint-9"}), "artifact"),
    ],
    ids=["consolidation-without-base-staging-journal", "checkpoint-durable-without-name", "worker-started-without-create-time",
         "unknown-artifact-kind"],
)
def test_snapshot_with_an_operation_missing_what_recovery_needs_is_ignored(
    place: dict[str, str], caplog: pytest.LogCaptureFixture, op: OpRecord, why: str
) -> None:
    root = place["root"]
    hostile_snapshot(root, op)
    before = outside(place), tree(os.path.join(root, "journal"), skip=())
    with caplog.at_level(logging.WARNING, logger="shipslog"):
        engine = open_engine(root)
    try:
        assert op.id not in engine.state.ops and not engine.recovery.results
        assert any("cannot be used" in r.getMessage() and why in r.getMessage() for r in caplog.records)
    finally:
        engine.close()
    assert outside(place) == before[0]
    assert os.path.isdir(os.path.join(root, "journal"))


def test_snapshot_whose_state_is_at_another_seq_than_its_file_is_ignored(place: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    root = place["root"]
    state = shipslog.replay(root)
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        journal.save_snapshot(journal.last_seq, packb(msgspec.structs.replace(state, seq=state.seq - 1)))
    with caplog.at_level(logging.WARNING, logger="shipslog"):
        open_engine(root).close()
    assert any("cannot be used" in r.getMessage() and "'seq'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"checkpoints": {"x": shipslog.ArtifactInfo("x", "checkpoint", "../../etc", 1, "ck", 1, 0.0, 0, 0)}}, "checkpoints['x'].path"),
        ({"pointers": {"../p": shipslog.engine.PointerInfo("../p", "checkpoints/x", "p", 1, 0.0)}}, "pointers['../p']"),
        ({"retired": {"retired/a": "../../victim"}}, "retired['retired/a']"),
        ({"retiring": {"../victim": "r-1"}}, "retiring"),
        ({"ops": {"w": OpRecord("w", "worker", "started", 1, 1, "s", 0.0, {"slot": "w-0", "name": "w", "attempt": 0, "delay": 0.0, "pid": 0, "create_time": 1.0})}},
         "ops['w'].info.pid"),
        ({"ops": {"z": OpRecord("z", "nosuch", "begun", 1, 1, "s", 0.0, {})}}, "ops['z'].type"),
        ({"latest": "missing"}, "latest"),
    ],
    ids=["artifact-path", "pointer-name", "retired-target", "retiring-path", "worker-pid", "unknown-type", "latest"],
)
def test_check_state_refuses_what_replay_could_not_produce(change: dict[str, Any], field: str) -> None:
    with pytest.raises(shipslog.engine.InvalidFieldError) as caught:
        check_state(EngineState(**change), Registry())
    assert caught.value.field == field


def test_check_state_accepts_a_real_state(root: str) -> None:
    e = open_engine(root)
    commit_checkpoint(e, "step-1", step=1)
    e.set_pointer("current", "step-1")
    check_state(e.state, e.registry)
    e.close()


# -- frames --------------------------------------------------------------------------------


def test_an_append_beyond_the_frame_limits_is_refused_naming_both(root: str) -> None:
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        with pytest.raises(ValueError, match=f"{MAX_RECORDS_PER_FRAME} records, {MAX_FRAME_BYTES} bytes"):
            journal.append_many([b"\xc0"] * (MAX_RECORDS_PER_FRAME + 1))
        with pytest.raises(ValueError, match="frame limits"):
            journal.append(b"\xc4" + b"x" * MAX_FRAME_BYTES)
        assert journal.last_seq == 0
