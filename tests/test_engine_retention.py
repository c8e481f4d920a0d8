"""The retention operation: old checkpoints deleted by step, the intent journaled before the first
delete, never a pointer's target or the newest checkpoint; dry runs change nothing."""

from __future__ import annotations

import os
from typing import Any

import pytest
from _engine_helpers import (
    SimulatedCrash,
    commit_checkpoint,
    dies_at_point,
    journal_records,
    kind_of,
    open_engine,
    tree,
)

from shipslog import Engine
from shipslog.engine import (
    ConflictError,
    NotFoundError,
    RetentionDeleted,
    RetentionIntended,
    plan_retention,
)


@pytest.fixture
def engine(root: str) -> Any:
    e = open_engine(root)
    yield e
    e.close()


def five(engine: Engine) -> None:
    """Five checkpoints, committed out of step order; names sort differently from steps."""
    for step in (300, 1000, 100, 500, 200):
        commit_checkpoint(engine, f"step-{step}", step=step)


def on_disk(root: str) -> set[str]:
    return set(os.listdir(os.path.join(root, "checkpoints")))


def test_keep_last_2_of_5_deletes_the_3_oldest_by_step(engine: Engine, root: str) -> None:
    five(engine)
    plan = engine.retain(2)
    expected = {"checkpoints/step-100", "checkpoints/step-200", "checkpoints/step-300"}
    assert set(plan.delete) == expected and not plan.dry_run and plan.op is not None
    assert on_disk(root) == {"step-500", "step-1000"}
    assert set(engine.state.checkpoints) == {"step-500", "step-1000"}
    assert engine.state.latest == "step-1000" and engine.state.retiring == {}
    recs = [r for r in journal_records(root) if r.event.op == plan.op]
    assert [kind_of(r.event) for r in recs] == ["retention.intended", "retention.deleted"]
    assert set(recs[0].event.paths) == expected
    assert os.listdir(os.path.join(root, "checkpoints")).count(".step-100.deleting") == 0


def test_the_intent_is_journaled_before_the_first_delete(engine: Engine, root: str) -> None:
    five(engine)
    seen: list[tuple[str, set[str]]] = []

    def watch(rec: Any) -> None:
        on_journal = [r for r in journal_records(root) if r.seq == rec.seq]
        assert on_journal and kind_of(on_journal[0].event) == kind_of(rec.event)
        seen.append((kind_of(rec.event), on_disk(root)))

    engine.subscribe(watch, ["retention.intended", "retention.deleted"])
    engine.retain(2)
    assert seen == [
        ("retention.intended", {"step-100", "step-200", "step-300", "step-500", "step-1000"}),
        ("retention.deleted", {"step-500", "step-1000"}),
    ]


