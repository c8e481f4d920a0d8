"""Read-only commands are safe on a live host: a writer that commits, retains and rolls segments while readers loop
gives zero false findings."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from typing import Any

import pytest

from shipslog import Engine
from shipslog.tools import main

PASSES = 70
"""Loops of the readers: each runs status, log and verify once (210 passes in all)."""


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue() + out.getvalue()[-500:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readers_looping_beside_a_writer_that_rolls_segments_find_nothing_false(tmp_path: Any) -> None:
    root = os.path.join(tmp_path, "root")
    started, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with Engine.open(root, segment_bytes=4096, snapshot_every=50) as e:
                i = 0
                while not stop.is_set():
                    i += 1
                    with e.checkpoint(f"step-{i}", step=i) as ck:
                        ck.write_bytes("model.bin", b"x" * 100)
                    if i % 5 == 0:
                        e.retain(keep_last=3)
                    if i == 3:
                        started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below, never swallowed
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    false_findings: list[str] = []
    try:
        assert started.wait(60)
        for _ in range(PASSES):
            for argv in (["status", root], ["log", root, "--limit", "3"], ["verify", root]):
                code, text = _run(argv)
                if code != 0:
                    false_findings.append(f"{argv[0]} exited {code}: {text[:1200]}")
    finally:
        stop.set()
        thread.join(60)
    assert failure == []
    segments = os.listdir(os.path.join(root, "journal"))
    assert len(segments) > 3, "the writer did not roll segments while the readers ran"
    assert false_findings == []
