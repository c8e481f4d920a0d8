"""The pointer operation: a small JSON file naming a committed, verified folder, replaced atomically;
refused (with nothing journaled) for a missing, uncommitted or corrupt target."""

from __future__ import annotations

import os
from typing import Any

import pytest
from _engine_helpers import (
    SimulatedCrash,
    commit_checkpoint,
    dies_at_point,
    events_of,
    flip_bit,
    journal_records,
    open_engine,
    tree,
)

from shipslog import Engine
from shipslog.engine import (
    MANIFEST_NAME,
    ConflictError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    PointerFile,
    read_pointer_file,
)


@pytest.fixture
def engine(root: str) -> Any:
    e = open_engine(root)
    yield e
    e.close()


def pointer_file(root: str, name: str) -> str:
    return os.path.join(root, "pointers", name)


def test_set_pointer_writes_a_file_naming_the_target(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "step-100", step=100)
    info = engine.set_pointer("best", "step-100")
    assert info.name == "best" and info.target == "checkpoints/step-100"
    pf = read_pointer_file(pointer_file(root, "best"))
    assert pf == PointerFile(version=1, pointer="best", target="checkpoints/step-100", op=info.op)
    assert not os.path.islink(pointer_file(root, "best"))
    assert engine.pointer("best") == os.path.join(root, "checkpoints", "step-100")
    assert os.path.isabs(engine.pointer("best")) and os.path.isdir(engine.pointer("best"))
    assert events_of(root, info.op) == ["pointer.intended", "pointer.set"]
    intended = next(r.event for r in journal_records(root) if r.event.op == info.op)
    assert (intended.name, intended.old, intended.new) == ("best", None, "checkpoints/step-100")
    assert engine.state.pointers["best"].target == "checkpoints/step-100"
    assert list(os.listdir(os.path.join(root, "pointers"))) == ["best"], "a temporary file was left behind"


def test_moving_a_pointer_records_the_old_target(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    commit_checkpoint(engine, "b", step=2)
    engine.set_pointer("best", "checkpoints/a")
    moved = engine.set_pointer("best", "b")
    intended = next(r.event for r in journal_records(root) if r.event.op == moved.op)
    assert (intended.old, intended.new) == ("checkpoints/a", "checkpoints/b")
    assert read_pointer_file(pointer_file(root, "best")).target == "checkpoints/b"
    assert engine.pointer("best").endswith(os.path.join("checkpoints", "b"))


def test_a_pointer_may_name_a_model(engine: Engine, root: str) -> None:
    with engine.save_model("base") as m:
        m.write_bytes("w.bin", b"w")
    engine.set_pointer("serving", "models/base")
    assert engine.pointer("serving") == os.path.join(root, "models", "base")
    engine.set_pointer("serving2", "base")
    assert read_pointer_file(pointer_file(root, "serving2")).target == "models/base"


def test_an_ambiguous_bare_target_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "same", step=1)
    with engine.save_model("same") as m:
        m.write_bytes("w.bin", b"w")
    before = journal_records(root)
    with pytest.raises(ConflictError, match="both a model and a checkpoint"):
        engine.set_pointer("p", "same")
    assert journal_records(root) == before


def test_pointers_survive_reopening(root: str) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "a", step=1)
        e.set_pointer("best", "a")
    with open_engine(root) as again:
        assert again.pointer("best") == os.path.join(root, "checkpoints", "a")


def test_an_unset_pointer_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFoundError, match="'nope'"):
        engine.pointer("nope")


# -- refusals: nothing journaled, no file written ---------------------------------------------------


def assert_refused(engine: Engine, root: str, call: Any, error: Any, match: str | None = None) -> BaseException:
    before_journal = journal_records(root)
    before_files = tree(root)
    with pytest.raises(error, match=match) as info:
        call()
    assert journal_records(root) == before_journal, "a refused pointer move was journaled"
    assert tree(root) == before_files, "a refused pointer move touched files"
    return info.value


def test_a_pointer_to_a_missing_name_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    assert_refused(engine, root, lambda: engine.set_pointer("best", "nothing"), NotFoundError, "nothing")
    assert_refused(engine, root, lambda: engine.set_pointer("best", "checkpoints/nothing"), NotFoundError)
    assert_refused(engine, root, lambda: engine.set_pointer("best", "adapters/a"), NotFoundError)
    assert not os.path.exists(pointer_file(root, "best"))


def test_a_pointer_to_a_committed_checkpoint_whose_folder_is_gone_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    os.rename(os.path.join(root, "checkpoints", "a"), os.path.join(root, "elsewhere"))
    assert_refused(engine, root, lambda: engine.set_pointer("best", "a"), IntegrityError)


