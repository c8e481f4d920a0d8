"""Fuzzing every decoder of the root's own files: journal segments, frames and records, events, snapshots,
MANIFESTs and pointer files.

Property: a decoder returns a valid value or raises its format's
:class:`~shipslog.journal.ShipslogError` subclass, never another exception
(no ``RecursionError``, ``TypeError``, ``KeyError`` or bare ``OSError``), and
whatever it reads, nothing outside the root changes.  Time and memory are
bounded by construction (size limits checked before decoding, iterative
nesting checks); the per-test timeout guards it.  Hypothesis runs
derandomized (tests/conftest.py).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from _engine_helpers import commit_checkpoint, open_engine, tree
from hypothesis import given, settings
from hypothesis import strategies as st

import shipslog
from shipslog.engine import (
    IntegrityError,
    Registry,
    read_manifest,
    read_pointer_file,
    verify_folder,
)
from shipslog.journal import (
    HEADER_SIZE,
    CorruptSnapshotError,
    Journal,
    JournalReader,
    ShipslogError,
    UnsupportedFormatError,
    read_snapshot,
)

FUZZ = settings(max_examples=150)
packb = msgspec.msgpack.encode

TEXT = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=10),  # no lone surrogates: they do not encode
    st.sampled_from(["", "..", "../x", "/etc", "a/b", "staging/op-1", "checkpoints/x", "models/m", "x\x00", "é" * 300]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(), TEXT, st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(TEXT, c, max_size=4)), max_leaves=16)
DEEP = st.builds(lambda depth, as_map: (b"\x81\xa1k" if as_map else b"\x91") * depth + b"\xc0",
                 st.integers(min_value=1, max_value=20_000), st.booleans())
KINDS = st.sampled_from(sorted(Registry().event_classes))


@pytest.fixture(scope="module")
def base_root() -> Iterator[str]:
    """A closed root with a checkpoint and a pointer, copied by each example (and never changed itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        e = open_engine(root)
        commit_checkpoint(e, "step-1", step=1)
        e.set_pointer("current", "step-1")
        e.close()
        yield root


@contextlib.contextmanager
def _hostile_copy(base: str) -> Iterator[str]:
    """A fresh copy of ``base`` for the block to damage; then the property is checked at every entry point
    (read, replay, open: values or a ShipslogError) and a sibling folder must be unchanged."""
    place = tempfile.mkdtemp(prefix="fuzz-")
    try:
        root = os.path.join(place, "root")
        shutil.copytree(base, root, symlinks=True)
        sibling = os.path.join(place, "sibling")
        os.makedirs(sibling)
        with open(os.path.join(sibling, "keep.txt"), "w") as f:
            f.write("keep\n")
        yield root
        _read_or_shipslog_error(root)
        _replay_or_shipslog_error(root)
        _open_or_shipslog_error(root)
        assert tree(sibling, skip=()) == {"keep.txt": b"keep\n"}
    finally:
        shutil.rmtree(place)


def _last_frame_end(path: str) -> tuple[int, int]:
    """(offset after the last frame, its crc) in a segment written by the engine."""
    with open(path, "rb") as f:
        data = f.read()
    off = HEADER_SIZE
    crc = struct.unpack_from("<I", data, 32)[0]
    while off + 8 <= len(data):
        length, frame_crc = struct.unpack_from("<II", data, off)
        if length == 0:
            break
        crc = frame_crc
        off += 8 + length
    return off, crc


def _append_frame(root: str, payload: bytes) -> None:
    """Write a frame carrying ``payload`` in the crc chain after the last one, as a hostile writer would."""
    seg = os.path.join(root, "journal", max(os.listdir(os.path.join(root, "journal"))))
    off, prev = _last_frame_end(seg)
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<I", len(payload)), prev))
    with open(seg, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<II", len(payload), crc) + payload)


def _open_or_shipslog_error(root: str) -> None:
    """The property at the engine's front door: it opens, or refuses with a ShipslogError."""
    try:
        engine = open_engine(root)
    except ShipslogError:
        return
    engine.close()


def _read_or_shipslog_error(root: str) -> None:
    try:
        collections.deque(JournalReader(os.path.join(root, "journal")).batches(decode=Registry().decode_frame), maxlen=0)
    except ShipslogError:
        return


def _replay_or_shipslog_error(root: str) -> None:
    try:
        shipslog.replay(root)
    except ShipslogError:
        return


# -- segments and frames -----------------------------------------------------------------------------


@FUZZ
@given(tail=st.binary(max_size=600), at=st.integers(min_value=0, max_value=400))
def test_segment_bytes_after_the_header_are_records_or_a_journal_error(base_root: str, tail: bytes, at: int) -> None:
    with _hostile_copy(base_root) as root:
        seg = os.path.join(root, "journal", max(os.listdir(os.path.join(root, "journal"))))
        off, _crc = _last_frame_end(seg)
        with open(seg, "r+b") as f:
            f.seek(max(HEADER_SIZE, off - at))
            f.write(tail)


@FUZZ
@given(data=st.binary(max_size=200))
def test_a_whole_segment_file_of_any_bytes_is_a_journal_error(base_root: str, data: bytes) -> None:
    with _hostile_copy(base_root) as root:
        journal = os.path.join(root, "journal")
        seg = os.path.join(journal, max(os.listdir(journal)))
        with open(seg, "wb") as f:
            f.write(data)
        with pytest.raises(ShipslogError):
            list(JournalReader(journal).records())


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), VALUES.map(packb), DEEP))
def test_a_verified_frame_of_any_payload_is_records_or_a_journal_error(base_root: str, payload: bytes) -> None:
    with _hostile_copy(base_root) as root:
        if payload:
            _append_frame(root, payload)


