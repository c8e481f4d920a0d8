"""A root whose folders are links, a folder that is not a root yet holds files, and the file system that keeps
every effect inside the root (the defence behind the record checks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _engine_helpers import commit_checkpoint, open_engine, tree

from shipslog.engine import ForeignFolderError, RootLayoutError
from shipslog.journal import OS_FS, PathEscapeError, RecordingFileSystem, RootedFileSystem


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder outside every root, with a file in it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep me\n")
    return folder


# -- the root's own folders ------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["checkpoints", "journal", "staging", "pointers", "quarantine"])
def test_a_root_folder_that_is_a_symlink_is_refused_at_open_before_any_effect(root: str, elsewhere: Path, folder: str) -> None:
    open_engine(root).close()
    link = os.path.join(root, folder)
    os.rename(link, str(elsewhere / folder))
    os.symlink(str(elsewhere / folder), link)
    before = tree(root, skip=()), tree(str(elsewhere), skip=())
    with pytest.raises(RootLayoutError, match=f"expected {folder}/ to be a real folder, found a symbolic link") as caught:
        open_engine(root)
    assert "link or mount the whole root" in str(caught.value)
    assert (tree(root, skip=()), tree(str(elsewhere), skip=())) == before


def test_a_root_folder_that_is_a_file_is_refused(root: str) -> None:
    open_engine(root).close()
    os.rmdir(os.path.join(root, "models"))
    Path(root, "models").write_text("not a folder")
    with pytest.raises(RootLayoutError, match="found a file"):
        open_engine(root)


def test_a_symlinked_checkpoints_folder_never_gets_a_commit(root: str, elsewhere: Path) -> None:
    # before this check, the commit renamed into the link's target and then every reopen crashed
    os.makedirs(root)
    os.symlink(str(elsewhere), os.path.join(root, "checkpoints"))
    with pytest.raises(RootLayoutError):
        open_engine(root)
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]


def test_a_folder_that_is_not_a_root_but_holds_checkpoints_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "hf-output"
    (out / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-500" / "model.safetensors").write_bytes(b"weights")
    (out / "train.log").write_text("log\n")
    before = tree(str(out), skip=())
    with pytest.raises(ForeignFolderError, match="adopt_checkpoint") as caught:
        open_engine(str(out))
    assert caught.value.entries == ("checkpoints/checkpoint-500",)
    assert tree(str(out), skip=()) == before


def test_a_new_root_may_hold_the_users_own_files_beside_the_engines_folders(root: str) -> None:
    os.makedirs(root)
    Path(root, "train.jsonl").write_text('{"text": "a"}\n')
    e = open_engine(root)
    commit_checkpoint(e, "step-1", step=1)
    e.close()
    assert Path(root, "train.jsonl").read_text() == '{"text": "a"}\n'
    assert not os.listdir(os.path.join(root, "quarantine"))


def test_an_existing_root_with_entries_is_opened_and_recovered_as_before(root: str) -> None:
    open_engine(root).close()
    Path(root, "checkpoints", "stray").mkdir()
    e = open_engine(root)
    assert [r.action.target for r in e.recovery.results] == ["checkpoints/stray"]
    e.close()


# -- every effect stays inside the root ------------------------------------------------------------


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[RootedFileSystem, RecordingFileSystem, str]:
    root = str(tmp_path / "root")
    os.makedirs(os.path.join(root, "staging"))
    inner = RecordingFileSystem(sync=False)
    return RootedFileSystem(inner, root, trusted=["staging"]), inner, root


def test_rooted_fs_refuses_a_path_that_climbs_out_with_dotdot(rooted: Any, elsewhere: Path) -> None:
    fs, inner, root = rooted
    target = os.path.join(root, "staging", "..", "..", "elsewhere", "new.txt")
    with pytest.raises(PathEscapeError, match="not under the root"):
        fs.write_file_atomic(target, b"x")
    assert not os.path.exists(elsewhere / "new.txt") and inner.ops == []


def test_rooted_fs_refuses_a_path_through_a_symlink_inside_the_root(rooted: Any, elsewhere: Path) -> None:
    fs, inner, root = rooted
    os.symlink(str(elsewhere), os.path.join(root, "staging", "op"))
    for effect in (
        lambda: fs.write_file_atomic(os.path.join(root, "staging", "op", "new.txt"), b"x"),
        lambda: fs.unlink(os.path.join(root, "staging", "op", "keep.txt")),
        lambda: fs.mkdir(os.path.join(root, "staging", "op", "sub")),
        lambda: fs.replace(os.path.join(root, "staging", "op", "keep.txt"), os.path.join(root, "staging", "moved")),
        lambda: fs.remove_tree_durable(os.path.join(root, "staging", "op", "keep.txt")),
    ):
        with pytest.raises(PathEscapeError, match="is a symbolic link"):
            effect()
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"] and inner.ops == []


def test_rooted_fs_removes_a_link_inside_the_root_without_following_it(rooted: Any, elsewhere: Path) -> None:
    fs, _inner, root = rooted
    link = os.path.join(root, "staging", "op")
    os.symlink(str(elsewhere), link)
    fs.remove_tree_durable(link)
    assert not os.path.lexists(link) and sorted(os.listdir(elsewhere)) == ["keep.txt"]


def test_rooted_fs_refuses_absolute_paths_elsewhere(rooted: Any, elsewhere: Path) -> None:
    fs, _inner, _root = rooted
    with pytest.raises(PathEscapeError):
        fs.open(str(elsewhere / "keep.txt"), os.O_WRONLY | os.O_TRUNC)
    with pytest.raises(PathEscapeError):
        fs.rmdir(str(elsewhere))
    assert (elsewhere / "keep.txt").read_text() == "keep me\n"


def test_rooted_fs_creates_the_root_and_fsyncs_its_parents(tmp_path: Path) -> None:
    root = str(tmp_path / "a" / "b" / "root")
    fs = RootedFileSystem(OS_FS, root)
    fs.ensure_dir(os.path.join(root, "journal"))
    assert os.path.isdir(os.path.join(root, "journal"))
    with pytest.raises(PathEscapeError):
        fs.mkdir(str(tmp_path / "a" / "sibling"))


def test_a_checkpoint_file_written_through_a_link_inside_staging_is_refused(root: str, elsewhere: Path) -> None:
    e = open_engine(root)
    with pytest.raises(PathEscapeError):
        with e.checkpoint("step-1", step=1) as ck:
            os.symlink(str(elsewhere), os.path.join(ck.path, "sub"))
            ck.write_bytes("sub/escaped.bin", b"weights")
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]
    assert e.state.ops == {k: v for k, v in e.state.ops.items() if v.type != "checkpoint"}  # aborted, not left open
    e.close()
