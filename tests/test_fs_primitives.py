"""The durable file primitives: content, the order of effects, and failures."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from shipslog.journal import OS_FS, FileSystem, RecordingFileSystem, is_temp_name


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_write_file_atomic_writes_fsyncs_renames_then_fsyncs_the_folder(tmp_path: Any) -> None:
    fs = RecordingFileSystem()
    target = os.path.join(tmp_path, "pointer")
    fs.write_file_atomic(target, b"new content")
    assert _read(target) == b"new content"
    ops = [(o.op, o.path, o.target) for o in fs.ops]
    names = [o[0] for o in ops]
    assert names == ["open", "write", "fsync", "close", "replace", "open", "fsync", "close"]
    tmp = ops[0][1]
    assert os.path.dirname(tmp) == str(tmp_path) and is_temp_name(os.path.basename(tmp))
    assert ops[4] == ("replace", tmp, target)
    assert ops[6][1] == str(tmp_path)
    assert os.listdir(tmp_path) == ["pointer"]


def test_write_file_atomic_replaces_existing_content(tmp_path: Any) -> None:
    target = os.path.join(tmp_path, "f")
    OS_FS.write_file_atomic(target, b"old")
    OS_FS.write_file_atomic(target, b"new")
    assert _read(target) == b"new"


def test_write_file_atomic_fsync_failure_leaves_the_old_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    target = os.path.join(tmp_path, "f")
    OS_FS.write_file_atomic(target, b"old")

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError) as info:
        OS_FS.write_file_atomic(target, b"new")
    monkeypatch.undo()
    assert info.value.errno == errno.EIO
    assert _read(target) == b"old"
    assert os.listdir(tmp_path) == ["f"], "the temporary file is removed"


def test_write_all_loops_on_short_writes(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    calls = {"n": 0}

    def two_bytes(fd: int, data: Any) -> int:
        calls["n"] += 1
        return real(fd, memoryview(data)[:2])

    monkeypatch.setattr(os, "write", two_bytes)
    target = os.path.join(tmp_path, "f")
    payload = bytes(range(256)) * 4
    OS_FS.write_file_atomic(target, payload)
    monkeypatch.undo()
    assert _read(target) == payload
    assert calls["n"] == len(payload) // 2


def test_write_that_makes_no_progress_raises_eio(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    with pytest.raises(OSError) as info:
        OS_FS.write_file_atomic(os.path.join(tmp_path, "f"), b"abc")
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_pwrite_loops_on_short_writes_at_the_right_offsets(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    calls: list[int] = []

    def three_bytes(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        return real(fd, memoryview(data)[:3], offset)

    target = os.path.join(tmp_path, "f")
    fd = OS_FS.open(target, os.O_RDWR | os.O_CREAT)
    try:
        OS_FS.write_all(fd, b"\xff" * 16, 0)
        monkeypatch.setattr(os, "pwrite", three_bytes)
        OS_FS.write_all(fd, b"abcdefgh", 4)
        monkeypatch.undo()
    finally:
        OS_FS.close(fd)
    assert _read(target) == b"\xff" * 4 + b"abcdefgh" + b"\xff" * 4
    assert calls == [4, 7, 10]


@pytest.mark.parametrize(("answers", "data", "written"), [([0, 0], b"abc", 0), ([2, 0], b"abcde", 2)], ids=["at-once", "part-way"])
def test_pwrite_that_makes_no_progress_raises_eio_naming_the_bytes_written(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, answers: list[int], data: bytes, written: int
) -> None:
    real = os.pwrite
    counts = iter(answers)

    def then_nothing(fd: int, view: Any, offset: int) -> int:
        n = next(counts)
        return real(fd, memoryview(view)[:n], offset) if n else 0

    target = os.path.join(tmp_path, "f")
    fd = OS_FS.open(target, os.O_RDWR | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "pwrite", then_nothing)
        with pytest.raises(OSError) as info:
            OS_FS.write_all(fd, data, 0)
        monkeypatch.undo()
    finally:
        OS_FS.close(fd)
    assert info.value.errno == errno.EIO
    assert f"no progress after {written} of {len(data)} bytes" in str(info.value)
    assert _read(target) == data[:written]


def test_enospc_during_write_removes_the_temporary_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def enospc(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "injected")

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(OSError) as info:
        OS_FS.write_file_atomic(os.path.join(tmp_path, "f"), b"abc")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_rename_durable_fsyncs_both_parents(tmp_path: Any) -> None:
    fs = RecordingFileSystem()
    a, b = os.path.join(tmp_path, "a"), os.path.join(tmp_path, "b")
    os.mkdir(a)
    os.mkdir(b)
    OS_FS.write_file_atomic(os.path.join(a, "x"), b"1")
    fs.rename_durable(os.path.join(a, "x"), os.path.join(b, "y"))
    assert _read(os.path.join(b, "y")) == b"1"
    ops = [(o.op, o.path) for o in fs.ops]
    assert ops[0][0] == "replace"
    synced = [p for op, p in ops if op == "fsync"]
    assert synced == [b, a]


def test_rename_durable_in_one_folder_fsyncs_it_once(tmp_path: Any) -> None:
    fs = RecordingFileSystem()
    OS_FS.write_file_atomic(os.path.join(tmp_path, "x"), b"1")
    fs.rename_durable(os.path.join(tmp_path, "x"), os.path.join(tmp_path, "y"))
    assert fs.count("fsync") == 1


def test_remove_tree_durable_removes_and_never_follows_symlinks(tmp_path: Any) -> None:
    outside = os.path.join(tmp_path, "outside")
    os.mkdir(outside)
    OS_FS.write_file_atomic(os.path.join(outside, "keep"), b"k")
    tree = os.path.join(tmp_path, "tree")
    os.makedirs(os.path.join(tree, "a", "b"))
    OS_FS.write_file_atomic(os.path.join(tree, "a", "b", "f"), b"x")
    os.symlink(outside, os.path.join(tree, "link"))
    fs = RecordingFileSystem()
    fs.remove_tree_durable(tree)
    assert not os.path.lexists(tree)
    assert _read(os.path.join(outside, "keep")) == b"k"
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    names = fs.names()
    assert names[0] == "replace" and names[-1] == "close" and "fsync" in names


def test_remove_tree_durable_finishes_a_removal_cut_off_by_a_crash(tmp_path: Any) -> None:
    trash = os.path.join(tmp_path, ".tree.deleting")
    os.makedirs(os.path.join(trash, "sub"))
    OS_FS.remove_tree_durable(os.path.join(tmp_path, "tree"))
    assert os.listdir(tmp_path) == []


def test_remove_tree_durable_of_nothing_is_fine(tmp_path: Any) -> None:
    fs = RecordingFileSystem()
    fs.remove_tree_durable(os.path.join(tmp_path, "missing"))
    assert fs.ops == []


def test_ensure_dir_creates_parents_and_fsyncs_each_parent(tmp_path: Any) -> None:
    fs = RecordingFileSystem()
    deep = os.path.join(tmp_path, "a", "b", "c")
    fs.ensure_dir(deep)
    assert os.path.isdir(deep)
    made = [o.path for o in fs.ops if o.op == "mkdir"]
    synced = [o.path for o in fs.ops if o.op == "fsync"]
    assert made == [os.path.join(tmp_path, "a"), os.path.join(tmp_path, "a", "b"), deep]
    assert synced == [str(tmp_path), os.path.join(tmp_path, "a"), os.path.join(tmp_path, "a", "b")]
    fs.ops.clear()
    fs.ensure_dir(deep)
    assert fs.ops == []


def test_ensure_dir_over_a_file_raises(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "f")
    OS_FS.write_file_atomic(path, b"")
    with pytest.raises(NotADirectoryError):
        OS_FS.ensure_dir(os.path.join(path, "sub"))


def test_free_bytes_matches_statvfs(tmp_path: Any) -> None:
    st = os.statvfs(tmp_path)
    assert OS_FS.free_bytes(tmp_path) == st.f_bavail * st.f_frsize


def test_sync_false_skips_fsync(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise AssertionError("fsync must not be called")

    monkeypatch.setattr(os, "fsync", boom)
    FileSystem(sync=False).write_file_atomic(os.path.join(tmp_path, "f"), b"x")
    assert _read(os.path.join(tmp_path, "f")) == b"x"


def test_open_never_follows_a_final_symlink(tmp_path: Any) -> None:
    target = os.path.join(tmp_path, "t")
    OS_FS.write_file_atomic(target, b"x")
    link = os.path.join(tmp_path, "l")
    os.symlink(target, link)
    with pytest.raises(OSError) as info:
        OS_FS.open(link, os.O_RDONLY)
    assert info.value.errno == errno.ELOOP


def test_rename_durable_without_sync_source_fsyncs_only_the_destination(tmp_path: Any) -> None:
    fs = RecordingFileSystem()
    a, b = os.path.join(tmp_path, "a"), os.path.join(tmp_path, "b")
    os.mkdir(a)
    os.mkdir(b)
    OS_FS.write_file_atomic(os.path.join(a, "x"), b"1")
    fs.rename_durable(os.path.join(a, "x"), os.path.join(b, "y"), sync_source=False)
    assert _read(os.path.join(b, "y")) == b"1"
    assert [o.path for o in fs.ops if o.op == "fsync"] == [b]
