"""The run operation: the data file validated whole before anything is journaled, a cumulative
global step, progress, finish/fail, one run at a time."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest
from _engine_helpers import commit_checkpoint, events_of, journal_records, open_engine, write_jsonl

from shipslog import Engine
from shipslog.engine import (
    MAX_LINE_BYTES,
    ConflictError,
    DataFileError,
    RunFailed,
    RunInterrupted,
    RunStarted,
    RunValidated,
    validate_data_file,
)


@pytest.fixture
def engine(root: str) -> Any:
    e = open_engine(root)
    yield e
    e.close()


GOOD = '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c", "label": 1}\n'


def data_file(tmp_path: Any, text: str | bytes, name: str = "train.jsonl") -> str:
    return write_jsonl(os.path.join(tmp_path, name), text)


# -- validation ------------------------------------------------------------------------------------

BAD_LINES = [
    pytest.param('{"text": "a"}\n{"text": \n{"text": "c"}\n', 2, "not JSON", id="not-json-line-2"),
    pytest.param('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n', 3, "not JSON", id="truncated-json-line-3"),
    pytest.param('{"text": "a"}\n[1, 2]\n', 2, "JSON object", id="array-line-2"),
    pytest.param('"just a string"\n', 1, "JSON object", id="string-line-1"),
    pytest.param('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n42\n', 4, "JSON object", id="number-line-4"),
    pytest.param('{"text": "a"}\nnull\n', 2, "JSON object", id="null-line-2"),
    pytest.param('{"text": "a"}\n\n{"text": "c"}\n', 2, "blank", id="blank-line-2"),
    pytest.param('{"text": "a"}\n   \n{"text": "c"}\n', 2, "blank", id="spaces-line-2"),
    pytest.param('{"text": "a"}\n\n\n{"text": "b"}\n\n', 2, "blank lines may only end the file", id="blanks-then-a-record-line-2"),
    pytest.param('\n{"text": "a"}\n', 1, "blank", id="blank-line-1"),
    pytest.param('{"text": "a"}\n{"other": "b"}\n', 2, "missing required field", id="missing-field-line-2"),
    pytest.param('{"text": "a"}\r\n{"txt": "b"}\r\n', 2, "missing required field", id="crlf-missing-field-line-2"),
    pytest.param(
        b'{"text": "a"}\n{"text": "\xff\xfe"}\n', 2, "not JSON", id="bad-utf8-line-2",
    ),
]


@pytest.mark.parametrize("text", ['{"text": "a"}\n{"text": "b"}\n\n', '{"text": "a"}\n{"text": "b"}\n   \n\n'])
def test_blank_lines_that_end_the_file_are_not_records(tmp_path: Any, text: str) -> None:
    summary = validate_data_file(data_file(tmp_path, text), ["text"])
    assert summary.lines == 2 and summary.size == len(text)


@pytest.mark.parametrize(("text", "line", "reason"), BAD_LINES)
def test_a_bad_line_is_named_and_nothing_is_journaled(engine: Engine, root: str, tmp_path: Any, text: Any, line: int, reason: str) -> None:
    path = data_file(tmp_path, text)
    before = journal_records(root)
    with pytest.raises(DataFileError) as info:
        engine.run(path, required_fields=["text"])
    err = info.value
    assert err.line == line and err.path == path
    assert f"line {line}" in str(err) and reason in str(err)
    assert isinstance(err, ValueError)
    assert journal_records(root) == before
    assert engine.state.runs == {}


def test_a_missing_field_names_the_fields(tmp_path: Any) -> None:
    path = data_file(tmp_path, '{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(DataFileError) as info:
        validate_data_file(path, ["text", "label"])
    assert info.value.line == 2 and "'label'" in str(info.value) and "['text']" in str(info.value)


def test_a_missing_file_is_refused(engine: Engine, root: str, tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "nope.jsonl")
    with pytest.raises(DataFileError, match="does not exist") as info:
        engine.run(path)
    assert info.value.line is None and info.value.path == path
    assert len(journal_records(root)) == 1


def test_an_empty_file_is_refused(engine: Engine, root: str, tmp_path: Any) -> None:
    with pytest.raises(DataFileError, match="empty") as info:
        engine.run(data_file(tmp_path, ""))
    assert info.value.line is None
    assert len(journal_records(root)) == 1


def test_a_folder_is_not_a_data_file(engine: Engine, tmp_path: Any) -> None:
    with pytest.raises(DataFileError, match="not a regular file"):
        engine.run(tmp_path)


def test_a_good_file_is_summarized(tmp_path: Any) -> None:
    path = data_file(tmp_path, GOOD)
    summary = validate_data_file(path, ["text", "label"])
    assert summary.lines == 3 and summary.size == len(GOOD) and summary.crc32 == zlib.crc32(GOOD.encode())
    no_newline = data_file(tmp_path, GOOD.rstrip("\n"), "b.jsonl")
    assert validate_data_file(no_newline).lines == 3


# -- running ------------------------------------------------------------------------------------------


def test_a_run_journals_validated_started_progress_finished(engine: Engine, root: str, tmp_path: Any) -> None:
    path = data_file(tmp_path, GOOD)
    with engine.run(path, required_fields=["text"]) as run:
        assert run.start_step == 0 and run.info.state == "started"
        assert engine.status().training is not None and engine.status().training.op == run.op  # type: ignore[union-attr]
        run.progress(10)
        run.progress(10)
        run.progress(25)
    assert events_of(root, run.op) == ["run.validated", "run.started", "run.progress", "run.progress", "run.progress", "run.finished"]
    validated = next(r.event for r in journal_records(root) if isinstance(r.event, RunValidated))
    assert (validated.data_file, validated.lines, validated.size, validated.crc32) == (path, 3, len(GOOD), zlib.crc32(GOOD.encode()))
    assert validated.required_fields == ["text"]
    recs = [r for r in journal_records(root) if r.event.op == run.op]
    assert recs[0].seq + 1 == recs[1].seq
    info = engine.state.runs[run.op]
    assert (info.state, info.step, info.start_step) == ("finished", 25, 0)
    assert engine.status().training is None


def test_the_global_step_is_cumulative_from_the_newest_checkpoint(engine: Engine, root: str, tmp_path: Any) -> None:
    commit_checkpoint(engine, "step-1000", step=1000)
    commit_checkpoint(engine, "step-200", step=200)  # newer commit, older step
    path = data_file(tmp_path, GOOD)
    with engine.run(path) as run:
        assert run.start_step == 1000 and run.step == 1000
        run.progress(1100)
    started = next(r.event for r in journal_records(root) if isinstance(r.event, RunStarted))
    assert started.start_step == 1000 and started.checkpoint == "checkpoints/step-1000"
    with engine.run(path) as second:
        assert second.start_step == 1000  # no checkpoint since: the committed step, not the run's last step


def test_progress_below_the_last_step_is_refused(engine: Engine, root: str, tmp_path: Any) -> None:
    commit_checkpoint(engine, "step-50", step=50)
    with engine.run(data_file(tmp_path, GOOD)) as run:
        with pytest.raises(ValueError, match=">= 50"):
            run.progress(49)
        run.progress(60)
        before = journal_records(root)
        for bad in (59, -1, 60.5, "61", True):
            with pytest.raises(ValueError):
                run.progress(bad)  # type: ignore[arg-type]
        assert journal_records(root) == before
        with pytest.raises(ValueError):
            run.finish(10)
    assert engine.state.runs[run.op].step == 60


def test_an_exception_in_the_block_fails_the_run_with_its_text(engine: Engine, root: str, tmp_path: Any) -> None:
    with pytest.raises(ZeroDivisionError), engine.run(data_file(tmp_path, GOOD)) as run:
        run.progress(3)
        1 / 0  # noqa: B018
    failed = journal_records(root)[-1].event
    assert type(failed).__name__ == "RunFailed" and failed.op == run.op
    assert failed.error.startswith("ZeroDivisionError") and "division by zero" in failed.error
    assert failed.step == 3
    info = engine.state.runs[run.op]
    assert (info.state, info.error) == ("failed", failed.error)
    assert engine.state.ops_of("run") == []


def test_fail_and_finish_by_hand(engine: Engine, tmp_path: Any) -> None:
    path = data_file(tmp_path, GOOD)
    run = engine.run(path)
    run.fail("out of memory")
    assert engine.state.runs[run.op].error == "out of memory"
    with pytest.raises(ValueError, match="already failed"):
        run.progress(1)
    run2 = engine.run(path)
    run2.finish(7)
    assert engine.state.runs[run2.op].step == 7
    with pytest.raises(ValueError, match="already finished"):
        run2.finish()


def test_a_second_run_while_one_is_in_progress_is_a_conflict(engine: Engine, root: str, tmp_path: Any) -> None:
    path = data_file(tmp_path, GOOD)
    with engine.run(path) as run:
        before = journal_records(root)
        with pytest.raises(ConflictError) as info:
            engine.run(path)
        assert run.op in str(info.value)
        assert journal_records(root) == before
    with engine.run(path):  # free again once the first finished
        pass


def test_required_fields_as_one_string(engine: Engine, tmp_path: Any) -> None:
    with pytest.raises(DataFileError) as info:
        engine.run(data_file(tmp_path, '{"text": 1}\n{"label": 2}\n'), required_fields="text")
    assert info.value.line == 2


def test_validated_to_failed_and_validated_to_interrupted_through_the_engine(engine: Engine, root: str) -> None:
    engine.journal_events(RunValidated(op="run-a", data_file="/d.jsonl", lines=1, size=2, crc32=3))
    engine.journal_events(RunFailed(op="run-a", step=0, error="tokenizer missing"))
    assert engine.state.runs["run-a"].state == "failed" and engine.state.runs["run-a"].error == "tokenizer missing"
    engine.journal_events(RunValidated(op="run-b", data_file="/d.jsonl", lines=1, size=2, crc32=3))
    engine.journal_events(RunInterrupted(op="run-b", step=0, reason="preempted"))
    assert engine.state.runs["run-b"].state == "interrupted"
    assert events_of(root, "run-a") == ["run.validated", "run.failed"]
    assert events_of(root, "run-b") == ["run.validated", "run.interrupted"]
    assert engine.state.ops_of("run") == []


# -- hostile data files: every byte is untrusted, every line bounded --------------------------------------------


def _bad_line(tmp_path: Any, data: bytes) -> DataFileError:
    """The DataFileError that validating a file of ``data`` raises (fails the test on anything else)."""
    path = data_file(tmp_path, data)
    with pytest.raises(DataFileError) as info:
        validate_data_file(path, ["text"])
    assert info.value.path == path
    return info.value


def test_deeply_nested_data_line_is_a_data_file_error(tmp_path: Any) -> None:
    err = _bad_line(tmp_path, b'{"text": "a"}\n{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    assert err.line == 2 and "line 2" in str(err) and "nests more than 64 levels deep" in str(err)


def test_data_line_nested_just_past_the_limit_is_refused(tmp_path: Any) -> None:
    ok = b'{"text": ' + b"[" * 63 + b"]" * 63 + b"}\n"  # 64 levels, the object included
    assert validate_data_file(data_file(tmp_path, ok, "ok.jsonl"), ["text"]).lines == 1
    err = _bad_line(tmp_path, ok + b'{"text": ' + b"[" * 64 + b"]" * 64 + b"}\n")
    assert err.line == 2 and "nests more than 64 levels deep" in str(err)


def test_overlong_data_line_is_a_data_file_error(tmp_path: Any) -> None:
    limit = MAX_LINE_BYTES  # the real limit (64 MiB): the files below are written for real
    exactly = b'{"text": "' + b"a" * (limit - 13) + b'"}\n'  # the limit with its newline: allowed
    assert len(exactly) == limit
    assert validate_data_file(data_file(tmp_path, exactly, "ok.jsonl"), ["text"]).lines == 1
    del exactly
    err = _bad_line(tmp_path, b'{"text": "a"}\n{"text": "' + b"a" * (limit - 12) + b'"}\n{"text": "c"}\n')  # one byte over
    assert err.line == 2 and f"longer than {limit} bytes" in str(err)
    err = _bad_line(tmp_path, b'{"text": "a"}\n' + b"b" * (limit + 1))  # no newline at all
    assert err.line == 2 and f"longer than {limit} bytes" in str(err)


def test_nul_byte_in_data_line_is_a_data_file_error(tmp_path: Any) -> None:
    for data in (b'{"text": "a"}\n{"text": "b\x00"}\n', b'{"text": "a"}\n\x00\n', b'{"text": "a"}\n{"text": "b"}\x00\n'):
        err = _bad_line(tmp_path, data)
        assert err.line == 2 and "not JSON" in str(err)


def test_invalid_utf8_in_data_line_is_a_data_file_error(tmp_path: Any) -> None:
    for data in (b'{"text": "a"}\n{"text": "\xc3"}\n', b'{"text": "a"}\n{"te\xffxt": "b"}\n', b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n'):
        err = _bad_line(tmp_path, data)
        assert err.line == 2 and "not JSON" in str(err)


def test_non_object_data_line_is_a_data_file_error(tmp_path: Any) -> None:
    for data, found in ((b'{"text": "a"}\n[1,2]\n', "list"), (b'{"text": "a"}\n3', "int"), (b'{"text": "a"}\ntrue\n', "bool")):
        err = _bad_line(tmp_path, data)
        assert err.line == 2 and f"expected a JSON object, found {found}" in str(err)


def test_a_line_with_many_keys_gives_a_short_message(tmp_path: Any) -> None:
    keys = ",".join(f'"{"k" * 1000}{i}": 1' for i in range(500))
    err = _bad_line(tmp_path, ("{" + keys + "}\n").encode())
    assert err.line == 1 and "missing required field(s) ['text']" in str(err) and "(500 keys)" in str(err)
    assert len(str(err)) < 10_000


def test_a_fifo_is_refused_without_blocking(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "fifo.jsonl")
    os.mkfifo(path)
    with pytest.raises(DataFileError, match="not a regular file") as info:
        validate_data_file(path)
    assert info.value.line is None


def test_an_unopenable_path_is_a_data_file_error(tmp_path: Any) -> None:
    parent = data_file(tmp_path, GOOD)
    with pytest.raises(DataFileError, match="cannot be opened") as info:
        validate_data_file(os.path.join(parent, "child.jsonl"))  # a regular file used as a folder
    assert info.value.line is None and not isinstance(info.value, OSError)
    with pytest.raises(DataFileError, match="NUL"):
        validate_data_file(os.path.join(tmp_path, "a\x00b.jsonl"))
