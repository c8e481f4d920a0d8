"""The async checkpointer: snapshot on the caller's thread, persist through the engine's checkpoint operation."""

from __future__ import annotations

import errno
import logging
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import numpy as np

from shipslog import Engine, gpu
from shipslog.engine import (
    ConflictError,
    FileEntry,
    IntegrityError,
    InvalidNameError,
    Registry,
    read_manifest,
    replay,
)
from shipslog.gpu import (
    AsyncCheckpointer,
    AsyncSaveError,
    CheckpointerClosedError,
    SaveTimeoutError,
    StateDictError,
    load_state_dict,
)
from shipslog.journal import (
    DelegatingFileSystem,
    FileSystem,
    InsufficientSpaceError,
    JournalReader,
    PathLike,
    ShipslogError,
)

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def engine(root: str) -> Iterator[Engine]:
    eng = Engine.open(root, fsync=False)
    try:
        yield eng
    finally:
        eng.close()


def records(root: str) -> list[tuple[int, str, Any]]:
    """(seq, kind, event) of every record of ``root``'s journal, read from disk."""
    reg = Registry()
    out = []
    for rec in JournalReader(os.path.join(root, "journal")).records():
        typed = reg.typed(rec)
        out.append((typed.seq, type(typed.event).__struct_config__.tag, typed.event))
    return out


def kinds_of_op(root: str, op: str) -> list[str]:
    return [kind for _seq, kind, ev in records(root) if ev.op == op]


def begun_names(root: str) -> list[str]:
    return [ev.name for _seq, kind, ev in records(root) if kind == "checkpoint.begun"]


def staging_listing(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "staging")))


def save_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shipslog-save-")]


def model_state(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 16, generator=gen),
        "layer.0.weight": torch.randn(32, 64, generator=gen),
        "layer.0.bias": torch.randn(32, generator=gen),
        "head.weight": torch.randn(8, 32, generator=gen).half(),
        "count": torch.tensor([3, 5, 7], dtype=torch.int64),
    }


