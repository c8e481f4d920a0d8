"""``shipslog bench checkpoint``: the command runs small, prints every figure, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from shipslog.tools import build_parser

MEASURES = (
    "raw_write_fsync_s",
    "torch_save_fsync_s",
    "shipslog_save_s",
    "shipslog_load_verify_s",
    "torch_load_s",
    "shipslog_load_verify_cold_s",
    "torch_load_cold_s",
    "async_blocking_s",
    "async_blocking_first_s",
    "async_persist_s",
    "merge_s",
    "merge_reference_s",
)
RATIOS = ("save_vs_raw", "save_vs_torch_save", "load_vs_torch_load", "load_cold_vs_torch_load_cold", "async_blocking_vs_save", "merge_vs_reference")
TARGETS = (
    "save_le_1_1x_raw",
    "save_le_torch_save",
    "load_le_torch_load",
    "load_cold_le_torch_load_cold",
    "async_blocking_le_0_1x_save",
    "merge_le_1_2x_reference",
)


@pytest.mark.subprocess
def test_bench_checkpoint_prints_json_and_removes_its_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shipslog", "bench", "checkpoint", "--json", "--mib", "8", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in MEASURES:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert set(result["ratios"]) >= set(RATIOS)
    assert set(result["targets"]) == set(TARGETS)
    assert all(isinstance(v, bool) for v in result["targets"].values())
    assert result["mib"] == 8 and result["dir"] == str(tmp_path)
    assert result["merge_max_abs_diff"] == 0.0
    assert result["cold"] is True  # posix_fadvise is there on Linux
    assert os.listdir(tmp_path) == []
    readable = subprocess.run(
        [sys.executable, "-m", "shipslog", "bench", "checkpoint", "--mib", "1", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert readable.returncode == 0, readable.stderr
    assert "checkpoint / raw write" in readable.stdout and "MiB of float32" in readable.stdout
    assert os.listdir(tmp_path) == []


def test_bench_checkpoint_arguments() -> None:
    args = build_parser().parse_args(["bench", "checkpoint"])
    assert args.mib == 512 and args.dir == "." and not args.json
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "checkpoint", "--mib", "0"])


def test_bench_checkpoint_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shipslog.tools import main

    with pytest.raises(SystemExit) as caught:
        main(["bench", "checkpoint", "--dir", str(tmp_path / "missing"), "--mib", "1"])
    assert caught.value.code == 2
    assert "is not a folder" in capsys.readouterr().err
