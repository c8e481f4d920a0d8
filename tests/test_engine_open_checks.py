"""What every ``Engine.open`` checks and reports: damage anywhere in the journal, the invariants, a torn tail it
cut back, and the segment size the root was created with."""

from __future__ import annotations

import os
import shutil
import struct

import pytest
from _engine_helpers import commit_checkpoint, flip_bit, open_engine
from _helpers import segments

from shipslog import Engine
from shipslog.journal import CorruptJournalError, read_segment_header


def test_a_flipped_bit_before_the_newest_snapshot_makes_open_raise(root: str) -> None:
    with Engine.open(root, snapshot_every=8) as e:
        for i in range(1, 6):
            commit_checkpoint(e, f"step-{i * 5}", step=i * 5)
    first = segments(root)[0]
    flip_bit(first, 100, bit=1)
    with pytest.raises(CorruptJournalError) as caught:
        Engine.open(root, snapshot_every=8)
    assert caught.value.path == first and caught.value.offset is not None and caught.value.offset <= 100


def test_violations_are_checked_at_every_open(root: str) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "step-5", step=5)
    shutil.rmtree(os.path.join(root, "checkpoints", "step-5"))  # by hand, behind the journal's back
    with open_engine(root) as e:
        assert e.recovery.found == []
        assert [v.invariant for v in e.violations] == ["checkpoints-verify"]
        assert "step-5" in e.violations[0].message


def test_a_torn_tail_cut_back_at_open_is_in_the_recovery_report(root: str) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "step-5", step=5)
        seq = e.state.seq
    last = segments(root)[-1]
    with open(last, "rb") as f:
        data = f.read()
    end = len(data.rstrip(b"\0"))
    with open(last, "r+b") as f:  # half a frame after the last one: a write cut off by a crash
        f.seek(end)
        f.write(struct.pack("<II", 200, 0x1234ABCD) + b"\x91\x94" + b"\x07" * 40)
    with open_engine(root) as e:
        repair = e.recovery.journal_repair
        assert repair is not None and f"offset {end}" in repair and "quarantine/" in repair
        assert not e.recovery.empty
        assert e.state.seq > seq
        assert os.listdir(os.path.join(root, "quarantine"))
    with open_engine(root) as e:
        assert e.recovery.journal_repair is None and e.recovery.empty


def test_a_root_opened_without_a_segment_size_keeps_its_own(root: str) -> None:
    with Engine.open(root, segment_bytes=1 << 13) as e:
        commit_checkpoint(e, "step-5", step=5)
    with Engine.open(root) as e:  # no size given: not the 64 MiB default
        for i in range(2, 60):
            commit_checkpoint(e, f"step-{i * 5}", step=i * 5)
    paths = segments(root)
    assert len(paths) > 1
    assert {os.path.getsize(p) for p in paths} == {1 << 13}
    assert {read_segment_header(p).segment_bytes for p in paths} == {1 << 13}
