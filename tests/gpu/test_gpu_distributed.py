"""Multi-rank checkpoints through DCP: one commit for every rank's files, verified loads, resharding, rank failures.

The multi-rank tests run real gloo ranks on CPU, one process each
(``shipslog.tools._dcp_ranks``); the others run in this process with DCP's
single-process mode.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from _engine_helpers import events_of, journal_records, kind_of
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.futures import Future

from shipslog import Engine
from shipslog.engine import IntegrityError, read_manifest
from shipslog.gpu.distributed import (
    DistributedCheckpointError,
    RankFile,
    ShipslogStorageWriter,
    decode_dcp_metadata,
    load_distributed,
    save_distributed,
)
from shipslog.tools import RankResult, read_acks, run_ranks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # DCP warns that it runs without a process group


def _ok(results: list[RankResult]) -> list[dict[str, Any]]:
    for r in results:
        assert r.returncode == 0 and "error" not in r.report, f"rank {r.rank}: {r.report} {r.stderr_tail}"
    return [r.report for r in results]


def _op_of(root: Path, name: str) -> str:
    with Engine.open(root) as engine:
        return engine.state.checkpoints[name].op


@pytest.fixture(scope="module")
def two_rank_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with ``step-4`` saved by two gloo ranks (seed 1)."""
    base = tmp_path_factory.mktemp("two-ranks")
    _ok(run_ranks("save", 2, str(base / "root"), str(base / "work"), step=4, seed=1))
    return base / "root"


