"""``shipslog demo``: a real training host that is killed at a crash point and recovers.

The host (:mod:`shipslog.tools._demo_host`) trains a small torch model over
an inbox of generated JSONL files, checkpointing through the engine.  The demo
runs it as a child process armed to die at a crash point (SIGKILL, no
clean-up), shows what recovery will do (read-only plan), starts the host
again (which recovers on open and resumes from the newest committed
checkpoint), and reports what recovery did and where the loss curve resumed.
Nothing here prints; :func:`run_demo` returns the lines to show.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from typing import Any

import msgspec

from shipslog.journal import CRASH_AT_ENV, registered_crash_points

from ._demo_host import CHECKPOINT_EVERY, FEATURES, STEPS_PER_FILE

__all__ = ["DEFAULT_CRASH_AT", "make_inbox", "run_demo"]

DEFAULT_CRASH_AT = "checkpoint.after_durable@3"
"""The crash the demo chooses: the third checkpoint is durable in staging but not yet committed."""

_ROWS = 256


def make_inbox(folder: str, files: int, seed: int = 0) -> list[str]:
    """Write ``files`` JSONL files of a noisy linear regression task into ``folder``; return their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    weights = [rng.uniform(-1, 1) for _ in range(FEATURES)]
    paths = []
    for i in range(files):
        path = os.path.join(folder, f"data-{i:03d}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(_ROWS):
                x = [rng.gauss(0, 1) for _ in range(FEATURES)]
                y = sum(w * v for w, v in zip(weights, x)) + rng.gauss(0, 0.05)
                f.write(msgspec.json.encode({"x": x, "y": y}).decode() + "\n")
        paths.append(path)
    return paths


def _host(folder: str, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(CRASH_AT_ENV, None)
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "shipslog.tools._demo_host", folder], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _losses(folder: str) -> list[tuple[int, float, int]]:
    path = os.path.join(folder, "loss.tsv")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            step, loss, pid = line.split("\t")
            rows.append((int(step), float(loss), int(pid)))
    return rows


def run_demo(folder: str, *, crash_at: str | None = None, files: int = 3) -> tuple[list[str], dict[str, Any]]:
    """Run the demo in ``folder``; return (lines to print, summary)."""
    import shipslog
    from shipslog.recovery import list_root, plan

    import shipslog.recovery  # noqa: F401  (registers the recovery crash points)

    point = crash_at or DEFAULT_CRASH_AT
    name = point.partition("@")[0]
    known = registered_crash_points()
    if name not in known:
        raise ValueError(f"unknown crash point {name!r}; known points: {', '.join(sorted(known))}")
    os.makedirs(folder, exist_ok=True)
    make_inbox(os.path.join(folder, "inbox"), files)
    root = os.path.join(folder, "host")
    lines = [
        f"shipslog demo in {folder}",
        f"  inbox: {files} JSONL files of {_ROWS} rows; {STEPS_PER_FILE} steps per file, a checkpoint every {CHECKPOINT_EVERY}",
        f"  1. the training host runs and is killed at {point!r} ({known[name]})",
    ]
    t0 = time.monotonic()
    first = _host(folder, point)
    crashed = first.returncode != 0
    before = _losses(folder)
    state = shipslog.replay(root) if os.path.isdir(os.path.join(root, "journal")) else None
    committed = state.global_step if state is not None else 0
    lines.append(
        f"     host exit status {first.returncode} ({'killed' if crashed else 'finished: the point was not reached'}); "
        f"trained to step {before[-1][0] if before else 0}, newest committed checkpoint at step {committed}"
    )
    if state is not None:
        actions = plan(state, list_root(root))
        lines.append(f"  2. what recovery will do ({len(actions)} action(s), read-only plan):")
        lines += [f"     - {a.describe()}" for a in actions]
    lines.append("  3. the host starts again: Engine.open recovers, training resumes from the newest committed checkpoint")
    second = _host(folder, None)
    if second.returncode != 0:
        raise RuntimeError(f"the restarted host failed (exit {second.returncode}):\n{second.stderr}")
    after = _losses(folder)
    resumed = after[len(before):]
    final = shipslog.replay(root)
    start = resumed[0][0] - 1 if resumed else final.global_step
    trained = before[-1][0] if before else 0
    redone = f"steps {start + 1}..{trained} trained after it were redone" if trained > start else "no step had to be redone"
    lines.append(
        f"     resumed at step {start}, the newest committed checkpoint after recovery "
        f"(it was {committed} before recovery); {redone}; nothing committed was lost"
    )
    if resumed and before:
        lines.append(
            f"     loss at the crash {before[-1][1]:.4f} (step {before[-1][0]}); after resuming {resumed[0][1]:.4f} "
            f"(step {resumed[0][0]}); final {after[-1][1]:.4f} (step {after[-1][0]})"
        )
    st = final
    lines += [
        "  4. status:",
        f"     global step {st.global_step}, newest checkpoint {st.latest}, pointer current -> {st.pointers['current'].target if 'current' in st.pointers else None}",
        f"     unclean shutdowns recorded: {st.unclean_sessions}; runs: "
        + ", ".join(f"{os.path.basename(r.data_file)} {r.state} at {r.step}" for r in sorted(st.runs.values(), key=lambda r: r.first_seq)),
        f"  done in {time.monotonic() - t0:.1f} s; inspect it with: shipslog status {root}",
    ]
    summary = {
        "dir": folder,
        "crash_at": point,
        "crashed": crashed,
        "committed_step_at_crash": committed,
        "trained_step_at_crash": before[-1][0] if before else 0,
        "resumed_from_step": start,
        "global_step": st.global_step,
        "unclean_sessions": st.unclean_sessions,
    }
    return lines, summary
