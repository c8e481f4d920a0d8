"""Worker configuration (WorkerSpec: unknown keys, wrong types, bad values rejected with the key named),
the worker operation table, and the pure recovery helpers (no process started here)."""

from __future__ import annotations

from typing import Any

import pytest
from _workers_helpers import sleep_forever

from shipslog.engine import (
    BUILTIN_OPERATIONS,
    MAX_SPEC_COMMAND_BYTES,
    MAX_SPEC_ITEMS,
    MAX_SPEC_STRING_BYTES,
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


# -- hostile configs: every string that reaches the process, nesting, bounds ----------------------------


def _refused(config: dict[str, Any]) -> str:
    """The message of the WorkerConfigError that ``config`` raises (fails the test when it raises anything else)."""
    with pytest.raises(WorkerConfigError) as info:
        WorkerSpec.from_dict(config)
    return str(info.value)


def test_nul_in_argv_is_a_worker_config_error() -> None:
    message = _refused({"name": "w", "argv": ["sleep", "1\x002"]})
    assert "WorkerSpec.argv[1]" in message and "NUL" in message


def test_nul_in_argv_is_refused_by_direct_construction_too() -> None:
    with pytest.raises(WorkerConfigError, match=r"WorkerSpec\.argv\[0\].*NUL"):
        WorkerSpec(name="w", argv=("sl\x00eep",))


def test_nul_in_args_is_refused() -> None:
    message = _refused({"name": "w", "target": "m:f", "args": ["ok", "b\x00d"]})
    assert "WorkerSpec.args[1]" in message and "NUL" in message


def test_nul_in_target_is_refused() -> None:
    message = _refused({"name": "w", "target": "m:f\x00"})
    assert "WorkerSpec.target" in message and "NUL" in message


def test_nul_in_cwd_is_refused() -> None:
    message = _refused({"name": "w", "argv": ["x"], "cwd": "/tmp/\x00"})
    assert "WorkerSpec.cwd" in message and "NUL" in message


def test_nul_in_env_value_is_refused() -> None:
    message = _refused({"name": "w", "argv": ["x"], "env": {"X": "a\x00b"}})
    assert "WorkerSpec.env['X']" in message and "NUL" in message


def test_nul_in_env_name_is_refused() -> None:
    message = _refused({"name": "w", "argv": ["x"], "env": {"X\x00": "1"}})
    assert "WorkerSpec.env['X\\x00']" in message and "NUL" in message


def test_equals_or_empty_env_name_is_refused() -> None:
    assert "WorkerSpec.env['A=B']" in _refused({"name": "w", "argv": ["x"], "env": {"A=B": "1"}})
    assert "WorkerSpec.env['']" in _refused({"name": "w", "argv": ["x"], "env": {"": "1"}})


def test_empty_argv0_is_refused() -> None:
    message = _refused({"name": "w", "argv": ["", "arg"]})
    assert "WorkerSpec.argv[0]" in message and "non-empty" in message


def test_empty_cwd_is_refused() -> None:
    assert "WorkerSpec.cwd" in _refused({"name": "w", "argv": ["x"], "cwd": ""})


def test_unencodable_string_is_refused() -> None:
    message = _refused({"name": "w", "argv": ["x", "\ud800"]})
    assert "WorkerSpec.argv[1]" in message and "encode" in message


def test_overlong_string_is_refused() -> None:
    big = "a" * (MAX_SPEC_STRING_BYTES + 1)
    message = _refused({"name": "w", "argv": ["x", big]})
    assert "WorkerSpec.argv[1]" in message and f"at most {MAX_SPEC_STRING_BYTES} bytes" in message
    assert len(message) < 1000
    multibyte = "é" * (MAX_SPEC_STRING_BYTES // 2 + 1)  # under the limit in characters, over it in bytes
    assert "WorkerSpec.env['X']" in _refused({"name": "w", "argv": ["x"], "env": {"X": multibyte}})


def test_too_many_argv_items_or_env_entries_are_refused() -> None:
    many = MAX_SPEC_ITEMS + 1
    assert f"at most {MAX_SPEC_ITEMS} items" in _refused({"name": "w", "argv": ["x"] * many})
    env = {f"V{i}": "1" for i in range(many)}
    assert f"at most {MAX_SPEC_ITEMS} variables" in _refused({"name": "w", "argv": ["x"], "env": env})


def test_too_large_command_line_in_all_is_refused() -> None:
    chunk = "a" * 60_000
    count = MAX_SPEC_COMMAND_BYTES // len(chunk) + 1
    assert "in all" in _refused({"name": "w", "argv": ["x"], "env": {f"V{i}": chunk for i in range(count)}})


def test_deeply_nested_spec_dict_is_a_worker_config_error() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    message = _refused({"name": "w", "argv": deep})
    assert "WorkerSpec.argv[0]" in message and "nested" in message
    nested_env: Any = {"X": {"Y": "1"}}
    assert "WorkerSpec.env['X']" in _refused({"name": "w", "argv": ["x"], "env": nested_env})


def test_deep_nesting_under_an_unknown_key_is_refused() -> None:
    deep: Any = {}
    for _ in range(100_000):
        deep = {"k": deep}
    assert "WorkerSpec.extra" in _refused({"name": "w", "argv": ["x"], "extra": deep})


def test_a_key_that_is_not_a_string_is_refused() -> None:
    assert "keys that are strings" in _refused({"name": "w", "argv": ["x"], 3: "y"})  # type: ignore[dict-item]


def test_infinite_or_nan_numbers_are_refused() -> None:
    assert "WorkerSpec.stop_timeout" in _refused({"name": "w", "argv": ["x"], "stop_timeout": float("inf")})
    assert "WorkerSpec.stop_timeout: Expected `float` <= 3600" in _refused({"name": "w", "argv": ["x"], "stop_timeout": 7200})
    assert "WorkerSpec.restart_window" in _refused({"name": "w", "argv": ["x"], "restart_window": float("nan")})


def test_a_restart_budget_too_large_to_journal_is_refused() -> None:
    assert "WorkerSpec.max_restarts" in _refused({"name": "w", "argv": ["x"], "max_restarts": 10**30})


def test_a_target_with_a_trailing_newline_is_refused() -> None:
    assert "WorkerSpec.target" in _refused({"name": "w", "target": "m:f\n"})


def test_messages_about_huge_values_stay_short() -> None:
    huge = "z" * 200_000
    for config in ({"name": "w", "argv": ["x"], "restart": huge}, {"name": huge, "argv": ["x"]}, {"name": "w", "argv": ["x"], huge: 1}):
        assert len(_refused(config)) < 1000


def test_text_that_is_not_utf8_is_refused() -> None:
    """Lone surrogates cannot be journaled: found by fuzzing (msgspec raised UnicodeEncodeError on an unknown key)."""
    assert "(the key)" in _refused({"name": "w", "argv": ["x"], "\ud800": None})
    assert "WorkerSpec.restart" in _refused({"name": "w", "argv": ["x"], "restart": "\udcff"})
    assert "WorkerSpec.env['A']" in _refused({"name": "w", "argv": ["x"], "env": {"A": "\udcff"}})
    with pytest.raises(WorkerConfigError, match=r"WorkerSpec\.cwd.*UTF-8"):
        WorkerSpec(name="w", argv=("x",), cwd="/tmp/\udcff")
