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
    with pytest.raises(PathEscapeError, match=r"'\.\.' component"):
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
    with pytest.raises(PathEscapeError), e.checkpoint("step-1", step=1) as ck:
        os.symlink(str(elsewhere), os.path.join(ck.path, "sub"))
        ck.write_bytes("sub/escaped.bin", b"weights")
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]
    assert e.state.ops == {k: v for k, v in e.state.ops.items() if v.type != "checkpoint"}  # aborted, not left open
    e.close()


def test_rooted_fs_refuses_dotdot_through_a_link_whose_target_is_deeper(rooted: Any, tmp_path: Path) -> None:
    # lexically root/staging/link/../../x is inside the root; the kernel resolves it through the link, outside
    fs, inner, root = rooted
    deep = tmp_path / "out" / "a" / "b"
    deep.mkdir(parents=True)
    os.symlink(str(deep), os.path.join(root, "staging", "link"))
    escaping = os.path.join(root, "staging", "link", "..", "..", "pwned")
    for effect in (lambda: fs.write_file_atomic(escaping, b"x"), lambda: fs.mkdir(escaping), lambda: fs.unlink(escaping)):
        with pytest.raises(PathEscapeError, match=r"'\.\.' component"):
            effect()
    assert not (tmp_path / "out" / "pwned").exists() and inner.ops == []


def test_rooted_fs_never_acts_on_the_root_itself(rooted: Any) -> None:
    fs, _inner, root = rooted
    with pytest.raises(PathEscapeError, match="strictly under the root"):
        fs.rmdir(root)
    assert os.path.isdir(root)


# -- special files, odd names and deep trees in a root ---------------------------------------------


def _fifo(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path)


def test_a_fifo_planted_as_a_pointer_file_or_manifest_is_reported_not_waited_on(root: str) -> None:
    e = open_engine(root)
    commit_checkpoint(e, "step-1", step=1)
    e.set_pointer("live", "step-1")
    e.close()
    _fifo(os.path.join(root, "pointers", "live"))
    _fifo(os.path.join(root, "checkpoints", "step-1", "MANIFEST"))
    from shipslog.recovery import check_invariants

    e = open_engine(root)  # returns: a FIFO is never opened for reading in blocking mode
    found = {v.invariant for v in check_invariants(root, e.state, live_session=e.session)}
    e.close()
    assert found == {"pointers-verify", "checkpoints-verify"}


def test_a_fifo_or_a_link_planted_as_a_segment_is_a_corrupt_journal(root: str) -> None:
    from shipslog.journal import CorruptJournalError

    open_engine(root).close()
    _fifo(os.path.join(root, "journal", f"{999999:020d}.log"))
    with pytest.raises(CorruptJournalError, match="found a symbolic link or a special file"):
        open_engine(root)
    os.unlink(os.path.join(root, "journal", f"{999999:020d}.log"))
    os.symlink("/dev/zero", os.path.join(root, "journal", f"{999999:020d}.log"))
    with pytest.raises(CorruptJournalError, match="found a symbolic link or a special file"):
        open_engine(root)


def test_a_fifo_planted_as_a_snapshot_is_skipped(root: str) -> None:
    open_engine(root).close()
    _fifo(os.path.join(root, "snapshots", f"{1:020d}.snap"))
    e = open_engine(root)
    assert e.state.seq > 1
    e.close()


def test_a_lock_file_that_is_a_link_is_refused_and_never_read_whole(root: str) -> None:
    from shipslog.journal import read_lock_holder

    open_engine(root).close()
    os.unlink(os.path.join(root, "LOCK"))
    os.symlink("/dev/zero", os.path.join(root, "LOCK"))
    assert read_lock_holder(root) is None
    with pytest.raises(RootLayoutError, match="expected LOCK to be a regular file"):
        open_engine(root)


def test_names_that_are_not_utf8_or_too_long_or_hold_escapes_are_quarantined(root: str) -> None:
    open_engine(root).close()
    odd = [b"bad\xffname", b"a" * 250, b"x\n\x1b[31mred"]
    for name in odd:
        with open(os.path.join(os.fsencode(root), b"staging", name), "wb") as f:
            f.write(b"left over")
    e = open_engine(root)
    assert len(e.recovery.quarantined) == 3 and e.violations == []
    assert all(len(os.fsencode(os.path.basename(q))) <= 200 for q in e.recovery.quarantined)
    e.close()
    assert os.listdir(os.path.join(root, "staging")) == []
    assert sorted(os.listdir(os.path.join(root, "quarantine"))) == sorted(os.path.basename(q) for q in e.recovery.quarantined)


def test_a_thousand_and_more_unaccounted_entries_are_quarantined_in_small_records(root: str) -> None:
    from _engine_helpers import journal_records

    from shipslog.engine import RecoveryBegun, RecoveryDone

    open_engine(root).close()
    for i in range(1050):
        Path(root, "checkpoints", f"stray-{i:04d}").mkdir()
    e = open_engine(root)
    assert len(e.recovery.quarantined) == 1050 and e.violations == []
    e.close()
    begun = [r.event for r in journal_records(root) if isinstance(r.event, RecoveryBegun)][-1]
    done = [r.event for r in journal_records(root) if isinstance(r.event, RecoveryDone)][-1]
    assert begun.actions == 1050 and len(begun.found) == 1001 and begun.found[-1] == "... and 50 more"
    assert len(done.quarantined) == 1001 and done.quarantined[-1] == "... and 50 more"


def test_a_staging_tree_deeper_than_the_interpreter_allows_is_rolled_back(root: str) -> None:
    from _engine_helpers import crash

    e = open_engine(root)
    ck = e.checkpoint("step-1", step=1)
    ck.write_bytes("a.bin", b"x")
    path = ck.path
    for _ in range(1100):
        path = os.path.join(path, "d")
        os.mkdir(path)
    crash(e)
    e = open_engine(root)
    assert [r.action.kind for r in e.recovery.results if r.action.op_type == "checkpoint"] == ["checkpoint.roll-back"]
    assert os.listdir(os.path.join(root, "staging")) == []
    e.close()


def test_read_only_commands_refuse_a_root_with_a_linked_folder(root: str, elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _cli_helpers import cli

    open_engine(root).close()
    os.rename(os.path.join(root, "models"), str(elsewhere / "models"))
    os.symlink(str(elsewhere / "models"), os.path.join(root, "models"))
    for command in ("status", "verify"):
        code, out, err = cli(capsys, command, root)
        assert code == 2 and out == "" and "expected models/ to be a real folder" in err