# -- multi-rank -----------------------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_two_ranks_commit_one_checkpoint_whose_manifest_lists_every_rank_s_files(two_rank_root: Path) -> None:
    folder = two_rank_root / "checkpoints" / "step-4"
    manifest = read_manifest(folder)
    assert sorted(f.path for f in manifest.files) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert manifest.step == 4 and manifest.meta == {"format": "dcp", "world_size": 2}
    assert events_of(two_rank_root, _op_of(two_rank_root, "step-4")) == [
        "checkpoint.begun", "checkpoint.durable", "checkpoint.committed"
    ]
    assert os.listdir(two_rank_root / "staging") == []


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_two_ranks_load_what_two_ranks_saved(two_rank_root: Path, tmp_path: Path) -> None:
    reports = _ok(run_ranks("load", 2, str(two_rank_root), str(tmp_path), seed=1))
    for report in reports:
        assert report["checkpoint"] == {"name": "step-4", "step": 4, "path": "checkpoints/step-4", "world_size": 2}
        assert report["rows_equal"] and report["whole_equal"] and report["extra"] == 4


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_four_ranks_save_and_two_ranks_and_one_load_resharded(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    _ok(run_ranks("save", 4, root, str(tmp_path / "work"), step=8, seed=2))
    assert sorted(f.path for f in read_manifest(tmp_path / "root" / "checkpoints" / "step-8").files) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"
    ]
    for world in (2, 1):
        reports = _ok(run_ranks("load", world, root, str(tmp_path / f"load-{world}"), seed=2))
        assert len(reports) == world
        assert all(r["rows_equal"] and r["whole_equal"] and r["checkpoint"]["world_size"] == 4 for r in reports)


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_flipped_byte_in_one_rank_s_file_fails_the_load_on_every_rank_naming_the_file(two_rank_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(two_rank_root, root)
    victim = root / "checkpoints" / "step-4" / "__1_0.distcp"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    results = run_ranks("load", 2, str(root), str(tmp_path / "work"), seed=1)
    for r in results:
        assert r.returncode == 0
        assert r.report["error"].startswith("DistributedCheckpointError: load of checkpoints/step-4 failed")
        assert "__1_0.distcp" in r.report["error"] and "CRC-32" in r.report["error"]
        assert "rows_equal" not in r.report


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_rank_whose_disk_fills_fails_the_save_on_every_rank_and_the_operation_is_aborted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    results = run_ranks("save", 2, str(root), str(tmp_path / "work"), step=4, seed=1, fail_rank=1)
    for r in results:
        assert r.returncode == 0
        assert "rank 1" in r.report["error"] and "No space left on device" in r.report["error"]
    assert not (root / "checkpoints" / "step-4").exists()
    assert os.listdir(root / "staging") == []
    kinds = [kind_of(r.event) for r in journal_records(root) if kind_of(r.event).startswith("checkpoint.")]
    assert kinds == ["checkpoint.begun", "checkpoint.aborted"]


def _failed_everywhere_and_aborted(root: Path, results: list[RankResult], *, dead: int | None, says: str) -> None:
    for r in results:
        assert r.returncode is not None, f"rank {r.rank} hung"
        if r.rank == dead:
            assert r.returncode == -9
        else:
            assert r.returncode == 0 and says in r.report["error"], r.report
    assert not (root / "checkpoints" / "step-1").exists()
    if dead != 0:  # the coordinator lived: it aborted the operation itself
        assert os.listdir(root / "staging") == []
        assert [k for k in (kind_of(x.event) for x in journal_records(root)) if k.startswith("checkpoint.")] == [
            "checkpoint.begun", "checkpoint.aborted"
        ]


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_rank_killed_in_the_middle_of_its_file_fails_the_save_on_every_other_rank(tmp_path: Path) -> None:
    results = run_ranks("save", 2, str(tmp_path / "root"), str(tmp_path / "work"), step=1, die_rank=1)
    _failed_everywhere_and_aborted(tmp_path / "root", results, dead=1, says="a rank left the job")


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_rank_that_stops_reporting_fails_the_save_on_every_rank_within_the_timeout(tmp_path: Path) -> None:
    results = run_ranks("save", 2, str(tmp_path / "root"), str(tmp_path / "work"), step=1, stall_rank=1, pg_timeout_s=5)
    assert "did not take part within the process group's timeout" in results[0].report["error"]
    _failed_everywhere_and_aborted(tmp_path / "root", results, dead=None, says="save of checkpoint 'step-1'")


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_load_on_a_root_without_a_distributed_checkpoint_finds_none_on_every_rank(tmp_path: Path) -> None:
    reports = _ok(run_ranks("load", 2, str(tmp_path / "root"), str(tmp_path / "work")))
    assert [r["checkpoint"] for r in reports] == [None, None]


# -- one process -------------------------------------------------------------------------------


def _state(value: float) -> dict[str, Any]:
    return {"w": torch.full((4, 3), value), "nested": {"b": torch.arange(5.0) * value, "n": int(value)}}


def test_one_process_saves_and_loads_the_same_way_without_a_process_group(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "root") as engine:
        saved = save_distributed(engine, _state(3.0), step=2)
        target = _state(0.0)
        found = load_distributed(engine, target)
    assert saved.path == "checkpoints/step-2" and found == saved
    assert torch.equal(target["w"], torch.full((4, 3), 3.0)) and target["nested"]["n"] == 3


def test_the_newest_distributed_checkpoint_by_step_is_loaded_and_a_named_one_on_request(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "root") as engine:
        save_distributed(engine, _state(5.0), step=5)
        save_distributed(engine, _state(1.0), step=1, name="early")
        with engine.checkpoint("not-dcp", step=9) as ck:  # a checkpoint of another format is never picked
            ck.write_bytes("x.bin", b"x")
        newest = _state(0.0)
        assert load_distributed(engine, newest).name == "step-5"  # type: ignore[union-attr]
        named = _state(0.0)
        assert load_distributed(engine, named, name="early").step == 1  # type: ignore[union-attr]
    assert newest["nested"]["n"] == 5 and named["nested"]["n"] == 1


def test_the_coordinator_without_the_engine_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(DistributedCheckpointError, match=r"rank 0: the coordinator .* needs the engine"):
        save_distributed(None, _state(1.0), step=1)


def test_a_rank_of_an_earlier_operation_never_recreates_its_staging_folder(tmp_path: Path) -> None:
    gone = tmp_path / "root" / "staging" / "op-gone"
    writer = ShipslogStorageWriter(str(gone), generation="old")
    import torch.distributed.checkpoint as dcp

    with pytest.raises(BaseException, match="does not exist"):
        dcp.save(_state(1.0), storage_writer=writer, no_dist=True)
    assert not gone.exists() and not (tmp_path / "root").exists()


class _StaleWriter(ShipslogStorageWriter):
    """Reports its files under another generation, as a rank of an earlier incarnation would."""

    def write_data(self, plan: Any, planner: Any) -> Any:
        results = []
        for result in super().write_data(plan, planner).value():
            f = result.storage_data
            stale = RankFile("stale", f.path, f.size, f.crc32) if isinstance(f, RankFile) else None
            results.append(result if stale is None else dataclasses.replace(result, storage_data=stale))
        done: Any = Future()
        done.set_result(results)
        return done


def test_write_results_of_another_generation_are_refused_and_nothing_is_committed(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with Engine.open(tmp_path / "root") as engine:
        ck = engine.checkpoint("step-1", step=1)
        writer = _StaleWriter(ck.path, generation="current", commit=ck)
        with pytest.raises(BaseException, match="another generation"):
            dcp.save(_state(1.0), storage_writer=writer, no_dist=True)
        assert ck.state == "open" and "step-1" not in engine.state.checkpoints
        ck.abort("test")
    assert not (tmp_path / "root" / "checkpoints" / "step-1").exists()


# -- the .metadata decoder -------------------------------------------------------------------------


def _real_metadata(tmp_path: Path) -> bytes:
    with Engine.open(tmp_path / "root") as engine:
        save_distributed(engine, _state(2.0), step=1)
    return (tmp_path / "root" / "checkpoints" / "step-1" / ".metadata").read_bytes()


def test_metadata_naming_a_class_outside_dcp_s_is_refused_without_running_it(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (os.mkdir, (str(tmp_path / "ran"),))

    with pytest.raises(IntegrityError, match=r"posix\.mkdir is not a class DCP's metadata holds"):
        decode_dcp_metadata(pickle.dumps(Boom()), "x/.metadata")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(IntegrityError, match="a pickled dict"):
        decode_dcp_metadata(pickle.dumps({"a": 1}), "x/.metadata")


def test_real_metadata_decodes(tmp_path: Path) -> None:
    metadata = decode_dcp_metadata(_real_metadata(tmp_path), "x/.metadata")
    assert set(metadata.state_dict_metadata) == {"w", "nested.b", "nested.n"}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_hostile_metadata_bytes_decode_or_raise_integrity_error(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    real = _METADATA_SAMPLE.get("bytes")
    if real is None:
        real = _METADATA_SAMPLE["bytes"] = _real_metadata(tmp_path_factory.mktemp("metadata"))
    blob = bytearray(real)
    for _ in range(data.draw(st.integers(0, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    blob = blob[: data.draw(st.integers(0, len(blob)))] if data.draw(st.booleans()) else blob
    try:
        found = decode_dcp_metadata(bytes(blob), "x/.metadata")
    except IntegrityError:
        return
    assert type(found).__name__ == "Metadata"


_METADATA_SAMPLE: dict[str, bytes] = {}


# -- asynchronous saves ------------------------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_asynchronous_saves_commit_one_after_another_and_the_newest_loads_back(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    reports = _ok(run_ranks("save-async", 2, root, str(tmp_path / "save"), step=(1, 2, 3), seed=3))
    assert all(r["checkpoint"]["name"] == "step-3" for r in reports)
    assert [read_acks(str(tmp_path / "save"), rank) for rank in (0, 1)] == [[1, 2, 3], [1, 2, 3]]
    loaded = _ok(run_ranks("load", 2, root, str(tmp_path / "load"), seed=3))
    assert all(r["checkpoint"]["step"] == 3 and r["rows_equal"] and r["whole_equal"] for r in loaded)
    assert sorted(os.listdir(tmp_path / "root" / "checkpoints")) == ["step-1", "step-2", "step-3"]


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_an_asynchronous_save_that_failed_on_one_rank_raises_at_the_next_call_on_every_rank(tmp_path: Path) -> None:
    results = run_ranks("save-async", 2, str(tmp_path / "root"), str(tmp_path / "save"), step=(1, 2), fail_rank=1)
    for r in results:
        assert r.returncode == 0
        assert r.report["error"].startswith("DistributedCheckpointError: save of checkpoint 'step-1'")
        assert "rank 1: OSError: [Errno 28]" in r.report["error"]
        assert read_acks(str(tmp_path / "save"), r.rank) == []
    assert os.listdir(tmp_path / "root" / "checkpoints") == [] and os.listdir(tmp_path / "root" / "staging") == []
    kinds = [kind_of(x.event) for x in journal_records(tmp_path / "root") if kind_of(x.event).startswith("checkpoint.")]
    assert kinds == ["checkpoint.begun", "checkpoint.aborted"]


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_ranks_split_over_two_simulated_hosts_share_only_the_root(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    _ok(run_ranks("save", 4, root, str(tmp_path / "save"), step=(1, 2), seed=4, hosts=2))
    loaded = _ok(run_ranks("load", 4, root, str(tmp_path / "load"), seed=4, hosts=2))
    assert all(r["checkpoint"]["step"] == 2 and r["rows_equal"] and r["whole_equal"] for r in loaded)
    for phase in ("save", "load"):  # nothing of a checkpoint lands in a host's own folders (torch's caches may)
        for host in ("host-0", "host-1"):
            local = [p for p in (tmp_path / phase / host).rglob("*") if p.is_file()]
            assert not [p for p in local if p.suffix in (".distcp", ".metadata") or p.name in ("MANIFEST", "LOCK")], local
    assert sorted(f.path for f in read_manifest(tmp_path / "root" / "checkpoints" / "step-2").files) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"
    ]
