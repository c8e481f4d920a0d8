"""The checkpoint operation through the engine: files and manifest, commit, abort, conflicts,
size checks, adopting a folder another library wrote, latest by step, and verification."""

from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any

import pytest
from _engine_helpers import (
    commit_checkpoint,
    events_of,
    flip_bit,
    journal_records,
    kinds,
    open_engine,
    tree,
    truncate,
    write_files,
)

from shipslog import Engine
from shipslog.engine import (
    MANIFEST_NAME,
    ConflictError,
    FileEntry,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    read_manifest,
    verify_folder,
)


@pytest.fixture
def engine(root: str) -> Any:
    e = open_engine(root)
    yield e
    e.close()


def listing(folder: str) -> dict[str, bytes]:
    return {k: v for k, v in tree(folder, skip=()).items() if v != "<dir>"}


# -- commit ------------------------------------------------------------------------------------------


def test_a_committed_checkpoint_holds_its_files_and_a_manifest(engine: Engine, root: str) -> None:
    files = {"model.safetensors": bytes(range(256)) * 40, "config.json": b'{"layers": 2}', "opt/state.bin": b"\x00\x01" * 100}
    info = commit_checkpoint(engine, "step-100", step=100, files=files, meta={"loss": 1.5})
    final = os.path.join(root, "checkpoints", "step-100")
    assert info.path == "checkpoints/step-100" and info.step == 100 and info.files == 3
    assert info.bytes == sum(len(v) for v in files.values())
    assert listing(final) == {**files, MANIFEST_NAME: listing(final)[MANIFEST_NAME]}
    assert os.listdir(os.path.join(root, "staging")) == []
    manifest = json.loads(listing(final)[MANIFEST_NAME])
    assert manifest["kind"] == "checkpoint" and manifest["name"] == "step-100" and manifest["step"] == 100
    assert manifest["meta"] == {"loss": 1.5}
    assert [f["path"] for f in manifest["files"]] == sorted(files)
    for entry in manifest["files"]:
        data = files[entry["path"]]
        assert entry["size"] == len(data)
        assert entry["crc32"] == zlib.crc32(data)
    assert events_of(root, info.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]
    durable = next(r.event for r in journal_records(root) if r.event.op == info.op and hasattr(r.event, "manifest_crc"))
    assert durable.files == 3 and durable.bytes == info.bytes
    with open(os.path.join(final, MANIFEST_NAME), "rb") as f:
        assert durable.manifest_crc == zlib.crc32(f.read())
    assert engine.state.latest == "step-100" and engine.state.global_step == 100


def test_an_empty_checkpoint_commits_with_an_empty_manifest(engine: Engine, root: str) -> None:
    info = commit_checkpoint(engine, "empty", step=0, files={})
    assert read_manifest(os.path.join(root, info.path)).files == []
    assert info.files == 0 and info.bytes == 0


