"""``shipslog bench distributed``: the command runs small on two gloo ranks, prints every figure, leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from shipslog.tools import build_parser

KEYS = ("ranks", "mib", "dcp_save_s", "shipslog_save_s", "dcp_load_s", "shipslog_load_verify_s")


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_bench_distributed_prints_its_figures_and_targets_and_removes_its_folder(tmp_path: Path) -> None:
    # no --dir: the default, the current folder, given as a relative path (the ranks run in the bench's own folder)
    done = subprocess.run(
        [sys.executable, "-m", "shipslog", "bench", "distributed", "--json", "--ranks", "2", "--mib", "16", "--repeats", "1"],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert all(key in result for key in KEYS) and result["ranks"] == 2 and result["mib"] == 16
    assert all(isinstance(result[k], float) and result[k] > 0 for k in KEYS[2:])
    assert result["loads_equal"] is True
    assert set(result["targets"]) == {"save_le_1.1x", "load_verify_le_1.25x"}
    assert os.listdir(tmp_path) == []


def test_bench_distributed_arguments() -> None:
    args = build_parser().parse_args(["bench", "distributed"])
    assert (args.ranks, args.mib, args.repeats) == (2, 256, 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "distributed", "--ranks", "0"])
