"""Salvage of any damage: whatever bytes are flipped, cut or appended, the cut journal opens, holds records
1..kept in order exactly as written, and every byte dropped is in quarantine first."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from _helpers import event, event_index, segments
from hypothesis import given, settings
from hypothesis import strategies as st

from shipslog.journal import OS_FS, Journal, cut_journal, find_valid_prefix

N = 60


@pytest.fixture(scope="module")
def base_journal() -> Iterator[str]:
    """Records 1..N in 512-byte segments (several sealed ones), with a snapshot; copied by each example."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        with Journal.open(root, segment_bytes=512, fsync=False) as j:
            for i in range(1, N + 1):
                j.append(event(i))
                if i == 45:
                    j.save_snapshot(i, b"state")
        yield root


DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.floats(0, 0.999), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.floats(0, 0.999), st.just(0)),
    st.tuples(st.just("append"), st.floats(0, 1), st.binary(min_size=1, max_size=64), st.just(0)),
)


@settings(max_examples=120)
@given(damage=st.lists(DAMAGE, min_size=1, max_size=3))
def test_salvage_of_any_damage_leaves_a_journal_that_opens_with_a_prefix_of_the_records(
    base_journal: str, damage: list[tuple[str, float, object, int]]
) -> None:
    place = tempfile.mkdtemp(prefix="salvage-fuzz-")
    try:
        root = os.path.join(place, "root")
        shutil.copytree(base_journal, root)
        for shape, which, where, bit in damage:
            paths = segments(root)
            path = paths[min(int(which * len(paths)), len(paths) - 1)]
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                if shape == "flip" and size:
                    at = int(float(where) * size)  # type: ignore[arg-type]
                    f.seek(at)
                    byte = f.read(1)[0]
                    f.seek(at)
                    f.write(bytes([byte ^ (1 << bit)]))
                elif shape == "cut":
                    f.truncate(int(float(where) * size))  # type: ignore[arg-type]
                elif shape == "append":
                    f.seek(0, os.SEEK_END)
                    f.write(bytes(where))  # type: ignore[arg-type]
        prefix = find_valid_prefix(os.path.join(root, "journal"))
        quarantine = os.path.join(root, "quarantine", "salvage")
        cut = cut_journal(OS_FS, prefix, quarantine, os.path.join(root, "snapshots"))
        assert all(os.path.exists(p) for p in cut.quarantined)
        with Journal.open(root, fsync=False) as j:
            assert j.last_seq == prefix.last_seq
            assert [event_index(r.event) for r in j.records()] == list(range(1, prefix.last_seq + 1))
        again = find_valid_prefix(os.path.join(root, "journal"))
        assert again.whole and again.last_seq == prefix.last_seq
    finally:
        shutil.rmtree(place)
