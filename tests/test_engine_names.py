"""Every user-given name (checkpoint, model, pointer, file inside a checkpoint, adopted folder) is a
plain single path component; a bad one raises InvalidNameError before anything is touched."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from _engine_helpers import commit_checkpoint, journal_records, open_engine, tree, write_files

from shipslog import Engine
from shipslog.engine import MAX_NAME_LENGTH, FileEntry, InvalidNameError, check_name, inside_root

BAD_NAMES: list[Any] = ["../x", "/abs", "a/b", "a\\b", "a\x00b", "", ".", "..", ".hidden", "x\n", "tab\there", "a" * (MAX_NAME_LENGTH + 1), 5, None, b"x", ["x"]]
BAD_FILES: list[Any] = ["../x", "/abs", "a//b", "a/../b", "./a", "sub/.w.tmp-1a2b", "a\x00b", "", ".", "..", ".x.deleting", "MANIFEST", "a\\b",
                        "x\x1b[2J", "del\x7f", "c1\x85x", "c1\x9f", "\ud800", "a" * 256, 5, None, b"x"]
GOOD_NAMES = ["step-100", "checkpoint-500", "a", "A.b_c-d+e=f@g", "v1.2.3", "x" * MAX_NAME_LENGTH]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_names_are_allowed(name: str) -> None:
    assert check_name("checkpoint", name) == name


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_check_name_refuses(name: Any) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name("checkpoint", name)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.what == "checkpoint" and err.name == name and err.reason
    assert "invalid checkpoint name" in str(err)


def test_inside_root_refuses_a_path_that_resolves_outside(tmp_path: Any) -> None:
    root = os.path.join(tmp_path, "root")
    os.makedirs(os.path.join(root, "checkpoints"))
    os.symlink(tmp_path, os.path.join(root, "checkpoints", "escape"))
    assert inside_root(root, os.path.join(root, "checkpoints")) == os.path.realpath(os.path.join(root, "checkpoints"))
    with pytest.raises(InvalidNameError, match="outside the root"):
        inside_root(root, os.path.join(root, "checkpoints", "escape"))
    with pytest.raises(InvalidNameError):
        inside_root(root, os.path.join(root, "..", "elsewhere"))


# -- through the engine: nothing touched ---------------------------------------------------------------


@pytest.fixture
def engine(root: str, tmp_path: Any) -> Any:
    e = open_engine(root)
    commit_checkpoint(e, "existing", step=1)
    write_files(os.path.join(tmp_path, "src", "checkpoint-9"), {"w.bin": b"w"})
    yield e
    e.close()


def untouched(engine: Engine, root: str, tmp_path: Any, call: Callable[[], object]) -> InvalidNameError:
    before_journal = journal_records(root)
    before_root = tree(root)
    before_around = tree(tmp_path, skip=("root",))
    with pytest.raises(InvalidNameError) as info:
        call()
    assert journal_records(root) == before_journal, "a refused name was journaled"
    assert tree(root) == before_root, "a refused name touched the root"
    assert tree(tmp_path, skip=("root",)) == before_around, "a refused name touched something outside the root"
    return info.value


CALLS: dict[str, Callable[[Engine, Any, Any], object]] = {
    "checkpoint": lambda e, n, src: e.checkpoint(n, step=2),
    "save_model": lambda e, n, src: e.save_model(n),
    "set_pointer": lambda e, n, src: e.set_pointer(n, "existing"),
    "pointer": lambda e, n, src: e.pointer(n),
    "pointer-target": lambda e, n, src: e.set_pointer("best", f"checkpoints/{n}") if isinstance(n, str) else e.set_pointer("best", n),
    "verify": lambda e, n, src: e.verify(f"models/{n}") if isinstance(n, str) else None,
    "adopt_checkpoint-with-step": lambda e, n, src: e.adopt_checkpoint(src, name=n, step=9),
    "adopt_checkpoint": lambda e, n, src: e.adopt_checkpoint(src, name=n),
    "adopt_model": lambda e, n, src: e.adopt_model(src, name=n),
}



def _cases() -> list[Any]:
    out = []
    for call in CALLS:
        for name in BAD_NAMES:
            if call == "pointer-target" and not isinstance(name, str):
                continue  # a target that is not a string is a TypeError (test_engine_pointer)
            if call == "pointer-target" and name == "a/b":
                continue  # 'checkpoints/a/b' is covered: a bad name too, but NotFoundError names the folder first
            if call == "verify" and not isinstance(name, str):
                continue
            if call in ("pointer-target", "verify") and name == "":
                continue  # 'checkpoints/' : a bare folder, refused as not found (tested in test_engine_pointer)
            if call.startswith("adopt") and name is None:
                continue  # None means "the folder's name"
            out.append(pytest.param(call, name, id=f"{call}-{name!r}"))
    return out


@pytest.mark.parametrize(("call", "name"), _cases())
def test_a_bad_name_touches_nothing(engine: Engine, root: str, tmp_path: Any, call: str, name: Any) -> None:
    src = os.path.join(tmp_path, "src", "checkpoint-9")
    err = untouched(engine, root, tmp_path, lambda: CALLS[call](engine, name, src))
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("relpath", BAD_FILES, ids=repr)
@pytest.mark.parametrize("method", ["write_bytes", "write_json", "copy_file", "file_path", "add_file"])
def test_a_bad_file_name_inside_a_checkpoint_touches_nothing(engine: Engine, root: str, tmp_path: Any, method: str, relpath: Any) -> None:
    ck = engine.checkpoint("open-one", step=2)
    src = os.path.join(tmp_path, "src", "checkpoint-9", "w.bin")
    calls: dict[str, Callable[[], object]] = {
        "write_bytes": lambda: ck.write_bytes(relpath, b"x"),
        "write_json": lambda: ck.write_json(relpath, {"a": 1}),
        "copy_file": lambda: ck.copy_file(src, relpath),
        "file_path": lambda: ck.file_path(relpath),
        "add_file": lambda: ck.add_file(FileEntry(relpath, 1, 0)),
    }
    untouched(engine, root, tmp_path, calls[method])
    ck.abort()


def test_a_subfolder_path_inside_a_checkpoint_is_fine(engine: Engine, root: str) -> None:
    with engine.checkpoint("nested", step=3) as ck:
        ck.write_bytes("a/b/c.bin", b"c")
    assert os.path.isfile(os.path.join(root, "checkpoints", "nested", "a", "b", "c.bin"))


def test_adopting_a_hidden_folder_is_refused(engine: Engine, root: str, tmp_path: Any) -> None:
    hidden = os.path.join(tmp_path, ".secret")
    write_files(hidden, {"w.bin": b"w"})
    untouched(engine, root, tmp_path, lambda: engine.adopt_checkpoint(hidden))


def test_file_names_other_libraries_write_are_accepted_and_verify(engine: Engine, root: str) -> None:
    # torch.distributed.checkpoint writes .metadata and __0_0.distcp; HF writes model-00001-of-00002.safetensors
    names = [".metadata", "__0_0.distcp", "_opt.safetensors", "model-00001-of-00002.safetensors", "sub dir/é.json"]
    with engine.checkpoint("dcp", step=5) as ck:
        for name in names:
            ck.write_bytes(name, name.encode())
    manifest = engine.verify("checkpoints/dcp")
    assert sorted(f.path for f in manifest.files) == sorted(names)
