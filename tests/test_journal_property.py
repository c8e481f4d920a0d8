"""Property: any sequence of appends, with the newest segment cut (or zeroed) at any
byte offset, reopens to a prefix of the acknowledged records that keeps every
frame lying wholly before the cut."""

from __future__ import annotations

import os
import shutil
import tempfile

from _helpers import event, event_index, frames, segments
from hypothesis import given
from hypothesis import strategies as st

from shipslog.journal import HEADER_SIZE, Journal

SEGMENT_BYTES = 700

batches = st.lists(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=4), min_size=1, max_size=25)


def _build(root: str, plan: list[list[int]], preallocate: bool) -> list[int]:
    acknowledged: list[int] = []
    with Journal.open(root, fsync=False, segment_bytes=SEGMENT_BYTES, preallocate=preallocate) as j:
        n = 0
        for sizes in plan:
            ids = list(range(n, n + len(sizes)))
            n += len(sizes)
            j.append_many([event(i, size) for i, size in zip(ids, sizes, strict=True)])
            acknowledged.extend(ids)
    return acknowledged


def _check(plan: list[list[int]], fraction: float, mode: str, preallocate: bool) -> None:
    base = tempfile.mkdtemp(prefix="shipslog-prop-")
    try:
        root = os.path.join(base, "root")
        acknowledged = _build(root, plan, preallocate)
        last = segments(root)[-1]
        kept_before = int(os.path.basename(last)[:-4]) - 1
        data_end = max([off + 8 + n for off, n in frames(last)] or [HEADER_SIZE])
        cut = HEADER_SIZE + int(fraction * (data_end - HEADER_SIZE))
        whole = sum(1 for off, n in frames(last) if off + 8 + n <= cut)
        if mode == "truncate":
            with open(last, "r+b") as f:
                f.truncate(cut)
        else:
            with open(last, "r+b") as f:
                f.seek(cut)
                f.write(bytes(data_end - cut))
        with Journal.open(root, fsync=False, segment_bytes=SEGMENT_BYTES) as j:
            got = [event_index(r.event) for r in j.records()]
            seqs = [r.seq for r in j.records()]
            next_seq = j.append(event(10_000)).seq
        assert got == acknowledged[: len(got)], "a prefix of what was acknowledged"
        assert seqs == list(range(1, len(got) + 1))
        count = kept_before
        for frames_kept, sizes in enumerate(_frames_of_last_segment(plan, kept_before)):
            if frames_kept == whole:
                break
            count += sizes
        assert len(got) >= count, "every frame wholly before the cut survives"
        assert next_seq == len(got) + 1
        with Journal.open(root, fsync=False, segment_bytes=SEGMENT_BYTES) as j:
            assert [event_index(r.event) for r in j.records()] == [*got, 10000]
    finally:
        shutil.rmtree(base)


def _frames_of_last_segment(plan: list[list[int]], kept_before: int) -> list[int]:
    """Record counts of the frames (one per append) after the first ``kept_before`` records."""
    out = []
    seen = 0
    for sizes in plan:
        if seen >= kept_before:
            out.append(len(sizes))
        seen += len(sizes)
    return out


@given(plan=batches, fraction=st.floats(min_value=0, max_value=1), preallocate=st.booleans())
def test_truncated_at_any_offset_reopens_to_a_prefix(plan: list[list[int]], fraction: float, preallocate: bool) -> None:
    _check(plan, fraction, "truncate", preallocate)


@given(plan=batches, fraction=st.floats(min_value=0, max_value=1), preallocate=st.booleans())
def test_zeroed_from_any_offset_reopens_to_a_prefix(plan: list[list[int]], fraction: float, preallocate: bool) -> None:
    _check(plan, fraction, "zero", preallocate)
