"""Replay's fast path decodes a whole chunk of frames in one call; a frame it cannot decode sends the chunk
down the frame-by-frame path, which keeps unknown kinds raw and names the offset of a damaged event."""

from __future__ import annotations

import os

import msgspec
import pytest
from _helpers import frames

from shipslog.engine import (
    RawEvent,
    Registry,
    RunProgress,
    RunStarted,
    RunValidated,
    UnknownOperationError,
    replay,
)
from shipslog.journal import CorruptJournalError, Journal, JournalReader

REG = Registry()


def _history(root: str, odd: bytes | None = None, at: int = 5) -> None:
    events = [RunValidated(op="run-1", data_file="/d.jsonl", lines=1, size=2, crc32=3), RunStarted(op="run-1", start_step=0)]
    events += [RunProgress(op="run-1", step=i) for i in range(1, 10)]
    with Journal.open(root, fsync=False) as j:
        for i, ev in enumerate(events):
            if odd is not None and i == at:
                j.append(odd)
            j.append(REG.encode(ev))


def test_the_chunk_path_and_the_frame_path_give_the_same_records(root: str) -> None:
    _history(root)
    reader = os.path.join(root, "journal")
    fast = [r for b in JournalReader(reader).batches(decode=REG.decode_frame, decode_chunk=REG.decode_frames) for r in b]
    slow = [r for b in JournalReader(reader).batches(decode=REG.decode_frame) for r in b]
    assert fast == slow and [r.seq for r in fast] == list(range(1, 12))
    assert replay(root).runs["run-1"].step == 9


def test_an_unknown_kind_inside_a_chunk_stays_raw_and_replay_names_it(root: str) -> None:
    _history(root, msgspec.msgpack.encode({"kind": "job.queued", "op": "job-1", "worker": "w1"}))
    reader = os.path.join(root, "journal")
    records = [r for b in JournalReader(reader).batches(decode=REG.decode_frame, decode_chunk=REG.decode_frames) for r in b]
    raw = [r for r in records if isinstance(r.event, RawEvent)]
    assert [(r.seq, r.event.kind, r.event.data["worker"]) for r in raw] == [(6, "job.queued", "w1")]
    with pytest.raises(UnknownOperationError, match=r"job\.queued"):
        replay(root)


def test_a_damaged_event_inside_a_chunk_is_corruption_at_its_own_frame(root: str) -> None:
    _history(root, msgspec.msgpack.encode({"no": "kind"}), at=3)
    segment = os.path.join(root, "journal", min(os.listdir(os.path.join(root, "journal"))))
    offsets = [offset for offset, _length in frames(segment)]
    with pytest.raises(CorruptJournalError) as info:
        replay(root)
    assert info.value.offset == offsets[3]
