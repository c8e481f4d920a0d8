"""``shipslog recover`` (the plan as a table, --dry-run, --json, exit codes 0/1/2) and ``shipslog torture``'s argument checks."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from _cli_helpers import cli, keep_logging  # noqa: F401  (keep_logging: autouse fixture)
from _engine_helpers import (
    commit_checkpoint,
    crash,
    flip_bit,
    journal_records,
    kinds,
    open_engine,
    tree,
    truncate,
)
from _helpers import frames, segments
from test_recovery_faults import left_durable

from shipslog.tools import main


def everything(root: str) -> dict[str, Any]:
    """Every byte under the root, the journal included (LOCK is rewritten by any opener and left empty)."""
    return tree(root, skip=("LOCK",))


def root_with_work(root: str) -> str:
    """A durable checkpoint cut off before its rename and a stray staging folder; returns the checkpoint's op."""
    op, _staging = left_durable(root)
    os.makedirs(os.path.join(root, "staging", "stray"))
    return op


def test_recover_a_clean_root_has_nothing_to_do(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_engine(root):
        pass
    code, out, err = cli(capsys, "recover", root)
    assert code == 0, err
    assert "nothing to recover" in out and "every invariant holds" in out


def test_recover_dry_run_prints_the_plan_as_a_table_and_changes_nothing(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    op = root_with_work(root)
    before = everything(root)
    code, out, err = cli(capsys, "recover", "--dry-run", root)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.strip().startswith("operation"))
    assert header.split() == ["operation", "type", "state", "action", "reason"]
    rows = {line.split()[0]: line for line in lines[lines.index(header) + 1 :] if line.strip()}
    assert "durable" in rows[op] and "checkpoint.roll-forward" in rows[op] and "checkpoint" in rows[op]
    assert "quarantine" in rows["staging/stray"] and "no journal record accounts for it" in rows["staging/stray"]
    session_row = next(row for key, row in rows.items() if key.startswith("session-"))
    assert "opened" in session_row and "session.crashed" in session_row
    assert "dry run: nothing was changed" in out and "done:" not in out
    assert everything(root) == before


def test_recover_carries_the_plan_out_and_a_second_run_has_nothing_to_do(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    op = root_with_work(root)
    code, out, err = cli(capsys, "recover", root)
    assert code == 0, err
    assert "done:" in out and f"{op}: checkpoint.roll-forward: staged copy verifies" in out
    assert "quarantined: quarantine/" in out and "every invariant holds" in out
    assert os.path.isdir(os.path.join(root, "checkpoints", "step-5"))
    assert kinds(root)[-2:] == ["recovery.done", "session.closed"]
    code, out, _err = cli(capsys, "recover", root)
    assert code == 0 and "nothing to recover" in out


def test_recover_json(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    op = root_with_work(root)
    code, out, _err = cli(capsys, "recover", "--json", root)
    assert code == 0
    result = json.loads(out)
    assert result["root"] == os.path.abspath(root) and result["dry_run"] is False
    assert [(row["operation"], row["state"]) for row in result["plan"]][1:] == [(op, "durable"), ("staging/stray", "-")]
    assert [d["action"] for d in result["done"]] == ["close", "checkpoint.roll-forward", "quarantine"]
    assert len(result["quarantined"]) == 1 and result["violations"] == []


def test_recover_exits_1_when_violations_remain(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "step-1", step=1)
    truncate(os.path.join(root, "checkpoints", "step-1", "model.bin"), 2)
    code, out, _err = cli(capsys, "recover", root)
    assert code == 1
    assert "1 violation(s) remain" in out and "checkpoints-verify" in out and "step-1" in out


def test_recover_a_locked_root_names_the_holder_and_exits_2(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_engine(root):
        before = journal_records(root)
        code, out, err = cli(capsys, "recover", "--dry-run", root)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("shipslog: error: ")
        assert f"pid {os.getpid()}" in err and "held by" in err
        assert journal_records(root) == before


def test_recover_refuses_a_corrupt_journal_with_its_offset_and_changes_nothing(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    e = open_engine(root)
    for i in range(1, 4):
        commit_checkpoint(e, f"step-{i}", step=i)
    e.checkpoint("cut-off", step=9).write_bytes("model.bin", b"x")
    crash(e)
    path = segments(root)[0]
    offset, length = frames(path)[2]
    flip_bit(path, offset + 8 + length // 2)
    before = tree(root, skip=())
    for argv in (["recover", "--dry-run", root], ["recover", root]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == ""
        assert f"offset {offset}" in err or str(offset) in err, err
        assert os.path.basename(path) in err
        assert tree(root, skip=()) == before


@pytest.mark.parametrize("make", ["missing", "empty-folder", "a-file"])
def test_recover_refuses_a_folder_that_is_not_a_root_and_creates_nothing(tmp_path: Any, capsys: pytest.CaptureFixture[str], make: str) -> None:
    target = os.path.join(tmp_path, "not-a-root")
    if make == "empty-folder":
        os.mkdir(target)
    elif make == "a-file":
        with open(target, "wb") as f:
            f.write(b"x")
    before = tree(tmp_path, skip=())
    code, out, err = cli(capsys, "recover", target)
    assert code == 2 and out == ""
    assert "is not a shipslog root" in err and "nothing was created" in err
    assert tree(tmp_path, skip=()) == before


def test_torture_refuses_unknown_operations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["torture", "--ops", "checkpoint,bogus"])
    assert info.value.code == 2
    assert "bogus" in capsys.readouterr().err