def test_each_delete_happens_after_the_intent_is_on_disk(engine: Engine, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    five(engine)
    at_delete: list[list[str]] = []
    real = engine.fs.remove_tree_durable

    def remove(path: Any) -> None:
        at_delete.append([kind_of(r.event) for r in journal_records(root)][-1:])
        real(path)

    monkeypatch.setattr(engine.fs, "remove_tree_durable", remove)
    engine.retain(2)
    assert at_delete == [["retention.intended"]] * 3


def test_a_pointer_target_and_the_newest_are_never_deleted(engine: Engine, root: str) -> None:
    five(engine)
    engine.set_pointer("best", "step-100")
    plan = engine.retain(1)
    assert set(plan.delete) == {"checkpoints/step-200", "checkpoints/step-300", "checkpoints/step-500"}
    assert "pointer 'best'" in plan.keep["checkpoints/step-100"]
    assert "newest" in plan.keep["checkpoints/step-1000"]
    assert on_disk(root) == {"step-100", "step-1000"}
    assert os.path.isdir(engine.pointer("best"))


def test_a_checkpoint_a_pointer_move_in_progress_names_is_kept(engine: Engine, root: str) -> None:
    five(engine)
    with dies_at_point("pointer.after_intended"), pytest.raises(SimulatedCrash):
        engine.set_pointer("best", "step-100")
    plan = engine.retain(1)
    assert "checkpoints/step-100" not in plan.delete
    assert "used by operation" in plan.keep["checkpoints/step-100"]
    assert "step-100" in on_disk(root)
    assert plan_retention(engine.state, 5).delete == []


def test_dry_run_changes_nothing(engine: Engine, root: str) -> None:
    five(engine)
    before_journal = journal_records(root)
    before_files = tree(root)
    plan = engine.retain(2, dry_run=True)
    assert plan.dry_run and plan.op is None
    assert set(plan.delete) == {"checkpoints/step-100", "checkpoints/step-200", "checkpoints/step-300"}
    assert journal_records(root) == before_journal
    assert tree(root) == before_files


def test_nothing_to_delete_journals_nothing(engine: Engine, root: str) -> None:
    five(engine)
    before = journal_records(root)
    plan = engine.retain(5)
    assert plan.delete == [] and plan.op is None
    assert journal_records(root) == before


@pytest.mark.parametrize("keep_last", [0, -1, 1.5, "2", None])
def test_keep_last_below_1_or_not_an_int_is_refused(engine: Engine, root: str, keep_last: Any) -> None:
    five(engine)
    before = journal_records(root)
    with pytest.raises(ValueError, match="keep_last"):
        engine.retain(keep_last)
    assert journal_records(root) == before and len(on_disk(root)) == 5


def test_keep_models(engine: Engine, root: str) -> None:
    for name in ("m1", "m2", "m3"):
        with engine.save_model(name) as m:
            m.write_bytes("w.bin", name.encode())
    engine.set_pointer("serving", "models/m1")
    plan = engine.retain(1, keep_models=1)
    assert plan.delete == ["models/m2"]
    assert sorted(os.listdir(os.path.join(root, "models"))) == ["m1", "m3"]
    assert set(engine.state.models) == {"m1", "m3"}
    with pytest.raises(ValueError, match="keep_models"):
        engine.retain(1, keep_models=-1)


def test_retention_survives_reopening(root: str) -> None:
    with open_engine(root) as e:
        five(e)
        e.retain(2)
    with open_engine(root) as again:
        assert set(again.state.checkpoints) == {"step-500", "step-1000"}
        assert again.latest_checkpoint(deep=True).name == "step-1000"  # type: ignore[union-attr]


def test_the_intent_names_only_folders_under_the_engines_folders(engine: Engine, root: str) -> None:
    five(engine)
    engine.retain(1)
    for rec in journal_records(root):
        if isinstance(rec.event, RetentionIntended):
            assert all(p.startswith("checkpoints/") and p.count("/") == 1 for p in rec.event.paths)
    assert any(isinstance(r.event, RetentionDeleted) for r in journal_records(root))


def test_delete_removes_named_checkpoints_as_one_journaled_retention(root: str) -> None:
    with open_engine(root) as e:
        for step in (10, 20, 30):
            commit_checkpoint(e, f"step-{step}", step=step)
        assert e.delete(["step-10", "checkpoints/step-20"], reason="rotated") == ["checkpoints/step-10", "checkpoints/step-20"]
        assert sorted(e.state.checkpoints) == ["step-30"]
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-30"]
    kinds_seen = [(kind_of(r.event), getattr(r.event, "paths", None)) for r in journal_records(root)]
    assert ("retention.intended", ["checkpoints/step-10", "checkpoints/step-20"]) in kinds_seen


def test_delete_refuses_a_pointer_target_and_the_newest_before_anything_is_journaled(root: str) -> None:
    with open_engine(root) as e:
        for step in (10, 20, 30):
            commit_checkpoint(e, f"step-{step}", step=step)
        e.set_pointer("best", "step-10")
        seq = e.state.seq
        with pytest.raises(ConflictError, match="pointer 'best'"):
            e.delete(["step-20", "step-10"])
        with pytest.raises(ConflictError, match="newest"):
            e.delete(["step-30"])
        with pytest.raises(NotFoundError):
            e.delete(["step-99"])
        assert e.state.seq == seq
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-10", "step-20", "step-30"]
