"""Helpers shared by the tests: events that identify themselves, and an independent frame parser."""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable

import msgspec

from shipslog.journal import HEADER_SIZE, Journal, RecordingFileSystem, list_segments

_FRAME = struct.Struct("<II")


def event(i: int, size: int = 40) -> bytes:
    """A msgpack event whose content identifies ``i``."""
    return msgspec.msgpack.encode({"i": i, "pad": "x" * max(0, size - 12)})


def event_index(raw: bytes | msgspec.Raw) -> int:
    """The ``i`` an :func:`event` was made from."""
    return int(msgspec.msgpack.decode(bytes(raw))["i"])


def frames(path: str, header_size: int = HEADER_SIZE) -> list[tuple[int, int]]:
    """``(offset, payload_length)`` of each frame in a segment, parsed independently of shipslog (frames start
    after a header of ``header_size`` bytes: 36 in a version-1 segment)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    off = header_size
    while off + 8 <= len(data):
        length, _crc = _FRAME.unpack_from(data, off)
        if length == 0:
            break
        out.append((off, length))
        off += 8 + length
    return out


def rewrite_segment_version(path: str, version: int) -> None:
    """Rewrite a segment's header as a shipslog writing format ``version`` would: that version, and a header crc
    that verifies."""
    with open(path, "r+b") as f:
        header = bytearray(f.read(HEADER_SIZE))
        struct.pack_into("<H", header, 8, version)
        struct.pack_into("<I", header, HEADER_SIZE - 4, zlib.crc32(bytes(header[: HEADER_SIZE - 4])))
        f.seek(0)
        f.write(header)


def segments(root: str | os.PathLike[str]) -> list[str]:
    """The segment paths of the journal under ``root``, in seq order."""
    return [path for _seq, path in list_segments(os.path.join(root, "journal"))]


def all_seqs(root: str | os.PathLike[str], **kw: object) -> list[int]:
    """Open ``root`` and return the seq of every record, in order."""
    with Journal.open(root, **kw) as j:  # type: ignore[arg-type]
        return [r.seq for r in j.records()]


def write_records(root: str, n: int, **kw: object) -> None:
    """Create a journal under ``root`` holding records 1..n, one frame each."""
    with Journal.open(root, **kw) as j:  # type: ignore[arg-type]
        for i in range(1, n + 1):
            j.append(event(i))


def crafted_damage(size: int) -> bytes:
    """A bad frame followed by ``size`` crafted bytes, to write after the last frame of a segment (the damage
    ``shipslog bench journal`` scans).

    The bad frame claims a length that reaches past the crafted bytes into the zeros of a preallocated
    segment, so the reader must decide whether a valid frame hides inside them; every 16th offset looks
    like a frame start (a length that fits, a payload that begins like a msgpack array of records)
    claiming a frame as long as the rest.  A search that checksums every candidate in full is quadratic
    in ``size``.
    """
    crafted = bytearray()
    while len(crafted) < size:
        crafted += _FRAME.pack(max(1, size - len(crafted) - 16), 0x12345678) + b"\x91\x94" + b"\x01" * 6
    return _FRAME.pack(size + 64, 0xDEADBEEF) + bytes(crafted[:size])


_V1_HEADER = struct.Struct("<8sHHQqI")


def downgrade_to_version_1(root: str | os.PathLike[str]) -> None:
    """Rewrite the journal under ``root`` as a version-1 shipslog wrote it (36-byte headers with no seal, frames
    re-chained from them), parsed and encoded independently of shipslog; snapshots are removed (their positions
    name version-2 offsets)."""
    prev = 0
    for path in segments(root):
        with open(path, "rb") as f:
            data = f.read()
        first_seq = struct.unpack_from("<Q", data, 12)[0]
        created_ns = struct.unpack_from("<q", data, 20)[0]
        body = _V1_HEADER.pack(b"SHIPSLOG", 1, 0, first_seq, created_ns, prev)
        out = bytearray(body + struct.pack("<I", zlib.crc32(body)))
        crc = zlib.crc32(body)
        for off, length in frames(path):
            payload = data[off + 8: off + 8 + length]
            crc = zlib.crc32(payload, zlib.crc32(struct.pack("<I", length), crc))
            out += _FRAME.pack(length, crc) + payload
        prev = crc
        with open(path, "wb") as f:
            f.write(bytes(out) + bytes(max(0, len(data) - len(out))))
    snapshots = os.path.join(root, "snapshots")
    for name in os.listdir(snapshots) if os.path.isdir(snapshots) else []:
        os.unlink(os.path.join(snapshots, name))


def write_version_1_snapshot(path: str, seq: int, position: tuple[int, int, int, int], payload: bytes) -> None:
    """Write a version-1 snapshot file (no ``segment_crc``) at ``path``, encoded independently of shipslog."""
    head = struct.pack("<8sHHQQQIQQ", b"SHIPSNAP", 1, 0, seq, *position, len(payload))
    body = head + payload
    with open(path, "wb") as f:
        f.write(body + struct.pack("<I", zlib.crc32(body)))


class GatedSyncFs(RecordingFileSystem):
    """Holds the first fdatasync after ``armed`` is set until ``release`` is set, so that other appenders
    queue up behind it; with ``fail`` that fdatasync then fails with EIO instead of syncing."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.armed = False
        self.fail = fail

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(30)
            if self.fail:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)


def queue_behind_held_sync(journal: Journal, fs: GatedSyncFs, append: Callable[[int], None], first: int, more: range) -> list[threading.Thread]:
    """Start ``append(first)`` and hold its fdatasync; then start ``append(i)`` for each of ``more`` and wait
    until all of them are queued behind it.  Returns every thread started (the first one first)."""
    fs.armed = True
    threads = [threading.Thread(target=append, args=(first,))]
    threads[0].start()
    assert fs.entered.wait(30)
    threads += [threading.Thread(target=append, args=(i,)) for i in more]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while len(journal._queue) < len(more):
        assert time.monotonic() < deadline, f"{len(journal._queue)} of {len(more)} appends queued behind the held sync"
        time.sleep(0.001)
    return threads
