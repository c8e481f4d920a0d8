"""Power loss, not a process kill: what is not yet durable is gone.  One test per shape a power cut left, on the
crash-image file system, and the quick power-loss harness run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zlib
from typing import Any

import pytest
from _engine_helpers import SEGMENT_BYTES, SimulatedCrash, open_engine
from _recovery_helpers import DyingFileSystem, dies_at, drop, open_with

from shipslog import Engine
from shipslog.engine import FileEntry
from shipslog.journal import (
    CrashImage,
    CrashImageFileSystem,
    FileSystem,
    JournalLockedError,
    RootLock,
)
from shipslog.recovery import check_invariants


def _recovered_cleanly(e: Engine) -> None:
    assert e.violations == []
    assert check_invariants(e.root, e.state, registry=e.registry, live_session=e.session, deep=True) == []


def _images_of(work: Any, tmp_path: Any) -> list[CrashImage]:
    """Run ``work(engine)`` on a crash-image file system; the image of a power cut at each durability point.

    (Partial images, which also tear the journal's unsynced tail, are the harness's; see the last test.)
    """
    root = os.path.join(tmp_path, "root")
    os.makedirs(root)
    fs = CrashImageFileSystem(root, sync=False)
    images: list[CrashImage] = []
    fs.on_sync = lambda f, before: None if before else images.append(f.image())
    with Engine.open(root, fs=fs, segment_bytes=SEGMENT_BYTES) as e:
        work(e)
    fs.on_sync = None
    return images


def _byte_merge(base: str, base_files: list[FileEntry], adapter: str, adapter_files: list[FileEntry], out: str, *, fs: FileSystem) -> tuple[list[FileEntry], dict[str, Any]]:
    written = []
    for entry in base_files:
        with open(os.path.join(base, entry.path), "rb") as f:
            data = f.read()
        fd = fs.open(os.path.join(out, entry.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            fs.write_all(fd, data)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        written.append(FileEntry(entry.path, len(data), zlib.crc32(data)))
    return written, {"merged_modules": 1}


def _base_and_adapter(e: Engine) -> None:
    with e.save_model("base") as m:
        m.write_bytes("model.bin", b"base weights" * 50)
    with e.save_adapter("lora-1") as a:
        a.write_bytes("adapter_model.bin", b"adapter" * 20)


# -- the shapes --------------------------------------------------------------------------------------


def test_a_checkpoint_durable_record_never_outlives_its_staging_folder(tmp_path: Any) -> None:
    def work(e: Engine) -> None:
        with e.checkpoint("step-1", step=1) as ck:
            ck.write_bytes("model.bin", b"weights" * 100)
            ck.write_bytes("sub/opt.bin", b"optimizer")

    images = _images_of(work, tmp_path)
    assert len(images) > 10
    for n, image in enumerate(images):
        root = image.materialize(os.path.join(tmp_path, f"i{n}"))
        with open_engine(root) as e:
            outcomes = [r.outcome for r in e.recovery.results]
            assert not any("no copy verifies" in o for o in outcomes), f"image {n} ({image.label}): {outcomes}"
            _recovered_cleanly(e)


def test_a_merged_model_durable_record_never_outlives_its_staging_folder(tmp_path: Any) -> None:
    def work(e: Engine) -> None:
        _base_and_adapter(e)
        e.consolidate_with(_byte_merge, base="base", adapter="lora-1", into="merged", pointer="current")

    for n, image in enumerate(_images_of(work, tmp_path)):
        root = image.materialize(os.path.join(tmp_path, f"i{n}"))
        with open_engine(root) as e:
            outcomes = [r.outcome for r in e.recovery.results]
            assert not any("no copy" in o for o in outcomes), f"image {n} ({image.label}): {outcomes}"
            _recovered_cleanly(e)


def _consolidation_cut_at(root: str, point: str) -> str:
    fs = DyingFileSystem()
    e = open_with(root, fs)
    _base_and_adapter(e)
    with dies_at(fs, point), pytest.raises(SimulatedCrash):
        e.consolidate_with(_byte_merge, base="base", adapter="lora-1", into="merged", pointer="current")
    op = next(o.id for o in e.state.ops.values() if o.type == "consolidation")
    drop(e, fs)
    return op


def test_an_adapter_left_under_both_names_by_a_cut_retire_is_settled(root: str) -> None:
    op = _consolidation_cut_at(root, "consolidation.before_adapter_retire")
    # power lost inside the retiring rename after retired/ was fsynced and before adapters/ was: both names survive
    shutil.copytree(os.path.join(root, "adapters", "lora-1"), os.path.join(root, "retired", f"{op}-lora-1"))
    with open_engine(root) as e:
        _recovered_cleanly(e)
        assert "lora-1" not in e.state.adapters
    assert not os.path.exists(os.path.join(root, "adapters", "lora-1"))
    assert os.path.isfile(os.path.join(root, "retired", f"{op}-lora-1", "adapter_model.bin"))


def test_a_merged_staging_copy_left_beside_the_installed_model_is_quarantined(root: str) -> None:
    op = _consolidation_cut_at(root, "consolidation.after_installed")
    # the install rename fsyncs only models/: a power cut can keep the staged name too
    shutil.copytree(os.path.join(root, "models", "merged"), os.path.join(root, "staging", op))
    with open_engine(root) as e:
        _recovered_cleanly(e)
        assert any(q.startswith("quarantine/") for q in e.recovery.quarantined)
    assert not os.path.exists(os.path.join(root, "staging", op))


def test_a_removal_whose_trash_survived_beside_a_new_folder_of_that_name_finishes_both(tmp_path: Any) -> None:
    fs = FileSystem(sync=False)
    parent = os.path.join(tmp_path, "p")
    for name in ("x", ".x.deleting"):
        os.makedirs(os.path.join(parent, name, "sub"))
        with open(os.path.join(parent, name, "sub", "f"), "wb") as f:
            f.write(name.encode())
    fs.remove_tree_durable(os.path.join(parent, "x"))
    assert os.listdir(parent) == []


def test_the_lock_holder_note_is_best_effort_on_a_full_disk(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    class FullDisk(FileSystem):
        def write_all(self, fd: int, data: Any, offset: int | None = None) -> None:
            raise OSError(28, "No space left on device")

    root = str(tmp_path)
    with caplog.at_level(logging.WARNING, logger="shipslog.journal"):
        lock = RootLock(root, fs=FullDisk(sync=False))
        lock.acquire()
    try:
        assert lock.held
        assert "holder's note" in caplog.text
        with pytest.raises(JournalLockedError):
            RootLock(root).acquire()
    finally:
        lock.release()


# -- the harness -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_power_loss_quick_finds_no_violation_loses_nothing_acknowledged_and_refuses_no_root(tmp_path: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shipslog", "torture", "--power-loss", "--quick", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.stdout.startswith("{"), proc.stderr
    result = json.loads(proc.stdout)
    assert result["crash_states"] > 400
    assert result["recovery_crash_states"] > 0
    assert result["violations"] == []
    assert result["acknowledged_lost"] == []
    assert result["refused"] == []
