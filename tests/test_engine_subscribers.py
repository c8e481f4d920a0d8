"""Subscribers receive committed records: many per kind, in seq order, after the record is durable;
a raising callback is logged and skipped; cancel and close stop delivery."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest
from _engine_helpers import commit_checkpoint, journal_records, kind_of, kinds, open_engine

from shipslog import Engine
from shipslog.engine import EventRecord
from shipslog.journal import JournalReader


@pytest.fixture
def engine(root: str) -> Any:
    e = open_engine(root)
    yield e
    e.close()


def test_many_callbacks_per_kind_are_all_called(engine: Engine) -> None:
    got: dict[str, list[int]] = {"a": [], "b": [], "c": [], "all": [], "two": []}
    engine.subscribe(lambda r: got["a"].append(r.seq), "checkpoint.committed")
    engine.subscribe(lambda r: got["b"].append(r.seq), "checkpoint.committed")
    engine.subscribe(lambda r: got["c"].append(r.seq), ["checkpoint.committed"])
    engine.subscribe(lambda r: got["all"].append(r.seq))
    engine.subscribe(lambda r: got["two"].append(r.seq), ("pointer.set", "checkpoint.committed"))
    first = commit_checkpoint(engine, "a", step=1)
    engine.set_pointer("best", "a")
    second = commit_checkpoint(engine, "b", step=2)
    committed = [first.seq, second.seq]
    assert got["a"] == got["b"] == got["c"] == committed
    pointer_set = engine.state.pointers["best"].seq
    assert got["two"] == sorted([*committed, pointer_set])
    assert got["all"] == list(range(2, engine.state.seq + 1))


def test_the_same_callback_twice_is_called_twice(engine: Engine) -> None:
    seen: list[int] = []

    def cb(r: EventRecord) -> None:
        seen.append(r.seq)

    engine.subscribe(cb, "checkpoint.committed")
    engine.subscribe(cb, "checkpoint.committed")
    info = commit_checkpoint(engine, "a", step=1)
    assert seen == [info.seq, info.seq]


def test_callbacks_see_records_in_seq_order_after_they_are_durable(engine: Engine, root: str) -> None:
    seen: list[tuple[int, str, bool]] = []

    def cb(rec: EventRecord) -> None:
        on_disk = {r.seq: r for r in journal_records(root)}
        found = on_disk.get(rec.seq)
        seen.append((rec.seq, kind_of(rec.event), found is not None and found.event == rec.event))

    engine.subscribe(cb)
    commit_checkpoint(engine, "a", step=1)
    engine.set_pointer("best", "a")
    with engine.checkpoint("b", step=2) as ck:
        ck.write_bytes("w.bin", b"w")
    seqs = [s for s, _k, _ok in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs == list(range(2, engine.state.seq + 1))
    assert all(ok for _s, _k, ok in seen), f"a callback ran before its record was on disk: {seen}"
    assert [k for _s, k, _ok in seen[:3]] == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]


def test_a_record_is_delivered_only_once_it_is_durable(engine: Engine, root: str) -> None:
    """checkpoint.begun is written without its own fdatasync; subscribers hear of it with the next durable record."""
    seen: list[str] = []
    engine.subscribe(lambda r: seen.append(kind_of(r.event)))
    ck = engine.checkpoint("a", step=1)
    assert kinds(root)[-1] == "checkpoint.begun"
    assert seen == []
    ck.write_bytes("w.bin", b"w")
    ck.commit()
    assert seen == ["checkpoint.begun", "checkpoint.durable", "checkpoint.committed"]


def test_a_raising_callback_is_logged_and_the_others_go_on(engine: Engine, root: str, caplog: pytest.LogCaptureFixture) -> None:
    before: list[int] = []
    after: list[int] = []
    engine.subscribe(lambda r: before.append(r.seq), "checkpoint.committed")

    def broken(rec: EventRecord) -> None:
        raise KeyError("subscriber bug")

    engine.subscribe(broken, "checkpoint.committed")
    engine.subscribe(lambda r: after.append(r.seq), "checkpoint.committed")
    with caplog.at_level(logging.ERROR, logger="shipslog"):
        first = commit_checkpoint(engine, "a", step=1)
        second = commit_checkpoint(engine, "b", step=2)
    assert before == after == [first.seq, second.seq]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in errors)
    assert f"seq {first.seq}" in errors[0].getMessage() and "checkpoint.committed" in errors[0].getMessage()
    assert "subscriber bug" in caplog.text and "Traceback" in caplog.text
    assert set(engine.state.checkpoints) == {"a", "b"}
    assert kinds(root)[-1] == "checkpoint.committed"


def test_cancel_stops_delivery(engine: Engine) -> None:
    seen: list[int] = []
    sub = engine.subscribe(lambda r: seen.append(r.seq), "checkpoint.committed")
    assert sub.active and sub.kinds == frozenset({"checkpoint.committed"})
    first = commit_checkpoint(engine, "a", step=1)
    sub.cancel()
    sub.cancel()
    assert not sub.active
    commit_checkpoint(engine, "b", step=2)
    assert seen == [first.seq]
    with engine.subscribe(lambda r: seen.append(-r.seq), "checkpoint.committed") as scoped:
        third = commit_checkpoint(engine, "c", step=3)
    assert not scoped.active
    commit_checkpoint(engine, "d", step=4)
    assert seen == [first.seq, -third.seq]


@pytest.mark.parametrize("bad", ["checkpoint.finished", ["pointer.set", "pointer.moved"], "checkpoint"])
def test_an_unknown_kind_is_refused(engine: Engine, bad: Any) -> None:
    seen: list[int] = []
    with pytest.raises(ValueError, match="unknown event kind"):
        engine.subscribe(lambda r: seen.append(r.seq), bad)
    commit_checkpoint(engine, "a", step=1)
    assert seen == []


def test_a_callback_must_be_callable(engine: Engine) -> None:
    with pytest.raises(TypeError):
        engine.subscribe("not callable", "checkpoint.committed")  # type: ignore[arg-type]


def test_callbacks_are_dropped_on_close(root: str) -> None:
    e = open_engine(root)
    seen: list[str] = []
    sub = e.subscribe(lambda r: seen.append(kind_of(r.event)))
    commit_checkpoint(e, "a", step=1)
    e.close()
    assert not sub.active
    assert seen[-1] == "session.closed"
    count = len(seen)
    with open_engine(root) as again:
        commit_checkpoint(again, "b", step=2)
    assert len(seen) == count


def test_callbacks_from_many_threads_arrive_in_seq_order(engine: Engine) -> None:
    commit_checkpoint(engine, "target", step=1)
    seen: list[int] = []
    lock = threading.Lock()

    def cb(rec: EventRecord) -> None:
        with lock:
            seen.append(rec.seq)

    engine.subscribe(cb)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                engine.set_pointer(f"p{i}-{j}", "target")
        except BaseException as exc:  # noqa: BLE001 - a thread's failure of any kind is collected, asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) == 4 * 5 * 2
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert len(engine.state.pointers) == 20


def test_callbacks_receive_what_the_journal_holds(engine: Engine, root: str) -> None:
    got: list[EventRecord] = []
    engine.subscribe(got.append)
    commit_checkpoint(engine, "a", step=1)
    reader = JournalReader(os.path.join(root, "journal"))
    on_disk = [r.seq for r in reader.records(2)]
    assert [r.seq for r in got] == on_disk
    assert all(r.session == engine.session for r in got)
