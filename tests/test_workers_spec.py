"""Worker configuration (WorkerSpec: unknown keys, wrong types, bad values rejected with the key named),
the worker operation table, and the pure recovery helpers (no process started here)."""

from __future__ import annotations

from typing import Any

import pytest
from _workers_helpers import sleep_forever

from shipslog.engine import (
    BUILTIN_OPERATIONS,
    WORKER,
    EngineError,
    OpRecord,
    Registry,
    Supervisor,
    WorkerConfigError,
    WorkerDied,
    WorkerSpec,
    WorkerStarted,
    WorkerStarting,
    WorkerState,
    WorkerStopped,
    WorkerSupervised,
    probe_worker,
    settle_worker_event,
)

# -- configuration -----------------------------------------------------------------------------------


def test_a_full_config_converts() -> None:
    spec = WorkerSpec.from_dict(
        {
            "name": "loader",
            "argv": ["python", "-m", "loader"],
            "env": {"SHARD": "1"},
            "restart": "always",
            "max_restarts": 3,
            "restart_window": 30,
            "backoff_initial": 0.5,
            "backoff_max": 10,
            "backoff_jitter": 0.2,
            "stop_timeout": 5,
        }
    )
    assert spec.argv == ("python", "-m", "loader") and spec.restart == "always" and spec.stop_timeout == 5.0
    assert spec.command() == ["python", "-m", "loader"]


BAD_CONFIGS = [
    pytest.param({"name": "w", "argv": ["x"], "stop_timout": 3}, "unknown key 'stop_timout'", id="unknown-key"),
    pytest.param({"name": "w", "argv": ["x"], "stop_timeout": "3"}, "WorkerSpec.stop_timeout: Expected `float`, got `str`", id="timeout-str"),
    pytest.param({"name": "w", "argv": ["x"], "stop_timeout": -1}, "WorkerSpec.stop_timeout: Expected `float` >= 0", id="negative-timeout"),
    pytest.param({"name": "w", "argv": []}, "WorkerSpec.argv", id="empty-argv"),
    pytest.param({"name": "w", "argv": [""]}, "WorkerSpec.argv", id="empty-command"),
    pytest.param({"name": "w", "argv": "sleep 1"}, "WorkerSpec.argv: Expected `array | null`, got `str`", id="argv-str"),
    pytest.param({"name": "w"}, "exactly one of 'argv'", id="no-command"),
    pytest.param({"name": "w", "argv": ["x"], "target": "m:f"}, "exactly one of 'argv'", id="both"),
    pytest.param({"name": "w", "target": "not a target"}, "WorkerSpec.target", id="bad-target"),
    pytest.param({"name": "w", "argv": ["x"], "restart": "sometimes"}, "WorkerSpec.restart", id="bad-policy"),
    pytest.param({"name": "w", "argv": ["x"], "max_restarts": -1}, "WorkerSpec.max_restarts: Expected `int` >= 0", id="negative-budget"),
    pytest.param({"name": "w", "argv": ["x"], "max_restarts": 2.5}, "WorkerSpec.max_restarts: Expected `int`, got `float`", id="float-budget"),
    pytest.param({"name": "w", "argv": ["x"], "restart_window": 0}, "WorkerSpec.restart_window: Expected `float` > 0", id="zero-window"),
    pytest.param({"name": "w", "argv": ["x"], "backoff_jitter": 2}, "WorkerSpec.backoff_jitter", id="jitter-over-1"),
    pytest.param({"name": "w", "argv": ["x"], "backoff_multiplier": 0.5}, "WorkerSpec.backoff_multiplier", id="shrinking-backoff"),
    pytest.param({"name": "w", "argv": ["x"], "backoff_initial": 5, "backoff_max": 1}, "WorkerSpec.backoff_max", id="cap-below-initial"),
    pytest.param({"name": "w", "argv": ["x"], "env": {"A": 1}}, "WorkerSpec.env", id="env-int"),
    pytest.param({"name": "w", "argv": ["x"], "env": {"A=B": "1"}}, "WorkerSpec.env", id="env-bad-name"),
    pytest.param({"name": "../w", "argv": ["x"]}, "WorkerSpec.name", id="bad-name"),
    pytest.param({"name": "w", "argv": ["x"], "args": ["1"]}, "WorkerSpec.args", id="args-without-target"),
    pytest.param({"argv": ["x"]}, "missing required field `name`", id="no-name"),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS)
def test_a_bad_config_names_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkerConfigError) as info:
        WorkerSpec.from_dict(config)
    assert message in str(info.value)
    assert isinstance(info.value, EngineError) and isinstance(info.value, ValueError)


def test_an_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(WorkerConfigError, match="known keys: name, argv, target"):
        WorkerSpec.from_dict({"name": "w", "argv": ["x"], "retries": 3})