# -- records and events ------------------------------------------------------------------------------


@st.composite
def hostile_events(draw: st.DrawFn) -> bytes:
    """An event map: a registered kind with its fields set to anything, or anything at all."""
    fields = draw(st.dictionaries(st.sampled_from(["op", "name", "staging", "path", "new", "old", "paths", "pointer",
                                                   "into", "base", "adapter", "retired", "pid", "create_time", "meta",
                                                   "step", "files", "bytes", "manifest_crc", "slot", "attempt"]),
                                  VALUES, max_size=8))
    fields["kind"] = draw(st.one_of(KINDS, TEXT))
    fields.setdefault("op", draw(st.one_of(st.just("op-1"), TEXT)))
    return packb(fields)


@FUZZ
@given(events=st.lists(st.one_of(hostile_events(), DEEP), min_size=1, max_size=4))
def test_records_with_hostile_events_replay_or_raise_a_shipslog_error(base_root: str, events: list[bytes]) -> None:
    with _hostile_copy(base_root) as root:
        with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
            first = journal.last_seq + 1
        records = b"".join(packb([first + i, 1.0, "fuzz", msgspec.Raw(e)]) for i, e in enumerate(events))
        _append_frame(root, b"\xdd" + len(events).to_bytes(4, "big") + records)


@FUZZ
@given(event=st.one_of(hostile_events(), DEEP, st.binary(max_size=100)))
def test_decode_event_returns_an_event_or_a_decode_error(event: bytes) -> None:
    try:
        Registry().decode_event(event)
    except msgspec.DecodeError:  # the reader turns it into CorruptJournalError with the path and offset
        return


# -- snapshots --------------------------------------------------------------------------------------


