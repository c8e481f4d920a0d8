"""CRC-32 combined from pieces equals zlib's over the whole, whatever the split and the thread count."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipslog.journal import crc32_combine, parallel_crc32


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_the_crc_of_two_pieces_combines_into_the_crc_of_both(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("threads", [None, 1, 2, 3, 8])
@pytest.mark.parametrize("size", [0, 1, (8 << 20) - 1, (24 << 20) + 7])
def test_a_parallel_crc_equals_zlib_s_over_the_whole_buffer(size: int, threads: int | None) -> None:
    data = random.Random(size).randbytes(size)
    assert parallel_crc32(data, threads=threads) == zlib.crc32(data)
    assert parallel_crc32(memoryview(data), threads=threads) == zlib.crc32(data)