def test_the_begun_record_is_in_the_journal_before_the_staging_folder_exists(
    engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_mkdir = engine.fs.mkdir

    def mkdir(path: Any) -> None:
        if os.path.dirname(os.fspath(path)) == os.path.join(root, "staging"):
            seen.append(kinds(root)[-1])
        real_mkdir(path)

    monkeypatch.setattr(engine.fs, "mkdir", mkdir)
    ck = engine.checkpoint("x", step=1)
    assert seen == ["checkpoint.begun"]
    begun = journal_records(root)[-1].event
    assert begun.op == ck.op and begun.staging == f"staging/{ck.op}" and begun.name == "x" and begun.step == 1
    assert os.path.isdir(ck.path) and ck.path == os.path.join(root, "staging", ck.op)
    ck.abort()


def test_files_placed_into_the_staging_folder_by_other_code_are_checksummed(engine: Engine, root: str) -> None:
    with engine.checkpoint("foreign", step=3) as ck:
        with open(os.path.join(ck.path, "weights.bin"), "wb") as f:
            f.write(b"written by someone else")
        os.makedirs(os.path.join(ck.path, "sub"))
        with open(os.path.join(ck.path, "sub", "extra.txt"), "wb") as f:
            f.write(b"more")
        ck.write_bytes("own.bin", b"own")
    entries = {e.path: e for e in read_manifest(os.path.join(root, "checkpoints", "foreign")).files}
    assert entries["weights.bin"] == FileEntry("weights.bin", 23, zlib.crc32(b"written by someone else"))
    assert entries["sub/extra.txt"] == FileEntry("sub/extra.txt", 4, zlib.crc32(b"more"))
    assert set(entries) == {"weights.bin", "sub/extra.txt", "own.bin"}


def test_add_file_with_the_right_size_is_trusted(engine: Engine, root: str) -> None:
    with engine.checkpoint("added", step=1) as ck:
        with open(os.path.join(ck.path, "w.bin"), "wb") as f:
            f.write(b"0123456789")
        ck.add_file(FileEntry("w.bin", 10, zlib.crc32(b"0123456789")))
    verify_folder(os.path.join(root, "checkpoints", "added"))


def test_write_json_and_copy_file(engine: Engine, root: str, tmp_path: Any) -> None:
    src = os.path.join(tmp_path, "src.bin")
    with open(src, "wb") as f:
        f.write(b"s" * 1000)
    with engine.checkpoint("mixed", step=1) as ck:
        ck.write_json("trainer_state.json", {"global_step": 1})
        ck.copy_file(src, "nested/copy.bin")
    folder = os.path.join(root, "checkpoints", "mixed")
    assert json.loads(listing(folder)["trainer_state.json"]) == {"global_step": 1}
    assert listing(folder)["nested/copy.bin"] == b"s" * 1000
    verify_folder(folder)


# -- abort ----------------------------------------------------------------------------------------


def test_a_block_that_raises_aborts_and_removes_staging(engine: Engine, root: str) -> None:
    with pytest.raises(RuntimeError, match="training blew up"), engine.checkpoint("step-9", step=9) as ck:
        ck.write_bytes("model.bin", b"partial")
        raise RuntimeError("training blew up")
    assert not os.path.exists(ck.path)
    assert os.listdir(os.path.join(root, "staging")) == []
    assert not os.path.exists(os.path.join(root, "checkpoints", "step-9"))
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    aborted = journal_records(root)[-1].event
    assert "RuntimeError: training blew up" in aborted.reason
    assert "step-9" not in engine.state.checkpoints and engine.state.ops_of("checkpoint") == []
    commit_checkpoint(engine, "step-9", step=9)  # the name is free again


def test_abort_by_the_caller(engine: Engine, root: str) -> None:
    ck = engine.checkpoint("manual", step=1)
    ck.write_bytes("a.bin", b"a")
    ck.abort("changed my mind")
    assert not os.path.exists(ck.path)
    assert journal_records(root)[-1].event.reason == "changed my mind"
    with pytest.raises(ValueError, match="already aborted"):
        ck.write_bytes("b.bin", b"b")
    with pytest.raises(ValueError, match="already aborted"):
        ck.commit()


def test_a_failure_after_durable_aborts_from_durable(engine: Engine, root: str) -> None:
    ck = engine.checkpoint("taken", step=1)
    ck.write_bytes("a.bin", b"a")
    os.makedirs(os.path.join(root, "checkpoints", "taken"))  # appears between begin and the rename
    with pytest.raises(ConflictError, match="existing folder"):
        ck.commit()
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.aborted"]
    assert not os.path.exists(ck.path)
    assert os.listdir(os.path.join(root, "checkpoints", "taken")) == []
    assert "taken" not in engine.state.checkpoints


def test_commit_twice_is_refused(engine: Engine) -> None:
    ck = engine.checkpoint("once", step=1)
    ck.commit()
    with pytest.raises(ValueError, match="already committed"):
        ck.commit()


# -- refusals -------------------------------------------------------------------------------------


def test_a_name_used_twice_is_a_conflict(engine: Engine, root: str) -> None:
    first = commit_checkpoint(engine, "step-100", step=100)
    before = journal_records(root)
    with pytest.raises(ConflictError) as info:
        engine.checkpoint("step-100", step=200)
    assert "step-100" in str(info.value) and first.op in str(info.value)
    assert journal_records(root) == before
    assert os.listdir(os.path.join(root, "staging")) == []


def test_a_name_in_progress_is_a_conflict(engine: Engine, root: str) -> None:
    ck = engine.checkpoint("busy", step=1)
    with pytest.raises(ConflictError) as info:
        engine.checkpoint("busy", step=2)
    assert ck.op in str(info.value)
    ck.abort()


def test_a_folder_the_journal_does_not_account_for_is_a_conflict(engine: Engine, root: str) -> None:
    os.makedirs(os.path.join(root, "checkpoints", "stray"))
    with pytest.raises(ConflictError, match="does not account for"):
        engine.checkpoint("stray", step=1)
    assert kinds(root) == ["session.opened"]


def test_a_checkpoint_and_a_model_may_share_a_name(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "same", step=1)
    with engine.save_model("same") as m:
        m.write_bytes("w.bin", b"w")
    assert "same" in engine.state.models and "same" in engine.state.checkpoints
    assert os.path.isdir(os.path.join(root, "models", "same"))


@pytest.mark.parametrize("step", [-1, 1.5, "10", True])
def test_a_bad_step_is_refused(engine: Engine, root: str, step: Any) -> None:
    with pytest.raises(ValueError, match="step"):
        engine.checkpoint("x", step=step)
    assert kinds(root) == ["session.opened"]


def test_meta_that_is_not_json_is_refused(engine: Engine, root: str) -> None:
    with pytest.raises(ValueError, match="meta"):
        engine.checkpoint("x", step=1, meta={"f": object()})
    assert kinds(root) == ["session.opened"]


def test_add_file_with_a_wrong_size_fails_at_commit_and_aborts(engine: Engine, root: str) -> None:
    with pytest.raises(IntegrityError) as info, engine.checkpoint("lying", step=1) as ck:
        with open(os.path.join(ck.path, "w.bin"), "wb") as f:
            f.write(b"0123456789")
        ck.add_file(FileEntry("w.bin", 11, 0))
    assert "11 bytes" in str(info.value) and "10 bytes" in str(info.value) and "w.bin" in info.value.path
    assert events_of(root, ck.op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert not os.path.exists(ck.path) and not os.path.exists(os.path.join(root, "checkpoints", "lying"))


def test_add_file_for_a_file_that_is_not_there_fails_at_commit(engine: Engine, root: str) -> None:
    with pytest.raises(IntegrityError, match="no file"), engine.checkpoint("ghost", step=1) as ck:
        ck.add_file(FileEntry("missing.bin", 3, 0))
    assert events_of(root, ck.op)[-1] == "checkpoint.aborted"


def test_writing_the_same_file_twice_is_refused(engine: Engine) -> None:
    ck = engine.checkpoint("dup", step=1)
    ck.write_bytes("a.bin", b"1")
    with pytest.raises(FileExistsError):
        ck.write_bytes("a.bin", b"2")
    ck.abort()


def test_a_symlink_in_staging_fails_the_commit(engine: Engine, root: str, tmp_path: Any) -> None:
    outside = os.path.join(tmp_path, "outside.bin")
    with open(outside, "wb") as f:
        f.write(b"secret")
    with pytest.raises(IntegrityError, match="symlink"), engine.checkpoint("linked", step=1) as ck:
        os.symlink(outside, os.path.join(ck.path, "link.bin"))
    assert events_of(root, ck.op)[-1] == "checkpoint.aborted"
    with open(outside, "rb") as f:
        assert f.read() == b"secret"


# -- adopting a folder written by another library -----------------------------------------------------


def hf_folder(base: str, step: int = 500) -> tuple[str, dict[str, bytes]]:
    folder = os.path.join(base, f"checkpoint-{step}")
    files = {
        "model.safetensors": bytes(range(256)) * 64,
        "config.json": b'{"hidden_size": 64}',
        "trainer_state.json": json.dumps({"global_step": step}).encode(),
        "optimizer.pt": b"\x80\x04" + b"o" * 500,
        "rng/rng_state_0.pth": b"r" * 33,
    }
    write_files(folder, files)
    return folder, files


def test_adopting_a_hf_checkpoint_folder(engine: Engine, root: str, tmp_path: Any) -> None:
    src, files = hf_folder(os.fspath(tmp_path))
    before = tree(src, skip=())
    info = engine.adopt_checkpoint(src)
    assert info.name == "checkpoint-500" and info.step == 500 and info.files == len(files)
    final = os.path.join(root, "checkpoints", "checkpoint-500")
    copied = listing(final)
    assert {k: v for k, v in copied.items() if k != MANIFEST_NAME} == files
    manifest = verify_folder(final)
    assert {f.path: (f.size, f.crc32) for f in manifest.files} == {k: (len(v), zlib.crc32(v)) for k, v in files.items()}
    assert tree(src, skip=()) == before, "adopting changed the source folder"
    assert events_of(root, info.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]
    begun = next(r.event for r in journal_records(root) if r.event.op == info.op)
    assert begun.source == os.path.abspath(src) and begun.expected_bytes == sum(len(v) for v in files.values())
    assert engine.state.latest == "checkpoint-500" and engine.state.global_step == 500
    assert os.listdir(os.path.join(root, "staging")) == []


def test_adopting_with_an_explicit_name_and_step(engine: Engine, tmp_path: Any) -> None:
    src, _ = hf_folder(os.fspath(tmp_path), 7)
    info = engine.adopt_checkpoint(src, name="imported", step=70)
    assert (info.name, info.step) == ("imported", 70)


def test_adopting_a_folder_without_a_step_in_its_name(engine: Engine, tmp_path: Any) -> None:
    src = os.path.join(tmp_path, "final")
    write_files(src, {"w.bin": b"w"})
    assert engine.adopt_checkpoint(src).step is None


def test_adopting_a_missing_folder_is_refused(engine: Engine, root: str, tmp_path: Any) -> None:
    with pytest.raises(NotFoundError):
        engine.adopt_checkpoint(os.path.join(tmp_path, "nope"))
    assert kinds(root) == ["session.opened"]


def test_adopting_a_folder_holding_a_symlink_is_refused_before_anything(engine: Engine, root: str, tmp_path: Any) -> None:
    src, _ = hf_folder(os.fspath(tmp_path))
    os.symlink("/etc/hostname", os.path.join(src, "link"))
    with pytest.raises(IntegrityError):
        engine.adopt_checkpoint(src)
    assert kinds(root) == ["session.opened"]
    assert os.listdir(os.path.join(root, "checkpoints")) == []


def test_adopt_model(engine: Engine, root: str, tmp_path: Any) -> None:
    src = os.path.join(tmp_path, "llama-base")
    write_files(src, {"w.bin": b"w" * 10, "tokenizer/vocab.json": b"{}"})
    info = engine.adopt_model(src)
    assert info.artifact == "model" and info.path == "models/llama-base"
    assert "llama-base" in engine.state.models and engine.state.checkpoints == {}
    verify_folder(os.path.join(root, "models", "llama-base"))


# -- latest and verify -----------------------------------------------------------------------------


def test_latest_checkpoint_orders_by_step_not_by_name_or_commit_order(engine: Engine) -> None:
    commit_checkpoint(engine, "step-1000", step=1000)
    commit_checkpoint(engine, "step-200", step=200)  # committed later, sorts later by name
    latest = engine.latest_checkpoint()
    assert latest is not None and latest.name == "step-1000"
    assert engine.latest_checkpoint(deep=True).name == "step-1000"  # type: ignore[union-attr]


def test_latest_checkpoint_is_none_without_checkpoints(engine: Engine) -> None:
    assert engine.latest_checkpoint() is None


def test_latest_skips_a_bit_flipped_checkpoint_when_deep(engine: Engine, root: str, caplog: pytest.LogCaptureFixture) -> None:
    commit_checkpoint(engine, "step-1000", step=1000, files={"w.bin": b"x" * 100})
    commit_checkpoint(engine, "step-200", step=200)
    flip_bit(os.path.join(root, "checkpoints", "step-1000", "w.bin"), 50)
    assert engine.latest_checkpoint(deep=False).name == "step-1000"  # type: ignore[union-attr]  # sizes still match
    with caplog.at_level(logging.ERROR, logger="shipslog"):
        latest = engine.latest_checkpoint(deep=True)
    assert latest is not None and latest.name == "step-200"
    assert any("step-1000" in r.getMessage() for r in caplog.records)


def test_latest_skips_a_truncated_checkpoint(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "step-300", step=300)
    commit_checkpoint(engine, "step-1000", step=1000, files={"w.bin": b"x" * 100})
    commit_checkpoint(engine, "step-200", step=200)
    truncate(os.path.join(root, "checkpoints", "step-1000", "w.bin"), 10)
    latest = engine.latest_checkpoint(deep=False)
    assert latest is not None and latest.name == "step-300"


def test_latest_is_none_when_every_checkpoint_is_damaged(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "only", step=1)
    os.remove(os.path.join(root, "checkpoints", "only", MANIFEST_NAME))
    assert engine.latest_checkpoint() is None


def test_verify_detects_a_bit_flip(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "step-1", step=1, files={"w.bin": b"abc" * 100})
    assert [f.path for f in engine.verify("step-1").files] == ["w.bin"]
    assert engine.verify("checkpoints/step-1").name == "step-1"
    flip_bit(os.path.join(root, "checkpoints", "step-1", "w.bin"), 7, 3)
    with pytest.raises(IntegrityError) as info:
        engine.verify("step-1")
    assert info.value.path.endswith("w.bin") and "crc32" in str(info.value)


def test_verify_of_an_unknown_target(engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        engine.verify("nothing")
    with pytest.raises(InvalidNameError):
        engine.verify("checkpoints/../x")


def test_committed_checkpoints_survive_reopening(root: str) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "a", step=1)
        commit_checkpoint(e, "b", step=2)
    with open_engine(root) as again:
        assert set(again.state.checkpoints) == {"a", "b"}
        assert again.latest_checkpoint(deep=True).name == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize("synced", [False, True])
def test_a_file_added_as_synced_by_its_writer_is_not_fsynced_again_at_commit(tmp_path: Any, synced: bool) -> None:
    from shipslog.journal import RecordingFileSystem

    fs = RecordingFileSystem()
    with Engine.open(tmp_path / "root", fs=fs) as engine:
        ck = engine.checkpoint("c", step=1)
        data = b"written and fsynced by another writer"
        with open(os.path.join(ck.path, "part.bin"), "wb") as f:
            f.write(data)
        ck.add_file(FileEntry("part.bin", len(data), zlib.crc32(data)), synced=synced)
        ck.commit()
    fsynced = [op.path for op in fs.ops if op.op == "fsync" and op.path.endswith("part.bin")]
    assert fsynced == ([] if synced else [os.path.join(ck.path, "part.bin")])
    assert read_manifest(tmp_path / "root" / "checkpoints" / "c").files == [FileEntry("part.bin", len(data), zlib.crc32(data))]
