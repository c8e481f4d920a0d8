"""Each benchmark baseline does the durable work of what it is compared with (counted with the recording file
system), so a baseline cannot silently get cheaper and flatter shipslog's ratios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from shipslog import Engine
from shipslog.gpu import make_bench_state, save_state_dict, torch_save_fsync, write_raw_fsync
from shipslog.journal import RecordingFileSystem
from shipslog.tools import syncs_floor_ms, syncs_per_checkpoint


def _syncs(fs: RecordingFileSystem, path: str) -> int:
    return sum(1 for op in fs.ops if op.op in ("fsync", "fdatasync") and op.path == path)


def test_the_raw_write_baseline_writes_every_tensor_byte_and_syncs_it_once(tmp_path: Path) -> None:
    state = make_bench_state(1, seed=0)
    payload = sum(t.numel() * t.element_size() for t in state.values())
    fs = RecordingFileSystem()
    path = str(tmp_path / "raw.bin")
    write_raw_fsync(state, path, fs=fs)
    assert sum(op.size for op in fs.ops if op.op == "write") == payload == os.path.getsize(path)
    assert _syncs(fs, path) == 1


def test_the_torch_save_baseline_syncs_its_file_once_and_holds_every_tensor_byte(tmp_path: Path) -> None:
    state = make_bench_state(1, seed=0)
    fs = RecordingFileSystem()
    path = str(tmp_path / "state.pt")
    torch_save_fsync(state, path, fs=fs)
    assert _syncs(fs, path) == 1
    assert os.path.getsize(path) >= sum(t.numel() * t.element_size() for t in state.values())
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_the_checkpoint_s_own_tensor_file_writes_the_same_tensor_bytes_as_the_raw_baseline(tmp_path: Path) -> None:
    state = make_bench_state(1, seed=0)
    payload = sum(t.numel() * t.element_size() for t in state.values())
    with Engine.open(tmp_path / "root") as engine, engine.checkpoint("c", step=1) as ck:
        save_state_dict(state, ck.path)
    folder = tmp_path / "root" / "checkpoints" / "c"
    assert sum(p.stat().st_size for p in folder.iterdir() if p.name != "MANIFEST") >= payload


def test_the_empty_checkpoint_s_floor_makes_as_many_syncs_as_the_checkpoint(tmp_path: Path) -> None:
    syncs = syncs_per_checkpoint(str(tmp_path / "count"))
    fs = RecordingFileSystem()
    syncs_floor_ms(str(tmp_path), syncs, repeats=3, fs=fs)
    assert fs.count("fdatasync") == 3 * syncs and fs.count("write") == 3 * syncs