def test_a_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(WorkerConfigError, match="mapping"):
        WorkerSpec.from_dict(["name", "w"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"argv": ("x",), "stop_timeout": -0.5}, "WorkerSpec.stop_timeout"),
        ({"argv": ("x",), "stop_timeout": "10"}, "WorkerSpec.stop_timeout"),
        ({"argv": ("x",), "max_restarts": True}, "WorkerSpec.max_restarts"),
        ({"argv": ()}, "WorkerSpec.argv"),
        ({}, "exactly one of"),
    ],
)
def test_direct_construction_is_checked_too(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkerConfigError, match=message):
        WorkerSpec(name="w", **kwargs)


def test_a_python_target_is_named_by_module_and_qualname() -> None:
    spec = WorkerSpec.python("w", sleep_forever, args=["1"])
    assert spec.target == "_workers_helpers:sleep_forever" and spec.args == ("1",)
    command = spec.command()
    assert command[1] == "-c" and command[3:] == ["_workers_helpers:sleep_forever", "1"]


def test_a_lambda_or_nested_function_is_refused() -> None:
    def nested() -> None:
        return None

    with pytest.raises(WorkerConfigError, match="cannot be imported by name"):
        WorkerSpec.python("w", lambda: None)
    with pytest.raises(WorkerConfigError, match="cannot be imported by name"):
        WorkerSpec.python("w", nested)


def test_a_supervisor_refuses_duplicate_names_and_no_workers(root: str) -> None:
    from _engine_helpers import open_engine

    with open_engine(root) as engine:
        with pytest.raises(WorkerConfigError, match="unique"):
            Supervisor(engine, [WorkerSpec(name="a", argv=("x",)), {"name": "a", "argv": ["y"]}])
        with pytest.raises(WorkerConfigError, match="at least one"):
            Supervisor(engine, [])
        with pytest.raises(WorkerConfigError, match="unknown key 'cmd'"):
            Supervisor(engine, [{"name": "a", "cmd": ["y"]}])


# -- the operation table ---------------------------------------------------------------------------


def test_worker_is_a_builtin_with_a_rule_for_every_live_state() -> None:
    assert WORKER in BUILTIN_OPERATIONS
    Registry()  # builds with it
    table = WORKER.describe()
    assert set(table["recovery"]) == {"supervised", "starting", "started"}
    assert table["recovery"]["started"]["close_with"] is None
    assert table["recovery"]["starting"]["close_with"] is None
    assert table["recovery"]["supervised"]["close_with"] == "worker.released"
    assert "probe pid and create time" in table["recovery"]["started"]["reason"]


def _op(state: WorkerState, **info: Any) -> OpRecord:
    return OpRecord(id="worker-s-2", type="worker", state=state.value, first_seq=1, seq=2, session="s", time=0.0, info=info)


def test_settle_events_fit_the_table() -> None:
    running = _op(WorkerState.STARTED, name="w", slot="worker-s-1", pid=123, create_time=1.0)
    died = settle_worker_event(running, "gone")
    assert isinstance(died, WorkerDied) and "gone at recovery" in died.reason and died.op == "worker-s-2"
    stopped = settle_worker_event(running, "killed")
    assert isinstance(stopped, WorkerStopped) and stopped.how == "killed"
    starting = _op(WorkerState.STARTING, name="w", slot="worker-s-1")
    assert isinstance(settle_worker_event(starting, "gone"), WorkerDied)
    for event in (died, stopped):
        assert (WorkerState.STARTED, type(event).__struct_config__.tag) in WORKER.transitions
    with pytest.raises(ValueError, match="unknown stop outcome"):
        settle_worker_event(running, "maybe")
    with pytest.raises(ValueError, match="not a worker incarnation"):
        settle_worker_event(_op(WorkerState.SUPERVISED, name="w"), "gone")


def test_the_reducer_keeps_a_running_worker_with_its_identity() -> None:
    from shipslog.engine import EventRecord, Reducer

    reducer = Reducer(Registry())
    events = [
        WorkerSupervised(op="worker-s-1", name="w", policy="on-failure", max_restarts=3, restart_window=60),
        WorkerStarting(op="worker-s-2", slot="worker-s-1", name="w", attempt=2, delay=0.4),
        WorkerStarted(op="worker-s-2", pid=4242, create_time=1234.5, pgid=4242, start_ticks=99, boot_id="b"),
    ]
    reducer.apply_all(EventRecord(i + 1, 0.0, "s", e) for i, e in enumerate(events))
    op = reducer.state().ops["worker-s-2"]
    assert op.state == "started"
    assert {k: op.info[k] for k in ("name", "slot", "attempt", "delay", "pid", "create_time", "start_ticks")} == {
        "name": "w", "slot": "worker-s-1", "attempt": 2, "delay": 0.4, "pid": 4242, "create_time": 1234.5, "start_ticks": 99,
    }


def test_probe_refuses_nonsense_pids() -> None:
    assert not probe_worker(0, 1.0)
    assert not probe_worker(-5, 1.0)