def test_a_pointer_to_an_uncommitted_checkpoint_is_refused(engine: Engine, root: str) -> None:
    ck = engine.checkpoint("wip", step=1)
    ck.write_bytes("w.bin", b"w")
    assert_refused(engine, root, lambda: engine.set_pointer("best", "wip"), NotFoundError)
    assert_refused(engine, root, lambda: engine.set_pointer("best", "checkpoints/wip"), NotFoundError)
    assert_refused(engine, root, lambda: engine.set_pointer("best", f"staging/{ck.op}"), NotFoundError)
    ck.abort()


def test_a_pointer_to_a_corrupt_checkpoint_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "good", step=1)
    commit_checkpoint(engine, "bad", step=2, files={"w.bin": b"0123456789" * 10})
    engine.set_pointer("best", "good")
    flip_bit(os.path.join(root, "checkpoints", "bad", "w.bin"), 42)
    err = assert_refused(engine, root, lambda: engine.set_pointer("best", "bad"), IntegrityError)
    assert "w.bin" in str(err)
    assert read_pointer_file(pointer_file(root, "best")).target == "checkpoints/good"


def test_a_pointer_to_a_checkpoint_with_an_extra_file_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    with open(os.path.join(root, "checkpoints", "a", "smuggled.bin"), "wb") as f:
        f.write(b"x")
    assert_refused(engine, root, lambda: engine.set_pointer("best", "a"), IntegrityError, "does not list")


def test_a_pointer_to_a_checkpoint_without_manifest_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    os.remove(os.path.join(root, "checkpoints", "a", MANIFEST_NAME))
    assert_refused(engine, root, lambda: engine.set_pointer("best", "a"), IntegrityError, "MANIFEST")


BAD = ["../x", "/abs", "a/b", "a\\b", "a\x00b", "", ".", "..", ".hidden", "x\n"]


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_a_pointer_name_with_traversal_is_refused(engine: Engine, root: str, name: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    err = assert_refused(engine, root, lambda: engine.set_pointer(name, "a"), InvalidNameError)
    assert isinstance(err, ValueError)
    with pytest.raises(InvalidNameError):
        engine.pointer(name)


@pytest.mark.parametrize("target", ["checkpoints/../pointers", "checkpoints/../../etc", "models/.hidden", "checkpoints/a/b", "../a", "a\x00"], ids=repr)
def test_a_target_with_traversal_is_refused(engine: Engine, root: str, target: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    assert_refused(engine, root, lambda: engine.set_pointer("best", target), (InvalidNameError, NotFoundError))


@pytest.mark.parametrize("target", [None, 5, b"a"], ids=repr)
def test_a_target_that_is_not_a_string_is_refused(engine: Engine, root: str, target: Any) -> None:
    commit_checkpoint(engine, "a", step=1)
    assert_refused(engine, root, lambda: engine.set_pointer("best", target), TypeError)


def test_writing_the_pointer_file_fails_then_the_move_is_aborted(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    commit_checkpoint(engine, "a", step=1)
    commit_checkpoint(engine, "b", step=2)
    engine.set_pointer("best", "a")

    def failing(path: Any, data: Any, **kw: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(engine.fs, "write_file_atomic", failing)
    with pytest.raises(OSError):
        engine.set_pointer("best", "b")
    monkeypatch.undo()
    last = journal_records(root)[-2:]
    assert [type(r.event).__name__ for r in last] == ["PointerIntended", "PointerAborted"]
    assert "OSError" in last[1].event.reason
    assert engine.state.pointers["best"].target == "checkpoints/a"
    assert read_pointer_file(pointer_file(root, "best")).target == "checkpoints/a"
    assert engine.state.ops_of("pointer") == []
    engine.set_pointer("best", "b")  # usable afterwards
    assert read_pointer_file(pointer_file(root, "best")).target == "checkpoints/b"


def test_a_pointer_file_that_is_not_a_pointer_does_not_parse(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "p")
    for data in (b"", b'{"version": 1, "pointer": "x"', b"[]"):
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(ValueError):
            read_pointer_file(path)


def test_a_pointer_to_a_checkpoint_being_deleted_is_refused(engine: Engine, root: str) -> None:
    for step in (1, 2, 3):
        commit_checkpoint(engine, f"c{step}", step=step)
    with dies_at_point("retention.after_intended"), pytest.raises(SimulatedCrash):
        engine.retain(1)
    assert "checkpoints/c1" in engine.state.retiring
    err = assert_refused(engine, root, lambda: engine.set_pointer("best", "c1"), ConflictError)
    assert "retention" in str(err)


def test_a_second_move_of_a_pointer_in_progress_is_refused(engine: Engine, root: str) -> None:
    commit_checkpoint(engine, "a", step=1)
    commit_checkpoint(engine, "b", step=2)
    with dies_at_point("pointer.after_intended"), pytest.raises(SimulatedCrash):
        engine.set_pointer("best", "a")
    (moving,) = engine.state.ops_of("pointer")
    err = assert_refused(engine, root, lambda: engine.set_pointer("best", "b"), ConflictError)
    assert moving.id in str(err)
    engine.set_pointer("other", "b")  # another pointer is free