@st.composite
def state_like(draw: st.DrawFn) -> bytes:
    """A msgpack map shaped like an engine state, with hostile values in it."""
    op = {"id": draw(TEXT), "type": draw(st.sampled_from(["checkpoint", "pointer", "worker", "consolidation", "run", "x"])),
          "state": draw(st.sampled_from(["begun", "durable", "intended", "started", "merged-durable", "zzz"])),
          "first_seq": 1, "seq": 1, "session": "gone", "time": 0.0, "info": draw(st.dictionaries(TEXT, VALUES, max_size=6))}
    art = {"name": draw(TEXT), "artifact": "checkpoint", "path": draw(TEXT), "step": 1, "op": "c", "seq": 1, "time": 0.0,
           "files": 0, "bytes": 0}
    state = {"version": 1, "seq": draw(st.integers(min_value=0, max_value=10)), "ops": {op["id"]: op},
             "checkpoints": {art["name"]: art}, "retired": draw(st.dictionaries(TEXT, TEXT, max_size=2))}
    return packb(state)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), VALUES.map(packb), state_like(), DEEP))
def test_a_snapshot_of_any_payload_is_used_or_ignored_and_the_root_opens(base_root: str, payload: bytes) -> None:
    with _hostile_copy(base_root) as root, Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        journal.save_snapshot(journal.last_seq, payload)


@FUZZ
@given(data=st.binary(max_size=300))
def test_a_snapshot_file_of_any_bytes_is_a_snapshot_or_its_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = os.path.join(tmp_path_factory.mktemp("snap"), f"{7:020d}.snap")
    with open(path, "wb") as f:
        f.write(data)
    try:
        read_snapshot(path)
    except (CorruptSnapshotError, UnsupportedFormatError):
        return


# -- manifests and pointer files ---------------------------------------------------------------------


@st.composite
def manifest_like(draw: st.DrawFn) -> bytes:
    files = draw(st.lists(st.fixed_dictionaries({"path": TEXT, "size": st.integers(min_value=-5, max_value=2**64),
                                                 "crc32": st.integers(min_value=-5, max_value=2**33)}), max_size=3))
    doc = {"version": draw(st.sampled_from([1, 1, 2, -1])), "kind": draw(st.sampled_from(["checkpoint", "model", "adapter", "x"])),
           "name": draw(TEXT), "meta": draw(VALUES), "files": files}
    return msgspec.json.encode(doc)


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), manifest_like(), VALUES.map(msgspec.json.encode),
                      st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n)))
def test_a_manifest_of_any_bytes_is_a_manifest_or_an_integrity_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    place = tmp_path_factory.mktemp("m")
    folder = os.path.join(place, "ck")
    os.makedirs(folder)
    with open(os.path.join(folder, "MANIFEST"), "wb") as f:
        f.write(data)
    with open(os.path.join(place, "outside.bin"), "wb") as f:
        f.write(b"secret")
    try:
        manifest = read_manifest(folder)
    except (IntegrityError, UnsupportedFormatError):
        return
    for entry in manifest.files:  # every listed path stays inside the folder
        full = os.path.normpath(os.path.join(folder, *entry.path.split("/")))
        assert full.startswith(folder + os.sep)
    try:
        verify_folder(folder, manifest)
    except IntegrityError:
        return


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), VALUES.map(msgspec.json.encode),
                      st.fixed_dictionaries({"version": st.just(1), "pointer": TEXT, "target": TEXT, "op": TEXT}).map(msgspec.json.encode)))
def test_a_pointer_file_of_any_bytes_is_a_pointer_or_an_integrity_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = os.path.join(tmp_path_factory.mktemp("p"), "current")
    with open(path, "wb") as f:
        f.write(data)
    try:
        found = read_pointer_file(path)
    except IntegrityError:
        return
    assert found.target.split("/")[0] in ("checkpoints", "models") and ".." not in found.target.split("/")


def test_a_manifest_listing_a_path_outside_its_folder_is_refused(tmp_path: Any) -> None:
    folder = os.path.join(tmp_path, "ck")
    os.makedirs(folder)
    with open(os.path.join(folder, "MANIFEST"), "wb") as f:
        f.write(msgspec.json.encode({"version": 1, "kind": "checkpoint", "name": "ck",
                                     "files": [{"path": "../../etc/passwd", "size": 1, "crc32": 0}]}))
    with pytest.raises(IntegrityError, match=r"files\[0\]\.path"):
        read_manifest(folder)
