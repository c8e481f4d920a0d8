"""CRC-32 (zlib's polynomial) of large buffers: the fastest implementation at hand, on several threads, combined.

:func:`crc32` is ``zlib.crc32``'s function, taken from ISA-L (the ``isal``
package, several times faster with carry-less multiplication) when it is
installed and from ``zlib`` otherwise; both give the same values, so files
written with one verify with the other.

:func:`crc32_combine` is zlib's ``crc32_combine``: the CRC-32 of ``A + B``
from the CRC-32s of ``A`` and ``B`` and the length of ``B`` (GF(2) matrix
powers, O(log len) 32x32 products).  :func:`parallel_crc32` splits a buffer
into one piece per thread, checksums the pieces at once (``zlib.crc32``
releases the GIL for large buffers) and combines them, so verifying a
multi-gigabyte file is bounded by memory bandwidth rather than one core.
The result always equals ``zlib.crc32(buffer)``.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["CRC32_IMPLEMENTATION", "crc32", "crc32_combine", "crc32_while", "parallel_crc32"]

crc32: Callable[..., int]
"""``crc32(data, value=0)``: zlib's CRC-32 of ``data`` continuing from ``value`` (ISA-L's when installed)."""
CRC32_IMPLEMENTATION: str
"""Which implementation :func:`crc32` is: ``isal`` or ``zlib``."""
try:
    from isal.isal_zlib import crc32
except ImportError:  # a platform without isal's wheels: zlib's, slower, same values
    crc32 = zlib.crc32
    CRC32_IMPLEMENTATION = "zlib"
else:
    CRC32_IMPLEMENTATION = "isal"

_POLY = 0xEDB88320
_MIN_PIECE = 8 << 20
"""Below this many bytes per thread one call is faster than a hand-off."""


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The threads of every parallel checksum in this process (made on first use)."""
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="shipslog-crc")


def _times(matrix: list[int], vector: int) -> int:
    out = 0
    i = 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


@functools.cache
def _zeros(k: int) -> list[int]:
    """The operator that appends ``2**k`` zero bytes to a CRC register (built once per ``k`` in a process)."""
    if k == 0:
        op = [_POLY] + [1 << n for n in range(31)]  # appends one zero bit
        for _ in range(3):
            op = _square(op)
        return op
    return _square(_zeros(k - 1))


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """The CRC-32 of ``A + B`` given ``zlib.crc32(A)``, ``zlib.crc32(B)`` and ``len(B)``.

    Appends ``len(B)`` zero bytes to ``crc_a`` with the operator for ``2**k``
    zero bytes per set bit ``k`` of the length (the operators are kept, so a
    combine costs a few dozen 32x32 products, microseconds).
    """
    if len_b <= 0:
        return crc_a
    k = 0
    while len_b:
        if len_b & 1:
            crc_a = _times(_zeros(k), crc_a)
        len_b >>= 1
        k += 1
    return (crc_a ^ crc_b) & 0xFFFFFFFF


def crc32_while(data: bytes | bytearray | memoryview, crc: int, work: Callable[[], object]) -> int:
    """``zlib.crc32(data, crc)``, computed on another thread while ``work()`` runs on this one (for large ``data``).

    For checksumming a buffer while it is written: both release the GIL, so
    the cost is the longer of the two, not their sum.  ``work``'s exception
    propagates (after the checksum thread finished).
    """
    view = memoryview(data).cast("B")
    if len(view) < _MIN_PIECE // 8:
        work()
        return crc32(view, crc)
    future = _pool().submit(crc32, view, crc)
    try:
        work()
    finally:
        result = future.result()
    return result


def parallel_crc32(buffer: bytes | bytearray | memoryview, threads: int | None = None) -> int:
    """``zlib.crc32(buffer)``, computed on up to ``threads`` threads (default: the CPUs, at most 8) for large buffers."""
    with memoryview(buffer) as whole, whole.cast("B") as view:
        size = len(view)
        count = max(1, min(threads or min(os.cpu_count() or 1, 8), size // _MIN_PIECE))
        if count == 1:
            return crc32(view)
        step = -(-size // count)
        pieces = [view[i : i + step] for i in range(0, size, step)]
        try:
            crcs = list(_pool().map(crc32, pieces))
        finally:
            for piece in pieces:  # no view of ``buffer`` outlives the call (a mapped file can then be closed)
                piece.release()
    crc = crcs[0]
    for i in range(1, len(crcs)):
        crc = crc32_combine(crc, crcs[i], min(step, size - i * step))
    return crc
