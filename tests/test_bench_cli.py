"""``shipslog bench journal`` and ``shipslog bench engine``: short runs print every figure, as a table or JSON,
clean up after themselves, and refuse bad arguments with exit 2."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

import pytest

from shipslog.tools import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _journal_argv(folder: str) -> list[str]:
    return ["bench", "journal", "--dir", folder, "--records", "20", "--replay-events", "200", "--threads", "2", "--rounds", "2"]


def test_bench_journal_json_has_every_rate_ratio_and_target_and_leaves_nothing_behind(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *_journal_argv(str(tmp_path)), "--json")
    assert code == 0
    result = json.loads(out)
    for key in ("prealloc_fdatasync_per_s", "raw_fdatasync_per_s", "sqlite_wal_full_per_s", "journal_append_per_s", "group_commit_per_s", "replay_events_per_s"):
        assert result[key] > 0
    assert set(result["ratios"]) >= {"journal_vs_prealloc", "journal_vs_raw", "journal_vs_sqlite", "group_vs_single", "group_32_vs_8",
                                     "damage_1m_vs_128k"}
    assert set(result["targets"]) >= {"journal_vs_prealloc_ge_0_9", "journal_vs_sqlite_ge_1_3", "group_vs_single_ge_5", "group_32_not_below_8",
                                      "replay_ge_1m", "damage_1m_le_10x_128k"}
    by_threads = result["group_commit_per_s_by_threads"]
    assert set(by_threads) == {"2", "8", "32"} and all(rate > 0 for rate in by_threads.values())
    assert result["group_commit_per_s"] == by_threads["2"] and result["rounds"] == 2
    per_round = result["rounds_per_s"]  # every side-by-side ratio is the median of the rounds' ratios
    assert set(per_round) == {"floor", "single", "raw", "sqlite", "group-2", "group-8", "group-32"}
    assert all(len(rates) == 2 for rates in per_round.values())
    for ratio, (numerator, denominator) in {"journal_vs_prealloc": ("single", "floor"), "journal_vs_raw": ("single", "raw"),
                                            "journal_vs_sqlite": ("single", "sqlite"), "group_vs_single": ("group-2", "single"),
                                            "group_32_vs_8": ("group-32", "group-8")}.items():
        wanted = statistics.median(n / d for n, d in zip(per_round[numerator], per_round[denominator]))
        assert result["ratios"][ratio] == pytest.approx(wanted, rel=0.01, abs=0.002), ratio
    assert result["append_cpu_us"] > 0 and result["floor_cpu_us"] > 0
    assert list(result["cpu_us_per_append_by_threads"]) == ["1", "2", "8", "32"]
    assert all(us > 0 for us in result["cpu_us_per_append_by_threads"].values())
    assert result["damage_scan_s_128k"] > 0 and result["damage_scan_s_1m"] > 0
    assert result["replay_events"] >= 200
    assert os.listdir(tmp_path) == []


def test_bench_journal_table_shows_each_measure_and_a_verdict_per_target(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *_journal_argv(str(tmp_path)))
    assert code == 0
    assert out.startswith(f"shipslog bench journal in {tmp_path}: 20 records, 2 threads, 200 replay events")
    for label in ("raw write + fdatasync", "sqlite WAL synchronous=FULL", "journal append", "group commit (2 threads)",
                  "group commit (8 threads)", "group commit (32 threads)"):
        assert label in out
    verdicts = [line.split()[-1] for line in out.splitlines()
                if line.strip().startswith(("journal append /", "group commit /", "group commit 32", "journal replay", "damage scan"))]
    assert len(verdicts) == 6 and set(verdicts) <= {"PASS", "MISS"}
    assert "CPU of one append, fsync off: journal " in out


def test_bench_engine_json_has_replay_open_and_checkpoint_figures(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "bench", "engine", "--dir", str(tmp_path), "--records", "20000", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["replay_events"] >= 20000 and result["replay_events_per_s"] > 0
    assert result["open_ms_10k"] > 0 and result["open_ms_1m"] > 0 and result["fsync_ms"] > 0
    assert result["status_ms_1m"] > 0
    assert result["ratios"]["status_1m_vs_open_1m"] == pytest.approx(result["status_ms_1m"] / result["open_ms_1m"], rel=0.01)
    assert result["ratios"]["checkpoint_vs_fsync"] == pytest.approx(result["checkpoint_empty_ms"] / result["fsync_ms"], rel=0.01)
    assert result["ratios"]["checkpoint_vs_syncs"] > 0  # the median of the pairs' ratios, near the ratio of the medians
    assert result["syncs_per_checkpoint"] >= 3
    assert result["syncs_per_checkpoint"] == 7  # manifest, its folder, staging/, three journal syncs, checkpoints/
    assert set(result["targets"]) == {"replay_ge_1m", "open_ms_1m_le_50", "open_1m_le_1_5x_10k", "checkpoint_le_1_3x_syncs"}
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "journal", "--dir", "/no/such/folder"], "--dir '/no/such/folder' is not a folder"),
        (["bench", "journal", "--records", "4", "--threads", "8"], "--records (4) must be at least --threads (8)"),
        (["bench", "journal", "--records", "0"], "expected a number of 1 or more, got 0"),
        (["bench", "engine", "--records", "100"], "--records must be at least 20000"),
        (["bench", "engine", "--dir", "/no/such/folder"], "--dir '/no/such/folder' is not a folder"),
        (["bench"], "the following arguments are required: BENCH"),
    ],
    ids=["journal-dir", "journal-records-threads", "journal-records-zero", "engine-records", "engine-dir", "no-bench"],
)
def test_bench_refuses_bad_arguments_with_exit_2_and_one_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err


def test_the_preallocated_floor_does_the_journal_s_durable_work_syncs_and_bytes(tmp_path: Any) -> None:
    """The baseline cannot get cheaper unnoticed: per append it syncs as often and writes as many bytes as the journal."""
    from shipslog.journal import Journal, RecordingFileSystem
    from shipslog.tools import bench_prealloc_fdatasync, frame_bytes, make_event

    events = [make_event(i) for i in range(50)]
    journal_fs = RecordingFileSystem()
    with Journal.open(str(tmp_path / "journal"), fs=journal_fs) as journal:
        before_syncs, before_bytes = journal_fs.count("fdatasync"), _written(journal_fs)
        for event in events:
            journal.append(event)
        syncs, written = journal_fs.count("fdatasync") - before_syncs, _written(journal_fs) - before_bytes
    floor_fs = RecordingFileSystem()
    (tmp_path / "floor").mkdir()
    bench_prealloc_fdatasync(str(tmp_path / "floor"), [bytes(frame_bytes(events[0]))] * 50, 0, fs=floor_fs)
    assert floor_fs.count("fdatasync") - 1 == syncs == 50  # one more: the reservation, as a new segment's
    assert _written(floor_fs) == written
    assert floor_fs.count("preallocate") == 1


def _written(fs: Any) -> int:
    return sum(op.size for op in fs.ops if op.op == "write")


@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_bench_all_prints_one_object_with_every_bench_and_every_target_s_verdict(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "bench", "all", "--quick", "--json", "--dir", str(tmp_path))
    assert code == 0
    result = json.loads(out)
    ran = set(result["benches"]) | set(result["skipped"])
    assert ran == {"journal", "engine", "checkpoint", "distributed", "workers"}
    for name, bench in result["benches"].items():
        assert set(bench["targets"]) == {v["target"] for v in bench["verdicts"]}, name
        assert all(v["verdict"] == ("PASS" if bench["targets"][v["target"]] else "MISS") for v in bench["verdicts"])
    assert len(result["verdicts"]) == sum(len(b["verdicts"]) for b in result["benches"].values())
    assert result["missed"] == [f"{v['bench']}.{v['target']}" for v in result["verdicts"] if v["verdict"] == "MISS"]
    assert os.listdir(tmp_path) == []
