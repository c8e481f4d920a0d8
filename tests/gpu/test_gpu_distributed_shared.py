"""One checkpoint written by every rank (``shared_checkpoint``) and a resume chosen by every rank (``choose_verified``).

The multi-rank tests run real gloo ranks on CPU, one process each
(``shipslog.tools._dcp_ranks``); the others run in this process, where the
same calls run without a process group.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from _engine_helpers import kinds

from shipslog import Engine
from shipslog.engine import IntegrityError, read_manifest
from shipslog.gpu.distributed import (
    DistributedCheckpointError,
    RankFile,
    choose_verified,
    shared_checkpoint,
)
from shipslog.journal import crc32
from shipslog.tools import RankResult, run_ranks, shared_bytes

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(300)]


def _ok(results: list[RankResult]) -> list[dict[str, Any]]:
    for r in results:
        assert r.returncode == 0 and "error" not in r.report, f"rank {r.rank}: {r.report} {r.stderr_tail}"
    return [r.report for r in results]


def _kinds(root: Path) -> list[str]:
    return [k for k in kinds(root) if k.startswith("checkpoint.")]


def _flip(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_shared_checkpoint_commits_every_ranks_files_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    reports = _ok(run_ranks("shared", 2, str(root), str(tmp_path / "work"), step=(1, 2), seed=5))
    assert [r["checkpoint"]["name"] for r in reports] == ["step-2", "step-2"]
    assert all(r["checkpoint"]["world_size"] == 2 for r in reports)
    folder = root / "checkpoints" / "step-2"
    manifest = read_manifest(folder)
    listed = {f.path: (f.size, f.crc32) for f in manifest.files}
    assert set(listed) == {"rank-0.bin", "rank-1.bin", "common.bin"}
    for rank in (0, 1):
        data = (folder / f"rank-{rank}.bin").read_bytes()
        assert data == shared_bytes(5, 2, rank)
        assert listed[f"rank-{rank}.bin"] == (len(data), crc32(data))
    assert listed["common.bin"] == (len(b"common 2\n"), crc32(b"common 2\n"))  # unrecorded: checksummed at commit
    assert manifest.meta["world_size"] == 2
    assert _kinds(root) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"] * 2
    assert os.listdir(root / "staging") == []


def test_a_shared_checkpoint_with_a_full_disk_on_one_rank_fails_on_every_rank_and_is_aborted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    results = run_ranks("shared", 2, str(root), str(tmp_path / "work"), step=1, fail_rank=1)
    errors = [r.report.get("error", "") for r in results]
    assert all(e.startswith("DistributedCheckpointError: save of checkpoint 'step-1'") for e in errors), errors
    assert all("rank 1: OSError" in e and "No space left on device" in e for e in errors), errors
    assert _kinds(root) == ["checkpoint.begun", "checkpoint.aborted"]
    assert os.listdir(root / "staging") == []
    assert not (root / "checkpoints" / "step-1").exists()


def test_a_shared_checkpoint_whose_rank_dies_mid_file_fails_on_the_others_and_is_aborted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    results = run_ranks("shared", 2, str(root), str(tmp_path / "work"), step=1, die_rank=1, pg_timeout_s=30)
    assert results[1].returncode == -9
    assert "a rank left the job" in results[0].report.get("error", ""), results[0]
    assert _kinds(root) == ["checkpoint.begun", "checkpoint.aborted"]
    assert os.listdir(root / "staging") == []


def test_every_rank_chooses_the_checkpoint_before_one_whose_rank_file_is_damaged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _ok(run_ranks("shared", 2, str(root), str(tmp_path / "work"), step=(1, 2)))
    _flip(root / "checkpoints" / "step-2" / "rank-1.bin")  # only rank 1 reads it
    reports = _ok(run_ranks("choose", 2, str(root), str(tmp_path / "work2")))
    assert [r["chosen"]["name"] for r in reports] == ["step-1", "step-1"]
    assert [r["chosen"]["step"] for r in reports] == [1, 1]


def test_every_rank_chooses_nothing_on_a_root_without_checkpoints(tmp_path: Path) -> None:
    reports = _ok(run_ranks("choose", 2, str(tmp_path / "root"), str(tmp_path / "work")))
    assert [r["chosen"] for r in reports] == [None, None]


# -- in one process --------------------------------------------------------------------------


def test_a_shared_checkpoint_refuses_a_file_report_of_another_generation(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "root") as engine:
        with (pytest.raises(DistributedCheckpointError, match="reported a file of another operation"),
              shared_checkpoint(engine, "step-1", step=1) as ck):
            (Path(ck.path) / "x.bin").write_bytes(b"x")
            ck.files.append(RankFile("op-old/0000", "x.bin", 1, crc32(b"x")))
        assert "step-1" not in engine.state.checkpoints
    assert _kinds(tmp_path / "root") == ["checkpoint.begun", "checkpoint.aborted"]


def test_a_shared_checkpoint_refuses_to_record_a_path_outside_its_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"o")
    with Engine.open(tmp_path / "root") as engine:
        with (pytest.raises(DistributedCheckpointError, match="a relative path inside the staging folder") as info,
              shared_checkpoint(engine, "step-1", step=1) as ck):
            ck.record("../../../outside.bin")
        assert isinstance(info.value.__cause__, IntegrityError)
        assert "step-1" not in engine.state.checkpoints


def test_choose_verified_in_one_process_falls_back_past_a_damaged_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Engine.open(tmp_path / "root") as engine:
        for step in (1, 2):
            with shared_checkpoint(engine, f"step-{step}", step=step) as ck:
                (Path(ck.path) / "w.bin").write_bytes(b"weights %d" % step)
        _flip(tmp_path / "root" / "checkpoints" / "step-2" / "w.bin", 3)
        chosen = choose_verified(engine, ["checkpoints/step-2", "checkpoints/step-1"])
        assert chosen is not None
        assert chosen[0].name == "step-1" and chosen[1] == engine.path("checkpoints", "step-1")
        assert "checkpoints/step-2 does not verify" in caplog.text
        assert choose_verified(engine, ["checkpoints/step-2"]) is None


def test_a_shared_checkpoint_refuses_one_file_reported_twice(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "root") as engine:
        with (pytest.raises(DistributedCheckpointError, match=r"both reported 'a\.bin'"),
              shared_checkpoint(engine, "step-1", step=1) as ck):
            (Path(ck.path) / "a.bin").write_bytes(b"a")
            ck.files.append(ck.record("a.bin"))
        assert "step-1" not in engine.state.checkpoints
    assert _kinds(tmp_path / "root") == ["checkpoint.begun", "checkpoint.aborted"]


def test_an_interrupt_in_a_shared_checkpoint_stays_an_interrupt_and_aborts_it(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "root") as engine:
        with pytest.raises(KeyboardInterrupt), shared_checkpoint(engine, "step-1", step=1) as ck:
            (Path(ck.path) / "a.bin").write_bytes(b"a")
            raise KeyboardInterrupt
        assert "step-1" not in engine.state.checkpoints
    assert _kinds(tmp_path / "root") == ["checkpoint.begun", "checkpoint.aborted"]
    assert os.listdir(tmp_path / "root" / "staging") == []
