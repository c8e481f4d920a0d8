"""The demo: a real LoRA training host, killed at a crash point, recovers and loses no committed learning."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from _engine_helpers import journal_records, kind_of
from _workers_helpers import no_stray_children  # noqa: F401  (a fixture)

from shipslog.engine import replay
from shipslog.tools import DemoDataError, main, make_inbox, prepare_inbox, run_demo


def _loss_rows(folder: str) -> list[tuple[int, float, int]]:
    with open(os.path.join(folder, "loss.tsv"), encoding="utf-8") as f:
        return [(int(step), float(loss), int(pid)) for step, loss, pid in (line.split("\t") for line in f)]


def _kinds(root: str) -> list[str]:
    return [kind_of(r.event) for r in journal_records(root)]


# -- the loader worker (no subprocess) -------------------------------------------------------


def test_loader_prepares_its_shard_of_the_inbox_as_float32_arrays_and_exits_when_idle(tmp_path: str) -> None:
    folder = str(tmp_path)
    make_inbox(os.path.join(folder, "inbox"), 3)
    assert prepare_inbox(folder, "0", "2", "0.01", "0") == 0
    assert sorted(os.listdir(os.path.join(folder, "prepared"))) == ["data-000.npy", "data-002.npy"]
    data = np.load(os.path.join(folder, "prepared", "data-002.npy"), allow_pickle=False)
    assert data.dtype == np.float32 and data.shape == (256, 9)
    with open(os.path.join(folder, "inbox", "data-002.jsonl"), "rb") as f:
        first = json.loads(f.readline())
    assert data[0].tolist() == pytest.approx([*first["x"], first["y"]], rel=1e-6)


def test_loader_removes_its_shards_leftover_temporary_files_and_keeps_the_other_shards(tmp_path: str) -> None:
    folder = str(tmp_path)
    make_inbox(os.path.join(folder, "inbox"), 2)
    os.makedirs(os.path.join(folder, "prepared"))
    for leftover in ("data-000.npy.123.tmp", "data-001.npy.456.tmp"):
        with open(os.path.join(folder, "prepared", leftover), "wb") as f:
            f.write(b"half a file")
    prepare_inbox(folder, "0", "2", "0.01", "0")
    assert sorted(os.listdir(os.path.join(folder, "prepared"))) == ["data-000.npy", "data-001.npy.456.tmp"]


def test_loader_refuses_a_bad_row_naming_the_file_and_line_and_prepares_nothing(tmp_path: str) -> None:
    folder = str(tmp_path)
    make_inbox(os.path.join(folder, "inbox"), 1)
    path = os.path.join(folder, "inbox", "data-000.jsonl")
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"x": [1, 2], "y": 3}\n')
    with pytest.raises(DemoDataError, match=r"data-000.jsonl line 257: expected .*x has 2 numbers"):
        prepare_inbox(folder, "0", "1", "0.01", "0")
    assert os.listdir(os.path.join(folder, "prepared")) == []


# -- the whole demo (two host processes each) ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.usefixtures("no_stray_children")
def test_demo_killed_after_a_durable_checkpoint_rolls_it_forward_and_redoes_the_lost_steps_identically(
    tmp_path: str
) -> None:
    folder = os.path.join(tmp_path, "demo")
    lines, summary = run_demo(folder, crash_at="checkpoint.after_durable@12", files=4)
    assert summary["crashed"] is True
    assert summary["committed_step_at_crash"] == 450  # step-500 was durable in staging, not committed
    assert summary["resumed_from_step"] == 500  # recovery rolled it forward
    assert summary["trained_step_at_crash"] >= 500
    assert summary["redone_losses_match"] is True
    assert summary["global_step"] == 800 and summary["unclean_sessions"] == 1
    rows = _loss_rows(folder)
    first_pid, second_pid = rows[0][2], rows[-1][2]
    assert [s for s, _, p in rows if p == first_pid] == list(range(1, summary["trained_step_at_crash"] + 1))
    assert [s for s, _, p in rows if p == second_pid] == list(range(501, 801))
    root = os.path.join(folder, "host")
    state = replay(root)
    assert not state.ops
    assert state.pointers["current"].target == "models/base-800"
    assert sorted(state.models) == ["base-400", "base-800"]  # base-0 retired by retention (keep 2 models)
    assert sorted(state.checkpoints) == ["step-700", "step-750", "step-800"]
    assert state.adapters == {}  # both adapters were merged, retired, then deleted
    assert not os.listdir(os.path.join(root, "adapters"))
    kinds = _kinds(root)
    assert kinds.count("consolidation.committed") == 2 and kinds.count("checkpoint.roll-forward") == 0
    assert kinds.count("worker.stopped") >= 2  # the first host's loaders, stopped by recovery
    text = "\n".join(lines)
    assert "checkpoint.roll-forward" in text and "staged copy verifies" in text
    assert "worker.settle" in text and "was alive: terminated" in text
    assert "trained again, the losses match the first time to the last digit" in text


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.usefixtures("no_stray_children")
def test_demo_killed_mid_consolidation_finishes_the_merge_and_moves_the_pointer_once(tmp_path: str) -> None:
    folder = os.path.join(tmp_path, "demo")
    lines, summary = run_demo(folder, crash_at="consolidation.after_installed@1", files=2)
    assert summary["crashed"] is True and summary["committed_step_at_crash"] == 400
    assert summary["redone_steps"] == 0 and summary["global_step"] == 400
    root = os.path.join(folder, "host")
    state = replay(root)
    assert not state.ops and state.pointers["current"].target == "models/base-400"
    kinds = _kinds(root)
    assert kinds.count("consolidation.begun") == 1 and kinds.count("consolidation.committed") == 1
    assert "consolidation.roll-forward" in "\n".join(lines)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.usefixtures("no_stray_children")
def test_demo_killed_during_recovery_recovers_the_recovery_and_reports_what_the_killed_one_did(
    tmp_path: str
) -> None:
    folder = os.path.join(tmp_path, "demo")
    lines, summary = run_demo(folder, crash_at="recovery.after_effect@1", files=3)
    assert summary["crashed"] is True and summary["recovery_crashed"] is True
    assert summary["resumed_from_step"] == 500 and summary["global_step"] == 600 and summary["unclean_sessions"] == 2
    root = os.path.join(folder, "host")
    state = replay(root)
    assert not state.ops and max(state.checkpoints) == "step-600"
    assert _kinds(root).count("recovery.superseded") == 1
    text = "\n".join(lines)
    assert "killed during recovery" in text and "journaled recovery.superseded" in text
    assert "(not done)" not in text


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.usefixtures("no_stray_children")
def test_demo_command_prints_the_story_then_the_status_of_the_result(
    tmp_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = os.path.join(tmp_path, "demo")
    assert main(["demo", folder, "--files", "2", "--crash-at", "checkpoint.after_manifest@3"]) == 0
    out = capsys.readouterr().out
    assert out.index("1. the host runs") < out.index("2. the host starts again") < out.index("3. the loss curve")
    assert "checkpoint.roll-back" in out
    assert "pointer     current -> models/base-400" in out  # the status of the result, last


def test_demo_refuses_an_unknown_crash_point_and_lists_the_known_ones(tmp_path: str) -> None:
    with pytest.raises(ValueError, match=r"known points: .*checkpoint\.after_durable"):
        run_demo(os.path.join(tmp_path, "demo"), crash_at="no.such.point")
    assert not os.path.exists(os.path.join(tmp_path, "demo"))


def test_demo_refuses_a_bad_hit_number(tmp_path: str) -> None:
    with pytest.raises(ValueError, match="NAME@N with N a hit number of 1 or more"):
        run_demo(os.path.join(tmp_path, "demo"), crash_at="checkpoint.after_durable@0")
    assert not os.path.exists(os.path.join(tmp_path, "demo"))


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.usefixtures("no_stray_children")
def test_demo_whose_loader_meets_bad_data_fails_with_one_line_naming_the_host_log(
    tmp_path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    folder = os.path.join(tmp_path, "demo")

    class SpoilsTheInbox(io.StringIO):
        """stdout that, at the demo's first line (the inbox is written, no host has started), spoils data-001.jsonl."""

        spoiled = False

        def write(self, text: str) -> int:
            if not self.spoiled:
                self.spoiled = True
                with open(os.path.join(folder, "inbox", "data-001.jsonl"), "a", encoding="utf-8") as f:
                    f.write("not json\n")
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", SpoilsTheInbox())
    assert main(["demo", folder, "--files", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("shipslog: error: the training host failed before the crash it was armed for (exit status 1)")
    assert "a loader worker failed before data-001.jsonl was prepared" in err
    assert err.endswith(f"its whole output is in {os.path.join(folder, 'host-1.log')}")
    with open(os.path.join(folder, "host-1.log"), encoding="utf-8") as f:
        assert "data-001.jsonl line 257: expected" in f.read()  # the loader's own error, in the log
    assert "worker.failed" in _kinds(os.path.join(folder, "host"))