def clone_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return type(value)((k, clone_state(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(clone_state(v) for v in value)
    return value


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def check_committed(root: str, name: str) -> tuple[str, list[FileEntry]]:
    """The folder of committed checkpoint ``name``: files match the manifest (zlib.crc32) and nothing else."""
    folder = os.path.join(root, "checkpoints", name)
    manifest = read_manifest(folder)
    assert manifest.name == name and manifest.kind == "checkpoint"
    assert sorted(os.listdir(folder)) == sorted([e.path for e in manifest.files] + ["MANIFEST"])
    for entry in manifest.files:
        with open(os.path.join(folder, entry.path), "rb") as f:
            data = f.read()
        assert len(data) == entry.size and zlib.crc32(data) == entry.crc32, entry.path
    return folder, list(manifest.files)


def _staged_file(path: PathLike, flags: int) -> str | None:
    """The checkpoint staging folder (``staging/<op>``) that opening ``path`` with ``flags`` writes a new file in
    (``save_state_dict`` creates its files with O_TRUNC; the engine's own writers use O_EXCL), else None."""
    folder = os.path.dirname(os.fspath(path))
    staged = flags & os.O_TRUNC and os.path.basename(os.path.dirname(folder)) == "staging"
    return folder if staged else None


class Gate(DelegatingFileSystem):
    """The engine's file system, with a gate at each background persist: the first file ``save_state_dict``
    creates in a staging folder blocks until released, and may fail there (after a partial file).

    A persist counts as active from that file until ``save_state_dict``'s closing fsync of the folder.
    """

    def __init__(self, inner: FileSystem, *, fail: BaseException | None = None, block: bool = True) -> None:
        super().__init__(inner)
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.fail = fail
        self.calls: list[str] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._active: set[str] = set()

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        folder = _staged_file(path, flags)
        if folder is not None and folder not in self._seen:
            self._enter(folder)
        return super().open(path, flags, mode)

    def _enter(self, folder: str) -> None:
        with self._lock:
            self._seen.add(folder)
            self._active.add(folder)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(os.path.basename(folder))
        self.started.set()
        assert self.release.wait(60), "the test never released the persist"
        if self.fail is not None:
            self._leave(folder)
            with open(os.path.join(folder, "model.safetensors"), "wb") as f:
                f.write(b"partial")  # something half-written that the abort must remove
            raise self.fail

    def _leave(self, folder: str) -> None:
        with self._lock:
            if folder in self._active:
                self._active.discard(folder)
                self.active -= 1

    def fsync_dir(self, path: PathLike) -> None:
        super().fsync_dir(path)
        self._leave(os.fspath(path))


def gate(monkeypatch: pytest.MonkeyPatch, engine: Engine, **kw: Any) -> Gate:
    """Put a :class:`Gate` around ``engine``'s file system (which the checkpointer hands to ``save_state_dict``)."""
    g = Gate(engine.fs, **kw)
    monkeypatch.setattr(engine, "fs", g)
    return g


# --------------------------------------------------------------------------- saving


def test_save_then_wait_commits_files_manifest_and_journal(root: str) -> None:
    state = model_state()
    expected = clone_state(state)
    with Engine.open(root, fsync=True) as engine:
        with AsyncCheckpointer(engine, shard_bytes=8 << 10) as ck:
            handle = ck.save("step-10", state, step=10, meta={"loss": 1.5})
            assert handle is not None and handle.name == "step-10" and handle.step == 10
            info = ck.wait()
            assert handle.done() and handle.result() == info
            assert info is not None and info.name == "step-10" and info.step == 10 and info.path == "checkpoints/step-10"
            assert info.meta == {"loss": 1.5}
        assert save_threads() == []
        assert engine.state.checkpoints["step-10"].op == handle.op
    folder, entries = check_committed(root, "step-10")
    names = sorted(e.path for e in entries)
    assert "model.safetensors.index.json" in names and len([n for n in names if n.endswith(".safetensors")]) >= 2
    assert kinds_of_op(root, handle.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]
    assert_same(load_state_dict(folder, entries=entries), expected)
    assert staging_listing(root) == []
    assert replay(root).checkpoints["step-10"].step == 10


def test_single_file_layout_and_a_custom_prefix(engine: Engine, root: str) -> None:
    state = model_state(1)
    with AsyncCheckpointer(engine, prefix="weights") as ck:
        ck.save("a", state, step=1)
        ck.wait()
    folder, entries = check_committed(root, "a")
    assert [e.path for e in entries] == ["weights.safetensors"]
    assert_same(load_state_dict(folder, entries=entries, prefix="weights"), state)


def test_the_caller_may_change_its_tensors_as_soon_as_save_returns(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    state: dict[str, Any] = {
        "model": OrderedDict(model_state(2)),
        "extra": [torch.arange(6.0), np.arange(4, dtype=np.int32)],
        "step": 5,
    }
    expected = clone_state(state)
    g = gate(monkeypatch, engine)
    with AsyncCheckpointer(engine) as ck:
        handle = ck.save("snap", state, step=5)
        assert handle is not None
        assert g.started.wait(60)
        for t in state["model"].values():
            t.zero_()
        state["extra"][0].fill_(-1.0)
        state["extra"][1][:] = 99
        state["model"]["embed.weight"] = torch.ones(1)
        g.release.set()
        ck.wait()
    folder, entries = check_committed(root, "snap")
    loaded = load_state_dict(folder, entries=entries)
    assert_same(loaded, expected)


def test_host_buffers_are_reused_from_one_save_to_the_next(engine: Engine) -> None:
    state = model_state(3)
    with AsyncCheckpointer(engine) as ck:
        ck.save("one", state, step=1)
        ck.wait()
        first = ck.snapshot.allocations
        for t in state.values():
            t.add_(1)
        ck.save("two", state, step=2)
        ck.wait()
        assert ck.snapshot.allocations == first == len(state)


def test_skip_policy_returns_none_while_a_save_is_in_flight(
    engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    g = gate(monkeypatch, engine)
    state = model_state(4)
    with AsyncCheckpointer(engine, policy="skip") as ck:
        first = ck.save("slow", state, step=1)
        assert first is not None and g.started.wait(60)
        with caplog.at_level(logging.INFO, logger="shipslog.gpu.async"):
            assert ck.save("skipped", state, step=2) is None
        assert ck.skipped == 1
        assert any("skipped checkpoint 'skipped'" in r.getMessage() and "'slow'" in r.getMessage() for r in caplog.records)
        with pytest.raises(SaveTimeoutError, match="'slow'"):
            first.result(timeout=0)
        g.release.set()
        assert first.result(timeout=60).name == "slow"
        after = ck.save("after", state, step=3)
        assert after is not None
        ck.wait()
    assert begun_names(root) == ["slow", "after"]
    assert sorted(replay(root).checkpoints) == ["after", "slow"]
    assert not os.path.exists(os.path.join(root, "checkpoints", "skipped"))


def test_wait_policy_serializes_saves_in_journal_order(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = gate(monkeypatch, engine, block=False)
    with AsyncCheckpointer(engine, policy="wait") as ck:
        for i in range(4):
            assert ck.save(f"s{i}", model_state(i), step=i) is not None
    assert g.max_active == 1
    seen = [(kind, ev.name if kind == "checkpoint.begun" else ev.op) for _seq, kind, ev in records(root) if kind.startswith("checkpoint.")]
    kinds = [k for k, _ in seen]
    assert kinds == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"] * 4
    assert [name for kind, name in seen if kind == "checkpoint.begun"] == ["s0", "s1", "s2", "s3"]


def test_wait_policy_blocks_a_second_save_until_the_first_is_committed(
    engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = gate(monkeypatch, engine)
    state = model_state(5)
    outcome: list[Any] = []
    with AsyncCheckpointer(engine, policy="wait") as ck:
        ck.save("first", state, step=1)
        assert g.started.wait(60)
        second = threading.Thread(target=lambda: outcome.append(ck.save("second", state, step=2)))
        second.start()
        second.join(0.2)
        assert second.is_alive() and "second" not in begun_names(root)
        g.release.set()
        second.join(60)
        assert not second.is_alive() and outcome and outcome[0] is not None
        ck.wait()
    begun = {ev.name: seq for seq, kind, ev in records(root) if kind == "checkpoint.begun"}
    committed = {ev.op: seq for seq, kind, ev in records(root) if kind == "checkpoint.committed"}
    first_op = engine.state.checkpoints["first"].op
    assert committed[first_op] < begun["second"]


def test_saves_from_several_threads_are_serialized(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = gate(monkeypatch, engine, block=False)
    errors: list[BaseException] = []
    with AsyncCheckpointer(engine, policy="wait") as ck:

        def saver(i: int) -> None:
            try:
                ck.save(f"t{i}", model_state(20 + i), step=i)
            except BaseException as exc:  # noqa: BLE001  (asserted empty below)
                errors.append(exc)

        threads = [threading.Thread(target=saver, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ck.wait()
    assert errors == [] and g.max_active == 1
    assert sorted(replay(root).checkpoints) == ["t0", "t1", "t2", "t3"]
    for i in range(4):
        folder, entries = check_committed(root, f"t{i}")
        assert_same(load_state_dict(folder, entries=entries), model_state(20 + i))


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), IntegrityError("/x/model.safetensors", "crc32 00000001", "crc32 00000002")],
    ids=["enospc", "integrity"],
)
def test_a_failed_persist_is_aborted_and_raised_at_the_next_save(
    engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    g = gate(monkeypatch, engine, fail=failure, block=False)
    state = model_state(6)
    with AsyncCheckpointer(engine) as ck:
        handle = ck.save("bad", state, step=1)
        assert handle is not None
        with pytest.raises(AsyncSaveError):
            handle.result(timeout=60)
        assert staging_listing(root) == []
        assert kinds_of_op(root, handle.op) == ["checkpoint.begun", "checkpoint.aborted"]
        with pytest.raises(AsyncSaveError) as caught:
            ck.save("next", state, step=2)
        err = caught.value
        assert err.error is failure and err.__cause__ is failure and err.aborted
        assert err.name == "bad" and err.step == 1 and err.op == handle.op
        assert "'bad'" in str(err) and "save again" in str(err)
        assert "next" not in begun_names(root) and not ck.in_flight
        g.fail = None
        assert ck.save("next", state, step=2) is not None
        info = ck.wait()
        assert info is not None and info.name == "next"
    assert not os.path.exists(os.path.join(root, "checkpoints", "bad"))
    folder, entries = check_committed(root, "next")
    assert_same(load_state_dict(folder, entries=entries), state)
    assert "bad" not in replay(root).checkpoints and staging_listing(root) == []


def test_a_failure_inside_commit_is_aborted_by_the_engine_and_raised(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    class GrowsAfterTheSave(DelegatingFileSystem):
        """A file ``save_state_dict`` wrote grows by a byte after it was checksummed: its recorded size is wrong."""

        def fsync_dir(self, path: PathLike) -> None:
            shard = os.path.join(os.fspath(path), "model.safetensors")
            if os.path.basename(os.path.dirname(os.fspath(path))) == "staging" and os.path.exists(shard):
                with open(shard, "ab") as f:
                    f.write(b"x")
            super().fsync_dir(path)

    monkeypatch.setattr(engine, "fs", GrowsAfterTheSave(engine.fs))
    ck = AsyncCheckpointer(engine)
    handle = ck.save("sized", model_state(7), step=1)
    assert handle is not None
    with pytest.raises(AsyncSaveError) as caught:
        ck.wait()
    assert isinstance(caught.value.error, IntegrityError) and caught.value.aborted
    assert kinds_of_op(root, handle.op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert staging_listing(root) == []
    assert ck.wait() is None  # raised once; nothing committed
    ck.close()


def test_the_failure_of_the_last_save_is_raised_by_close(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gate(monkeypatch, engine, fail=OSError(errno.EIO, "Input/output error"), block=False)
    ck = AsyncCheckpointer(engine)
    handle = ck.save("last", model_state(8), step=1)
    assert handle is not None
    with pytest.raises(AsyncSaveError) as caught:
        ck.close()
    assert isinstance(caught.value.error, OSError) and caught.value.error.errno == errno.EIO
    assert save_threads() == []
    ck.close()  # idempotent, raised once
    with pytest.raises(CheckpointerClosedError):
        ck.save("later", model_state(8), step=2)
    assert kinds_of_op(root, handle.op) == ["checkpoint.begun", "checkpoint.aborted"]


def test_a_failure_is_raised_by_wait_once(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    g = gate(monkeypatch, engine, fail=OSError(errno.ENOSPC, "No space left on device"), block=False)
    with AsyncCheckpointer(engine) as ck:
        ck.save("x", model_state(9), step=1)
        with pytest.raises(AsyncSaveError):
            ck.wait()
        assert ck.wait() is None
        g.fail = None
        ck.save("y", model_state(9), step=2)
        info = ck.wait()
        assert info is not None and info.name == "y"
        assert ck.wait() == info


def test_skip_policy_still_raises_a_failure_that_already_happened(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    gate(monkeypatch, engine, fail=OSError(errno.ENOSPC, "No space left on device"), block=False)
    with AsyncCheckpointer(engine, policy="skip") as ck:
        handle = ck.save("x", model_state(10), step=1)
        assert handle is not None
        with pytest.raises(AsyncSaveError):
            handle.result(timeout=60)
        with pytest.raises(AsyncSaveError):
            ck.save("y", model_state(10), step=2)
        assert ck.skipped == 0


# --------------------------------------------------------------------------- refused up front


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".."])
def test_an_invalid_name_is_refused_by_save_itself(engine: Engine, root: str, name: str) -> None:
    with AsyncCheckpointer(engine) as ck:
        with pytest.raises(InvalidNameError):
            ck.save(name, model_state(11), step=1)
        assert not ck.in_flight and save_threads() == []
    assert [kind for _s, kind, _e in records(root)] == ["session.opened"]
    assert staging_listing(root) == []


def test_a_duplicate_name_is_refused_by_save_itself(engine: Engine, root: str) -> None:
    with AsyncCheckpointer(engine) as ck:
        ck.save("dup", model_state(12), step=1)
        ck.wait()
        before = records(root)
        with pytest.raises(ConflictError, match="dup"):
            ck.save("dup", model_state(12), step=2)
        assert not ck.in_flight and save_threads() == []
        assert records(root) == before
    assert staging_listing(root) == []


def test_preflight_refuses_a_save_without_space_before_anything(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.fs, "free_bytes", lambda path: 4096)
    with AsyncCheckpointer(engine) as ck:
        with pytest.raises(InsufficientSpaceError) as caught:
            ck.save("big", model_state(13), step=1)
        assert caught.value.free == 4096 and caught.value.needed is not None
        assert caught.value.needed >= sum(t.numel() * t.element_size() for t in model_state(13).values())
        assert not ck.in_flight and save_threads() == []
    assert [kind for _s, kind, _e in records(root)] == ["session.opened"]
    assert staging_listing(root) == []


def test_a_state_that_cannot_be_saved_is_refused_before_the_engine_hears_of_it(engine: Engine, root: str) -> None:
    with AsyncCheckpointer(engine) as ck:
        with pytest.raises(StateDictError):
            ck.save("odd", {"w": torch.ones(2), "obj": object()}, step=1)
        with pytest.raises(StateDictError):
            ck.save("odd", {"a.b": torch.ones(1), "a": {"b": torch.ones(1)}}, step=1)
        with pytest.raises(ValueError, match="step"):
            ck.save("odd", {"w": torch.ones(2)}, step=-1)
    assert [kind for _s, kind, _e in records(root)] == ["session.opened"]


def test_a_failing_snapshot_aborts_the_begun_checkpoint(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with AsyncCheckpointer(engine) as ck:

        def broken_take(state: Any, *, wait: bool = True) -> Any:
            raise MemoryError("no host memory for the snapshot")

        monkeypatch.setattr(ck.snapshot, "take", broken_take)
        with pytest.raises(MemoryError):
            ck.save("oom", model_state(14), step=1)
        assert not ck.in_flight
    (op,) = [ev.op for _s, kind, ev in records(root) if kind == "checkpoint.begun"]
    assert kinds_of_op(root, op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert staging_listing(root) == []


def test_a_worker_that_cannot_start_aborts_the_begun_checkpoint(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith("shipslog-save-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with AsyncCheckpointer(engine) as ck:
        with pytest.raises(RuntimeError, match="can't start"):
            ck.save("nothread", model_state(17), step=1)
        assert not ck.in_flight
    (op,) = [ev.op for _s, kind, ev in records(root) if kind == "checkpoint.begun"]
    assert kinds_of_op(root, op) == ["checkpoint.begun", "checkpoint.aborted"]
    assert staging_listing(root) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        AsyncCheckpointer(None, policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shard_bytes"):
        AsyncCheckpointer(None, shard_bytes=0)  # type: ignore[arg-type]
    with pytest.raises(StateDictError):
        AsyncCheckpointer(None, prefix="a/b")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- closing


def test_close_waits_for_the_save_in_flight(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = gate(monkeypatch, engine)
    ck = AsyncCheckpointer(engine)
    handle = ck.save("closing", model_state(15), step=1)
    assert handle is not None and g.started.wait(60)

    def release_after_persist_started() -> None:
        g.release.set()

    helper = threading.Thread(target=release_after_persist_started)
    helper.start()
    ck.close()
    helper.join()
    assert handle.done()
    assert "closing" in engine.state.checkpoints
    assert kinds_of_op(root, handle.op) == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]
    check_committed(root, "closing")
    assert save_threads() == [] and ck.snapshot.buffer_bytes == 0


def test_errors_share_the_root_and_their_builtin() -> None:
    for error, builtin in (
        (gpu.AsyncSaveError, RuntimeError),
        (gpu.CheckpointerClosedError, RuntimeError),
        (gpu.SaveTimeoutError, TimeoutError),
    ):
        assert issubclass(error, ShipslogError) and issubclass(error, builtin)
    for name in ("EXPECTED_BYTES_MARGIN", "AsyncCheckpointer", "AsyncSaveError", "CheckpointerClosedError", "SaveHandle", "SaveTimeoutError"):
        assert hasattr(gpu, name) and name in gpu.__all__


# --------------------------------------------------------------------------- resuming training exactly


def _train_step(model: Any, opt: Any, x: Any, y: Any) -> None:
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()


def test_model_optimizer_rng_and_scheduler_state_resume_training_bit_exactly(engine: Engine, root: str) -> None:
    torch.manual_seed(1234)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        _train_step(model, opt, torch.randn(8, 5), torch.randn(8, 3))
    scheduler = {"last_epoch": 3, "base_lrs": [0.01], "_step_count": 4, "verbose": False, "_last_lr": [0.01]}
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "scheduler": scheduler,
        "step": 3,
    }
    with AsyncCheckpointer(engine) as ck:
        ck.save("step-3", state, step=3)
        ck.wait()
    # The original goes on with one more step.
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    _train_step(model, opt, x, y)

    folder, entries = check_committed(root, "step-3")
    loaded = load_state_dict(folder, entries=entries)
    assert loaded["scheduler"] == scheduler and loaded["step"] == 3
    assert isinstance(loaded["model"], OrderedDict)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert sorted(loaded["optimizer"]["state"]) == [0, 1]
    torch.manual_seed(999)  # the resumed process starts from another RNG state ...
    fresh = torch.nn.Linear(5, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    fresh.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    torch.set_rng_state(loaded["rng"])  # ... and restores the saved one
    x2, y2 = torch.randn(8, 5), torch.randn(8, 3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    _train_step(fresh, fresh_opt, x2, y2)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name
    after, resumed = opt.state_dict(), fresh_opt.state_dict()
    assert after["param_groups"] == resumed["param_groups"]
    for key in after["state"]:
        for field, value in after["state"][key].items():
            assert torch.equal(value, resumed["state"][key][field]), (key, field)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
def test_cuda_state_is_snapshotted_before_save_returns(engine: Engine, root: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    gen = torch.Generator(device="cuda").manual_seed(16)
    state = {"w": torch.randn(512, 512, device="cuda", generator=gen), "opt": {"m": torch.randn(1000, device="cuda", generator=gen).half()}}
    expected = {"w": state["w"].cpu(), "opt": {"m": state["opt"]["m"].cpu()}}
    with AsyncCheckpointer(engine) as ck:
        ck.save("gpu", state, step=1)
        state["w"].mul_(0.0)
        state["opt"]["m"].fill_(7)
        ck.wait()
    folder, entries = check_committed(root, "gpu")
    assert_same(load_state_dict(folder, entries=entries), expected)
