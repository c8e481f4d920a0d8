"""CRC-32 combined from pieces equals zlib's over the whole, whatever the split and the thread count."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipslog.journal import crc32, crc32_combine, parallel_crc32


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_the_crc_of_two_pieces_combines_into_the_crc_of_both(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@given(st.binary(max_size=600), st.integers(0, 0xFFFFFFFF))
def test_combining_onto_a_seed_continues_the_crc_from_it(data: bytes, seed: int) -> None:
    assert crc32_combine(seed, zlib.crc32(data), len(data)) == zlib.crc32(data, seed)


@pytest.mark.parametrize("length", [1 << 20, (1 << 33) + 12345, (1 << 40) - 1])
def test_combining_over_long_lengths_agrees_with_appending_zeros_in_steps(length: int) -> None:
    # combine(x, 0, n) advances the register x over n zero bytes, a linear map: in one step, or in two of any split,
    # which use other bits of the lengths (so other cached operators) and must agree.
    crc_a = zlib.crc32(b"shipslog")
    zero_crc = 0
    split = length // 3
    two_steps = crc32_combine(crc32_combine(crc_a, zero_crc, split), zero_crc, length - split)
    assert crc32_combine(crc_a, zero_crc, length) == two_steps


@pytest.mark.parametrize("threads", [None, 1, 2, 3, 8])
@pytest.mark.parametrize("size", [0, 1, (8 << 20) - 1, (24 << 20) + 7])
def test_a_parallel_crc_equals_zlib_s_over_the_whole_buffer(size: int, threads: int | None) -> None:
    data = random.Random(size).randbytes(size)
    assert parallel_crc32(data, threads=threads) == zlib.crc32(data)
    assert parallel_crc32(memoryview(data), threads=threads) == zlib.crc32(data)


@given(st.binary(max_size=4096), st.integers(0, 0xFFFFFFFF))
def test_the_fast_crc_gives_zlib_s_values(data: bytes, start: int) -> None:
    assert crc32(data, start) == zlib.crc32(data, start)


@pytest.mark.subprocess
@pytest.mark.timeout(120)
def test_without_isal_zlib_s_crc_is_used_and_a_checkpoint_still_verifies(tmp_path: Any) -> None:
    code = (
        "import sys\n"
        "sys.modules['isal'] = None  # as on a platform without its wheels\n"
        "sys.modules['isal.isal_zlib'] = None\n"
        "import zlib\n"
        "from shipslog import Engine\n"
        "from shipslog.journal import CRC32_IMPLEMENTATION, crc32\n"
        "assert CRC32_IMPLEMENTATION == 'zlib' and crc32 is zlib.crc32, CRC32_IMPLEMENTATION\n"
        f"with Engine.open({str(tmp_path / 'root')!r}) as engine:\n"
        "    with engine.checkpoint('c', step=1) as ck:\n"
        "        ck.write_bytes('a.bin', b'x' * 100000)\n"
        "    engine.verify('c')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_checkpoint_written_with_one_implementation_verifies_with_the_other(tmp_path: Any) -> None:
    from shipslog import Engine
    from shipslog.engine import read_manifest

    with Engine.open(tmp_path / "root") as engine, engine.checkpoint("c", step=1) as ck:
        ck.write_bytes("a.bin", random.Random(5).randbytes(300000))
    (entry,) = read_manifest(tmp_path / "root" / "checkpoints" / "c").files
    assert zlib.crc32((tmp_path / "root" / "checkpoints" / "c" / "a.bin").read_bytes()) == entry.crc32
