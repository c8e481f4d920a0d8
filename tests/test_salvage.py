"""``shipslog recover --salvage``: a damaged journal is cut back to what verifies and reconciled with the disk;
a folder that verifies is never quarantined, and the result verifies clean."""

from __future__ import annotations

import json
import os
import struct

import msgspec
import pytest
from _cli_helpers import cli, unchanged
from _engine_helpers import commit_checkpoint, journal_records, kind_of, open_engine, tree
from _helpers import frames, segments

from shipslog import Engine
from shipslog.engine import (
    SALVAGE_MARKER,
    CutOffOperationsError,
    Registry,
    SalvageBegun,
    SalvageInterruptedError,
)
from shipslog.journal import CorruptJournalError, FileSystem, Journal, read_segment_header
from shipslog.recovery import salvage

STEPS = list(range(5, 45, 5))


def _host(root: str) -> None:
    """Checkpoints step-5..step-40, pointer 'current' at the newest, retention keeping 3: on disk step-30/35/40."""
    with open_engine(root, segment_bytes=2048, snapshot_every=0) as e:
        for step in STEPS:
            commit_checkpoint(e, f"step-{step}", step=step)
            e.set_pointer("current", f"step-{step}")
            if step >= 20:
                e.retain(3)


def _cut_a_middle_segment(root: str) -> str:
    paths = segments(root)
    assert len(paths) >= 4
    victim = paths[len(paths) // 2]
    end = read_segment_header(paths[len(paths) // 2 + 1]).prev_end
    with open(victim, "r+b") as f:
        f.truncate(end // 2)
    return victim


def _quarantined(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "quarantine")))


def test_a_segment_cut_short_in_the_middle_is_salvaged_and_verifies(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _host(root)
    on_disk = tree(os.path.join(root, "checkpoints"))
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-30", "step-35", "step-40"]
    _cut_a_middle_segment(root)
    with pytest.raises(CorruptJournalError):
        Engine.open(root)
    code, out, err = cli(capsys, "recover", root, "--salvage", "--json")
    assert code == 0, err
    result = json.loads(out)
    decisions = result["salvage"]["decisions"]
    actions = {(d["action"], d["target"]) for d in decisions}
    assert ("adopt", "checkpoints/step-40") in actions
    lost = [d["target"] for d in decisions if d["action"] == "lost"]
    assert lost and all(not os.path.exists(os.path.join(root, path)) for path in lost)
    assert result["violations"] == []
    # nothing that verifies went to quarantine: only the journal's dropped bytes
    assert [q for q in _quarantined(root) if not q.endswith("-journal-salvage")] == []
    assert tree(os.path.join(root, "checkpoints")) == on_disk
    code, _out, err = cli(capsys, "verify", root)
    assert code == 0, err
    with Engine.open(root) as e:
        assert sorted(e.state.checkpoints) == ["step-30", "step-35", "step-40"]
        assert e.state.pointers["current"].target == "checkpoints/step-40"
        latest = e.latest_checkpoint(deep=True)
        assert latest is not None and latest.step == 40
    kinds = [kind_of(r.event) for r in journal_records(root)]
    assert "salvage.begun" in kinds and "salvage.adopted" in kinds and kinds.count("salvage.done") == 1


def test_a_salvage_dry_run_changes_no_byte_and_decides_what_the_salvage_does(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _host(root)
    _cut_a_middle_segment(root)
    before = unchanged(root)
    code, out, err = cli(capsys, "recover", root, "--salvage", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)["salvage"]
    assert unchanged(root) == before
    assert planned["dry_run"] and planned["op"] is None
    code, out, err = cli(capsys, "recover", root, "--salvage", "--json")
    assert code == 0, err
    done = json.loads(out)["salvage"]
    assert [(d["action"], d["target"]) for d in done["decisions"]] == [(d["action"], d["target"]) for d in planned["decisions"]]
    assert done["kept_seq"] == planned["kept_seq"]


def test_garbage_after_the_last_frame_is_cut_and_nothing_else_changes(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _host(root)
    last = segments(root)[-1]
    with open(last, "rb") as f:
        data = f.read()
    end = len(data.rstrip(b"\0"))
    (first, n1), (second, n2) = frames(last)[:2]
    assert second == first + 8 + n1
    with open(last, "r+b") as f:  # two whole frames copied from earlier: chained to each other, so not a torn write
        f.seek(end)
        f.write(data[first: second + 8 + n2])
    with pytest.raises(CorruptJournalError):
        Engine.open(root)
    code, out, err = cli(capsys, "recover", root, "--salvage", "--json")
    assert code == 0, err
    report = json.loads(out)["salvage"]
    assert report["decisions"][0]["action"] == "cut"
    assert [d for d in report["decisions"] if d["action"] != "cut"] == []
    assert report["dropped_from"].endswith(f"@{end}")
    code, _out, err = cli(capsys, "verify", root)
    assert code == 0, err


def test_a_journal_whose_first_header_is_damaged_is_rebuilt_from_the_folders(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _host(root)
    first = segments(root)[0]
    with open(first, "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<Q", 999))  # first_seq: the header crc fails
    code, out, err = cli(capsys, "recover", root, "--salvage", "--json")
    assert code == 0, err
    assert json.loads(out)["salvage"]["kept_seq"] == 0
    with Engine.open(root) as e:
        assert sorted(e.state.checkpoints) == ["step-30", "step-35", "step-40"]
        assert e.state.pointers["current"].target == "checkpoints/step-40"
    code, _out, err = cli(capsys, "verify", root)
    assert code == 0, err


class _DiesBeforeTheMarkerIsRemoved(FileSystem):
    def unlink(self, path: str) -> None:  # type: ignore[override]
        if os.path.basename(os.fspath(path)) == SALVAGE_MARKER:
            raise RuntimeError("simulated crash before the salvage marker is removed")
        super().unlink(path)


def test_an_interrupted_salvage_keeps_engines_out_until_it_is_run_again(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _host(root)
    _cut_a_middle_segment(root)
    with pytest.raises(RuntimeError, match="simulated crash"):
        salvage(root, fs=_DiesBeforeTheMarkerIsRemoved())
    assert os.path.exists(os.path.join(root, SALVAGE_MARKER))
    with pytest.raises(SalvageInterruptedError):
        Engine.open(root)
    code, out, _err = cli(capsys, "status", root, "--json")
    assert code == 1 and any(SALVAGE_MARKER in f for f in json.loads(out)["findings"])
    code, _out, err = cli(capsys, "recover", root)
    assert code == 2 and "recover --salvage" in err
    code, _out, err = cli(capsys, "recover", root, "--salvage")
    assert code == 0, err
    assert not os.path.exists(os.path.join(root, SALVAGE_MARKER))
    code, _out, err = cli(capsys, "verify", root)
    assert code == 0, err


def test_recover_without_salvage_on_a_damaged_journal_names_salvage(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _host(root)
    _cut_a_middle_segment(root)
    code, _out, err = cli(capsys, "recover", root)
    assert code == 2 and "recover --salvage" in err and err.count("\n") == 1


def test_a_torn_tail_repair_is_a_finding_and_keeps_verifying_folders_until_a_salvage(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_engine(root, snapshot_every=0) as e:
        commit_checkpoint(e, "step-5", step=5)
        seq = e.state.seq
        commit_checkpoint(e, "step-10", step=10)
        commit_checkpoint(e, "step-15", step=15)
    last = segments(root)[-1]
    cut_at = next(off for off, _n in frames(last) if off > 0 and _first_seq(last, off) > seq)
    with open(last, "r+b") as f:  # cut by hand in the middle of a frame: it reads as a torn tail
        f.truncate(cut_at + 11)
    with open_engine(root) as e:
        assert e.recovery.journal_repair is not None
        assert sorted(e.state.checkpoints) == ["step-5"]
        assert {v.invariant for v in e.violations} >= {"nothing-unaccounted"}
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-10", "step-15", "step-5"]
    open_engine(root).close()  # a later open leaves them too
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-10", "step-15", "step-5"]
    code, out, _err = cli(capsys, "status", root, "--json")
    assert code == 1 and any("recover --salvage" in f and "cut back" in f for f in json.loads(out)["findings"])
    code, out, err = cli(capsys, "recover", root, "--salvage", "--json")
    assert code == 0, err
    adopted = [d["target"] for d in json.loads(out)["salvage"]["decisions"] if d["action"] == "adopt"]
    assert adopted == ["checkpoints/step-10", "checkpoints/step-15"]
    code, out, _err = cli(capsys, "status", root, "--json")
    assert code == 0 and json.loads(out)["findings"] == []
    code, _out, err = cli(capsys, "verify", root)
    assert code == 0, err


def _first_seq(path: str, offset: int) -> int:
    """The seq of the first record of the frame at ``offset`` (msgpack: array, then the record's array, then seq)."""
    with open(path, "rb") as f:
        f.seek(offset + 8)
        head = f.read(16)
    body = head[1:] if 0x90 <= head[0] <= 0x9F else head[3:]
    assert body[0] == 0x94
    return int(msgspec.msgpack.decode(_one_int(body[1:])))


def _one_int(data: bytes) -> bytes:
    first = data[0]
    if first <= 0x7F:
        return data[:1]
    return data[: {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}[first]]


def test_a_salvage_cut_off_before_done_is_refused_by_open_and_finished_by_salvage(root: str) -> None:
    _host(root)
    with Journal.open(root) as journal:
        journal.append(Registry().encode(SalvageBegun(op="salvage-cut-1", kept_seq=journal.last_seq)))
    with pytest.raises(CutOffOperationsError) as caught:
        Engine.open(root)
    assert caught.value.ops == (("salvage-cut-1", "salvage", "reconciling"),)
    report = salvage(root)
    assert report.op == "salvage-cut-1"
    with Engine.open(root) as e:
        assert "salvage-cut-1" not in e.state.ops and e.violations == []
    assert [kind_of(r.event) for r in journal_records(root) if r.event.op == "salvage-cut-1"] == ["salvage.begun", "salvage.done"]
