"""A host's own operation type recovers like a built-in: executors declared on its type, planned and carried
out by the same recovery, killed at every one of its crash points by the harness with zero violations."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from typing import Any

import host_export_op as export
import pytest
from _engine_helpers import (
    SimulatedCrash,
    crash,
    dies_at_point,
    events_of,
    journal_records,
    kind_of,
    open_engine,
)

from shipslog.engine import (
    BUILTIN_OPERATIONS,
    Event,
    OperationType,
    Recovery,
    RecoveryAction,
    RecoveryStep,
    Reducer,
    Registry,
    RunProgress,
    apply,
)
from shipslog.recovery import list_root, plan

OPS = export.OPERATIONS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _models(e: Any) -> None:
    for name, data in (("m1", b"one" * 300), ("m2", b"two" * 400)):
        with e.save_model(name) as model:
            model.write_bytes("weights.bin", data)


def _slot(root: str, slot: str) -> dict[str, bytes]:
    folder = os.path.join(root, "serving", slot)
    found = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            found[name] = f.read()
    return found


def _reopen(root: str) -> Any:
    return open_engine(root, operations=OPS)


# -- the forward path ------------------------------------------------------------------------------


def test_an_export_publishes_a_verified_copy_and_journals_its_four_steps(root: str) -> None:
    with open_engine(root, operations=OPS) as e:
        _models(e)
        assert export.export_model(e, "m1", "prod") == "serving/prod"
        op = next(r.event.op for r in journal_records(root, OPS) if kind_of(r.event) == "export.begun")
    assert events_of(root, op) == ["export.begun", "export.copied", "export.published", "export.committed"]
    assert _slot(root, "prod")["weights.bin"] == b"one" * 300
    assert sorted(os.listdir(os.path.join(root, "serving"))) == ["prod"]


def test_a_second_export_to_a_slot_replaces_it_and_leaves_nothing_aside(root: str) -> None:
    with open_engine(root, operations=OPS) as e:
        _models(e)
        export.export_model(e, "m1", "prod")
        export.export_model(e, "m2", "prod")
    assert _slot(root, "prod")["weights.bin"] == b"two" * 400
    assert sorted(os.listdir(os.path.join(root, "serving"))) == ["prod"]


# -- recovery: planned from the type's declaration, carried out by its executors ---------------------


def test_the_planner_names_the_executor_the_host_type_declares(root: str) -> None:
    e = open_engine(root, operations=OPS)
    _models(e)
    with dies_at_point("export.after_copied"), pytest.raises(SimulatedCrash):
        export.export_model(e, "m1", "prod")
    state, registry = e.state, e.registry
    crash(e)
    actions = [a for a in plan(state, list_root(root), registry) if a.op_type == "export"]
    assert [(a.kind, a.state) for a in actions] == [("export.roll-forward", "copied")]


def test_cut_off_after_copied_rolls_forward_to_the_new_copy(root: str) -> None:
    e = open_engine(root, operations=OPS)
    _models(e)
    export.export_model(e, "m1", "prod")
    with dies_at_point("export.after_old_moved"), pytest.raises(SimulatedCrash):
        export.export_model(e, "m2", "prod")
    crash(e)
    assert not os.path.exists(os.path.join(root, "serving", "prod"))  # the slot is empty at the crash
    with _reopen(root) as again:
        assert again.state.ops_of("export") == []
        steps = [r.event for r in journal_records(root, OPS) if isinstance(r.event, RecoveryStep)]
        assert [s.action for s in steps] == ["export.roll-forward"]
    assert _slot(root, "prod")["weights.bin"] == b"two" * 400
    assert sorted(os.listdir(os.path.join(root, "serving"))) == ["prod"]


def test_cut_off_while_copying_rolls_back_and_keeps_the_old_copy(root: str) -> None:
    e = open_engine(root, operations=OPS)
    _models(e)
    export.export_model(e, "m1", "prod")
    with dies_at_point("export.after_file"), pytest.raises(SimulatedCrash):
        export.export_model(e, "m2", "prod")
    crash(e)
    with _reopen(root) as again:
        op = again.recovery.results[-1].action.target
    assert events_of(root, op) == ["export.begun", "export.aborted"]
    assert _slot(root, "prod")["weights.bin"] == b"one" * 300
    assert sorted(os.listdir(os.path.join(root, "serving"))) == ["prod"]


def test_a_staged_copy_that_does_not_verify_is_not_published_and_the_old_copy_stays(root: str) -> None:
    e = open_engine(root, operations=OPS)
    _models(e)
    export.export_model(e, "m1", "prod")
    with dies_at_point("export.after_copied"), pytest.raises(SimulatedCrash):
        export.export_model(e, "m2", "prod")
    op = e.state.ops_of("export")[0].id
    crash(e)
    with open(os.path.join(root, *export.staging_of(op).split("/"), "weights.bin"), "r+b") as f:
        f.write(b"X")  # a bit of the staged copy went bad
    with _reopen(root):
        pass
    assert events_of(root, op)[-1] == "export.aborted"
    assert _slot(root, "prod")["weights.bin"] == b"one" * 300


def test_cut_off_after_published_removes_the_old_copy_and_commits(root: str) -> None:
    e = open_engine(root, operations=OPS)
    _models(e)
    export.export_model(e, "m1", "prod")
    with dies_at_point("export.after_published"), pytest.raises(SimulatedCrash):
        export.export_model(e, "m2", "prod")
    op = e.state.ops_of("export")[0].id
    crash(e)
    assert os.path.isdir(os.path.join(root, *export.old_of(op).split("/")))
    with _reopen(root):
        pass
    assert events_of(root, op)[-1] == "export.committed"
    assert sorted(os.listdir(os.path.join(root, "serving"))) == ["prod"]


# -- the declaration ----------------------------------------------------------------------------------


class _S(str, enum.Enum):
    A = "a"
    B = "b"


class _Go(Event, tag="t.go"):
    pass


class _Tick(Event, tag="t.tick"):
    n: int


class _End(Event, tag="t.end"):
    pass


def _t(**over: Any) -> OperationType:
    spec: dict[str, Any] = {
        "name": "t",
        "states": _S,
        "events": (_Go, _Tick, _End),
        "begins": {"t.go": _S.A},
        "transitions": {(_S.A, "t.tick"): _S.A, (_S.A, "t.end"): _S.B},
        "terminal": frozenset({_S.B}),
        "recovery": {_S.A: Recovery(RecoveryAction.ROLL_BACK, "x", "t.end")},
    }
    spec.update(over)
    return OperationType(**spec)


def test_a_rule_with_both_a_closing_event_and_an_executor_is_refused() -> None:
    with pytest.raises(ValueError, match=r"both closes with 't\.end' and has an executor"):
        _t(recovery={_S.A: Recovery(RecoveryAction.ROLL_BACK, "x", "t.end", execute=lambda ctx, op: "")})


def test_close_fields_without_a_closing_event_is_refused() -> None:
    with pytest.raises(ValueError, match="close_fields but no close_with"):
        _t(recovery={_S.A: Recovery(RecoveryAction.ROLL_BACK, "x", close_fields=lambda s, o, n: {}, execute=lambda ctx, op: "")})


def test_grows_must_name_a_self_loop_and_a_field_of_the_event() -> None:
    with pytest.raises(ValueError, match=r"field 'step' of 't\.tick'"):
        _t(grows={"t.tick": "step"})
    with pytest.raises(ValueError, match="only a self-loop folds"):
        _t(grows={"t.end": "op"})


def test_a_host_progress_event_declared_in_grows_folds_to_the_same_state_as_record_by_record() -> None:
    ticks: list[int] = []

    def project(b: Any, op: Any, ev: Any, seq: int, time: float) -> None:
        ticks.append(ev.n)
        b.global_step = ev.n

    t = _t(grows={"t.tick": "n"}, projections={"t.tick": project})
    reg = Registry([t])
    from shipslog.engine import EngineState, EventRecord

    records = [EventRecord(1, 0.0, "s", _Go(op="t-1"))] + [EventRecord(i, 0.0, "s", _Tick(op="t-1", n=i)) for i in range(2, 40)]
    folded = Reducer(reg)
    folded.apply_all(records)
    assert ticks == [2, 39]  # the first of the run, then only its last
    one_by_one = EngineState()
    for rec in records:
        one_by_one = apply(one_by_one, rec, reg)
    assert folded.state() == one_by_one
    assert folded.state().global_step == 39


def test_run_progress_folds_through_the_declared_mechanism_only() -> None:
    from shipslog.engine import RUN

    assert RUN.grows == {"run.progress": "step"}
    assert all(not t.grows for t in BUILTIN_OPERATIONS if t is not RUN)
    assert RunProgress in RUN.events


def test_every_builtin_cut_off_state_names_an_executor_or_a_closing_event() -> None:
    left_to_a_person = set()
    for t in BUILTIN_OPERATIONS:
        for state, rule in t.recovery.items():
            if rule.execute is None and rule.close_with is None:
                left_to_a_person.add((t.name, state.value))
    assert left_to_a_person == {("salvage", "reconciling")}  # only 'shipslog recover --salvage' may finish it


# -- the crash harness on the host's module -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_torture_of_the_host_module_crashes_every_one_of_its_points_with_zero_violations(tmp_path: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shipslog", "torture", "--json", "--quick", "--dir", str(tmp_path),
         "--operations", os.path.join(REPO, "tests", "host_export_op.py")],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.stdout.startswith("{"), proc.stderr
    result = json.loads(proc.stdout)
    assert result["violations"] == []
    assert result["ops"] == ["export"]
    export_points = {p for p in result["crash_points"] if p.startswith("export.")}
    assert export_points == {
        "export.after_begun", "export.after_file", "export.after_copied", "export.after_old_moved",
        "export.after_rename", "export.after_published", "export.after_old_removed",
    }
    assert export_points <= set(result["covered"])
    assert result["recovery_crashes"] > 0
    assert proc.returncode == 0
