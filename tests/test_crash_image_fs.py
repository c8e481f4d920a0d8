"""The crash-image file system: what a power cut leaves under strict POSIX rules, one test per shape."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from shipslog.journal import CrashImage, CrashImageFileSystem


@pytest.fixture
def fs(tmp_path: Any) -> CrashImageFileSystem:
    root = tmp_path / "root"
    root.mkdir()
    return CrashImageFileSystem(root, sync=False)


def _write(fs: CrashImageFileSystem, rel: str, data: bytes, *, sync: bool = True) -> None:
    fd = fs.open(os.path.join(fs.root, rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        fs.write_all(fd, data)
        if sync:
            fs.fsync(fd)
    finally:
        fs.close(fd)


def test_what_was_there_before_counts_as_durable(tmp_path: Any) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a").write_bytes(b"old")
    assert CrashImageFileSystem(root).image().tree == {"sub": None, "sub/a": b"old"}


def test_a_file_fsynced_whose_folder_was_never_fsynced_is_gone(fs: CrashImageFileSystem) -> None:
    _write(fs, "a", b"data")
    assert fs.image().tree == {}


def test_a_folder_fsync_without_the_file_fsync_leaves_an_empty_file(fs: CrashImageFileSystem) -> None:
    _write(fs, "a", b"data", sync=False)
    fs.fsync_dir(fs.root)
    assert fs.image().tree == {"a": b""}


def test_writes_after_the_last_fsync_are_dropped(fs: CrashImageFileSystem) -> None:
    _write(fs, "a", b"first")
    fs.fsync_dir(fs.root)
    fd = fs.open(os.path.join(fs.root, "a"), os.O_WRONLY | os.O_APPEND)
    fs.write_all(fd, b"+more")
    fs.close(fd)
    assert fs.image().tree == {"a": b"first"}
    with open(os.path.join(fs.root, "a"), "rb") as f:
        assert f.read() == b"first+more"  # the real file has every effect


def test_an_unsynced_rename_leaves_the_old_name(fs: CrashImageFileSystem) -> None:
    _write(fs, "a", b"x")
    fs.fsync_dir(fs.root)
    fs.replace(os.path.join(fs.root, "a"), os.path.join(fs.root, "b"))
    assert fs.image().tree == {"a": b"x"}


def test_a_rename_across_folders_synced_on_the_target_side_only_leaves_both_names(fs: CrashImageFileSystem) -> None:
    fs.ensure_dir(os.path.join(fs.root, "src", "one"))
    fs.ensure_dir(os.path.join(fs.root, "dst"))
    _write(fs, "src/one/f", b"x")
    fs.fsync_dir(os.path.join(fs.root, "src", "one"))
    fs.rename_durable(os.path.join(fs.root, "src", "one"), os.path.join(fs.root, "dst", "one"), sync_source=False)
    tree = fs.image().tree
    assert tree["src/one/f"] == b"x" and tree["dst/one/f"] == b"x"


def test_a_durable_rename_leaves_the_new_name_only(fs: CrashImageFileSystem) -> None:
    fs.ensure_dir(os.path.join(fs.root, "src", "one"))
    fs.ensure_dir(os.path.join(fs.root, "dst"))
    fs.rename_durable(os.path.join(fs.root, "src", "one"), os.path.join(fs.root, "dst", "one"))
    assert fs.image().tree == {"src": None, "dst": None, "dst/one": None}


def test_a_folder_never_made_durable_takes_its_synced_contents_with_it(fs: CrashImageFileSystem) -> None:
    fs.mkdir(os.path.join(fs.root, "new"))
    _write(fs, "new/f", b"x")
    fs.fsync_dir(os.path.join(fs.root, "new"))
    assert fs.image().tree == {}


def test_a_durable_removal_is_gone_and_an_unsynced_one_is_not(fs: CrashImageFileSystem) -> None:
    fs.ensure_dir(os.path.join(fs.root, "d"))
    _write(fs, "d/f", b"x")
    fs.fsync_dir(os.path.join(fs.root, "d"))
    fs.unlink(os.path.join(fs.root, "d", "f"))
    assert fs.image().tree == {"d": None, "d/f": b"x"}
    fs.remove_tree_durable(os.path.join(fs.root, "d"))
    assert fs.image().tree == {}


def test_a_write_file_atomic_is_old_or_new_never_torn(fs: CrashImageFileSystem) -> None:
    target = os.path.join(fs.root, "p")
    fs.write_file_atomic(target, b"old")
    images: list[CrashImage] = []
    rng = random.Random(3)
    fs.on_sync = lambda f, before: images.append(f.partial_image(rng) if before else f.image())
    fs.write_file_atomic(target, b"new" * 700)
    assert images, "no durability point was seen"
    assert {img.tree.get("p") for img in images} <= {b"old", b"new" * 700}


def test_a_partial_image_applies_a_subset_of_pending_sectors_and_cuts_appends_after_the_durable_length(fs: CrashImageFileSystem) -> None:
    _write(fs, "a", b"A" * 1024)
    fs.fsync_dir(fs.root)
    fd = fs.open(os.path.join(fs.root, "a"), os.O_WRONLY)
    fs.write_all(fd, b"B" * 8192, offset=0)
    fs.close(fd)
    rng = random.Random(7)
    seen = set()
    mixed = 0
    for _ in range(200):
        data = fs.partial_image(rng).tree["a"]
        assert data is not None and 1024 <= len(data) <= 8192
        seen.add(len(data))
        first = data[:1024]
        mixed += b"A" in first and b"B" in first  # some of the pending sectors applied, some not
    assert len(seen) > 20  # many lengths between the durable one and the current one
    assert mixed > 0


def test_a_partial_image_tears_some_sectors(fs: CrashImageFileSystem) -> None:
    _write(fs, "a", b"", sync=True)
    fs.fsync_dir(fs.root)
    fd = fs.open(os.path.join(fs.root, "a"), os.O_WRONLY)
    fs.write_all(fd, b"\x01" * 4096, offset=0)
    fs.close(fd)
    rng = random.Random(11)
    torn = 0
    for _ in range(300):
        data = fs.partial_image(rng).tree["a"]
        assert data is not None
        torn += any(b not in (0, 1) for b in data)  # garbage written over a sector
    assert torn > 0


def test_a_partial_image_applies_pending_entries_independently(fs: CrashImageFileSystem) -> None:
    for name in ("a", "b"):
        _write(fs, name, name.encode())
    rng = random.Random(5)
    shapes = {tuple(sorted(fs.partial_image(rng).tree)) for _ in range(60)}
    assert shapes == {(), ("a",), ("b",), ("a", "b")}


def test_the_sync_hook_sees_each_durability_point_before_and_after(fs: CrashImageFileSystem) -> None:
    calls: list[tuple[int, bool]] = []
    fs.on_sync = lambda f, before: calls.append((f.position, before))
    _write(fs, "a", b"x")
    fs.fsync_dir(fs.root)
    assert [before for _pos, before in calls] == [True, False, True, False]
    assert fs.boundaries == [pos for pos, before in calls if not before]


def test_paths_outside_the_root_are_not_modelled(fs: CrashImageFileSystem, tmp_path: Any) -> None:
    outside = os.path.join(tmp_path, "elsewhere")
    fd = fs.open(outside, os.O_WRONLY | os.O_CREAT)
    fs.write_all(fd, b"x")
    fs.fsync(fd)
    fs.close(fd)
    assert fs.image().tree == {}
    with open(outside, "rb") as f:
        assert f.read() == b"x"


def test_an_image_materializes_as_folders_and_bytes(fs: CrashImageFileSystem, tmp_path: Any) -> None:
    fs.ensure_dir(os.path.join(fs.root, "d", "e"))
    _write(fs, "d/e/f", b"bytes")
    fs.fsync_dir(os.path.join(fs.root, "d", "e"))
    dest = fs.image().materialize(os.path.join(tmp_path, "img"))
    with open(os.path.join(dest, "d", "e", "f"), "rb") as f:
        assert f.read() == b"bytes"


def test_a_file_written_by_another_writer_is_pending_until_synced_through_the_file_system(fs: CrashImageFileSystem) -> None:
    with open(os.path.join(fs.root, "other"), "wb") as f:
        f.write(b"written elsewhere")
    fs.fsync_dir(fs.root)
    assert fs.image().tree == {}  # its entry was not seen, so it is not durable either
    fd = fs.open(os.path.join(fs.root, "other"), os.O_RDONLY)
    fs.fsync(fd)
    fs.close(fd)
    fs.fsync_dir(fs.root)
    assert fs.image().tree == {"other": b"written elsewhere"}


def test_a_pending_rename_is_applied_whole_or_not_at_all_in_a_partial_image(fs: CrashImageFileSystem) -> None:
    fs.ensure_dir(os.path.join(fs.root, "a"))
    fs.ensure_dir(os.path.join(fs.root, "b"))
    _write(fs, "a/x", b"x")
    _write(fs, "a/y", b"y")
    fs.fsync_dir(os.path.join(fs.root, "a"))
    fs.replace(os.path.join(fs.root, "a", "x"), os.path.join(fs.root, "b", "x"))  # across folders
    fs.replace(os.path.join(fs.root, "a", "y"), os.path.join(fs.root, "a", "z"))  # inside one
    rng = random.Random(2)
    shapes = set()
    for _ in range(80):
        tree = fs.partial_image(rng).tree
        shapes.add((("a/x" in tree) + ("b/x" in tree), ("a/y" in tree) + ("a/z" in tree)))
    assert shapes == {(1, 1)}  # exactly one name each: never both, never neither


def test_a_rename_whose_source_folder_was_synced_first_can_leave_neither_name(fs: CrashImageFileSystem) -> None:
    fs.ensure_dir(os.path.join(fs.root, "a"))
    fs.ensure_dir(os.path.join(fs.root, "b"))
    _write(fs, "a/x", b"x")
    fs.fsync_dir(os.path.join(fs.root, "a"))
    fs.replace(os.path.join(fs.root, "a", "x"), os.path.join(fs.root, "b", "x"))
    fs.fsync_dir(os.path.join(fs.root, "a"))  # the wrong order: the source side first
    assert "a/x" not in fs.image().tree and "b/x" not in fs.image().tree
