"""Data-file validation streams the file and reports progress; ``shipslog validate`` runs it from the command line."""

from __future__ import annotations

import json
import os

import pytest
from _cli_helpers import cli

from shipslog.engine import DataFileError, validate_data_file


def _data_file(path: str, mib: int) -> int:
    line = json.dumps({"text": "x" * 1000}).encode() + b"\n"
    with open(path, "wb") as f:
        f.writelines(line for _ in range(mib * 1024 * 1024 // len(line) + 1))
    return os.path.getsize(path)


def test_validation_reports_progress_in_steps_that_add_up_to_the_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "train.jsonl")
    size = _data_file(path, 17)
    seen: list[int] = []
    summary = validate_data_file(path, ["text"], on_progress=seen.append)
    assert summary.size == size
    assert sum(seen) == size and len(seen) >= 3
    assert max(seen) < 9 << 20  # streamed: reported about every 8 MiB, never the whole file at once


def test_validation_that_fails_reports_no_more_than_it_read(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "train.jsonl")
    size = _data_file(path, 9)
    with open(path, "ab") as f:
        f.write(b"not json\n")
    seen: list[int] = []
    with pytest.raises(DataFileError):
        validate_data_file(path, on_progress=seen.append)
    assert sum(seen) <= size


def test_the_validate_command_names_the_bad_line_and_exits_1(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(str(tmp_path), "train.jsonl")
    with open(path, "w") as f:
        f.write('{"text": "a"}\n{"text": "b"}\n{"other": 1}\n')
    code, out, err = cli(capsys, "validate", path, "--field", "text", "--json")
    assert code == 1 and json.loads(out)["line"] == 3 and err == ""
    code, _out, err = cli(capsys, "validate", path, "--field", "text")
    assert code == 1 and "line 3" in err and "missing required field" in err and err.count("\n") == 1
    code, out, _err = cli(capsys, "validate", path, "--json")
    assert code == 0 and json.loads(out)["lines"] == 3
