"""``shipslog demo``: a real training host that is killed at a crash point and recovers.

The host (:mod:`shipslog.tools._demo_host`) trains a LoRA adapter over an
inbox of generated JSONL files, with data prepared by supervised loader
workers, async checkpoints, periodic consolidation of the adapter into a new
base model (moving the ``current`` pointer) and retention.  The demo runs it
as a child process armed to die at a crash point (SIGKILL, no clean-up),
reads what recovery will do (the read-only plan), starts the host again
(which recovers on open and resumes from the newest committed checkpoint),
and reports, side by side, what recovery found and what it did, and the loss
curve before and after the crash.  Nothing here prints; :func:`run_demo`
returns the lines to show and a summary.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from shipslog.journal import CRASH_AT_ENV, ShipslogError, registered_crash_points

from ._demo_host import (
    CHECKPOINT_EVERY,
    CONSOLIDATE_EVERY,
    FEATURES,
    KEEP_CHECKPOINTS,
    LOADERS,
    POINTER,
    RANK,
    STEPS_PER_FILE,
)
from ._render import plain_table

__all__ = ["DEFAULT_CRASH_AT", "DEFAULT_FILES", "DemoError", "make_inbox", "run_demo"]

DEFAULT_CRASH_AT = "checkpoint.after_durable@12"
"""The crash the demo chooses: a checkpoint after the first consolidation is durable in staging, not yet committed."""

DEFAULT_FILES = 6
_ROWS = 256
_HOST_TIMEOUT_S = 300
_RECOVERY_POINTS = ("recovery.",)


class DemoError(ShipslogError, RuntimeError):
    """The demo's training host failed in a way that is not the crash it was armed for (its log is named)."""


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


def _host(folder: str, crash_at: str | None, log_name: str) -> subprocess.CompletedProcess[bytes]:
    """Run the host to its end (or its crash); its output (and its workers') goes to ``folder/log_name``.

    A file, not a pipe: loader workers outlive a killed host until recovery
    stops them, and a pipe they hold open would keep this call waiting.
    """
    env = dict(os.environ)
    env.pop(CRASH_AT_ENV, None)
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    folder = os.path.abspath(folder)
    with open(os.path.join(folder, log_name), "ab") as log:
        return subprocess.run(
            [sys.executable, "-m", "shipslog.tools._demo_host", folder],
            cwd=folder,  # never the caller's folder: a folder named shipslog there would shadow the installed package
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=_HOST_TIMEOUT_S,
            check=False,
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


def _starts(folder: str) -> list[dict[str, Any]]:
    path = os.path.join(folder, "starts.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _recovery_done(folder: str, root: str, crash_seq: int, planned: set[str]) -> dict[str, list[Any]]:
    """What the restarts' recoveries did: their reports, then, for a planned operation no report names (a
    recovery that was itself killed did it), the last record the journal holds for it after the crash."""
    from ._inspect import event_kind, open_view

    did: list[dict[str, Any]] = []
    quarantined: list[str] = []
    for start in _starts(folder)[1:]:
        did += start["did"]
        quarantined += start["quarantined"]
    last: dict[str, str] = {}
    for rec in open_view(root).records(crash_seq + 1):
        last[rec.event.op] = event_kind(rec.event)
    reported = {d["target"] for d in did}
    for op, kind in last.items():
        if op in planned and op not in reported:
            did.append({"target": op, "action": "-", "outcome": f"journaled {kind}"})
    return {"did": did, "quarantined": quarantined}


def _failure(folder: str, log_name: str, proc: subprocess.CompletedProcess[bytes], what: str) -> DemoError:
    path = os.path.join(folder, log_name)
    with open(path, encoding="utf-8", errors="replace") as f:
        last = [line for line in f.read().splitlines() if line.strip()][-1:]
    return DemoError(f"{what} (exit status {proc.returncode}): {last[0].strip() if last else 'it printed nothing'}; its whole output is in {path}")


def _recovery_table(found: list[Any], did: list[dict[str, Any]], quarantined: list[str]) -> list[str]:
    """What recovery found (the plan read before the restart) beside what it did (the restarted host's report)."""
    done = {d["target"]: d for d in did}
    rows = []
    for action in found:
        d = done.pop(action.target, None)
        rows.append([action.target, f"{action.op_type or 'path'} {action.state or ''}".strip(), action.kind, d["outcome"] if d else "(not done)"])
    rows += [[d["target"], "-", d["action"], d["outcome"]] for d in done.values()]
    rows += [[path, "-", "quarantine", "moved to quarantine/"] for path in quarantined]
    if not rows:
        return ["     nothing was cut off: there was nothing to recover"]
    headers = ["operation", "found at the crash", "action", "what recovery did"]
    return plain_table(headers, rows, indent="     ").splitlines()


def _steps(first: int, last: int) -> str:
    return f"step {first} was" if first == last else f"steps {first}..{last} were"


def _loss_table(before: list[tuple[int, float, int]], after: list[tuple[int, float, int]], resumed_from: int) -> list[str]:
    """The loss at the steps that tell the story: before the crash, the resume point, the redone steps, the end."""
    first = {s: loss for s, loss, _ in before}
    second = {s: loss for s, loss, _ in after}
    crashed_at = max(first, default=0)
    steps = {s for s in first if s % CHECKPOINT_EVERY == 0 and s >= resumed_from - 2 * CHECKPOINT_EVERY}
    steps |= {resumed_from, resumed_from + 1, crashed_at}
    steps |= {s for s in second if s % STEPS_PER_FILE == 0}
    if second:
        steps.add(max(second))
    notes = {resumed_from: "<- newest committed checkpoint after recovery: resumed here", crashed_at: "<- the host was killed here"}
    pid_a = before[0][2] if before else "-"
    pid_b = after[0][2] if after else "-"
    lines = [f"     {'step':>6}  {f'first host (pid {pid_a})':>24}  {f'restarted host (pid {pid_b})':>28}"]
    for s in sorted(x for x in steps if x > 0 and (x in first or x in second)):
        a = f"{first[s]:.6f}" if s in first else "-"
        b = f"{second[s]:.6f}" if s in second else "-"
        lines.append(f"     {s:>6}  {a:>24}  {b:>28}  {notes.get(s, '')}".rstrip())
    return lines


class _Story:
    """The demo's lines, each also handed to ``emit`` as soon as it is known (the command line prints it)."""

    def __init__(self, emit: Callable[[str], None] | None) -> None:
        self.lines: list[str] = []
        self._emit = emit

    def add(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(line)
            if self._emit is not None:
                self._emit(line)


def run_demo(
    folder: str, *, crash_at: str | None = None, files: int = DEFAULT_FILES, emit: Callable[[str], None] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Run the demo in ``folder``: train, crash at ``crash_at``, recover, resume; return (lines to print, summary).

    ``emit`` gets each line as soon as it is known (the host runs take seconds).

    Raises ``ValueError`` for an unknown crash point (listing the known
    ones) or a bad ``files`` before anything is created, and
    :class:`DemoError` when the host fails other than by the armed crash.
    """
    import shipslog
    import shipslog.gpu  # registers nothing, but fails early without torch
    import shipslog.recovery  # registers the recovery crash points
    from shipslog.recovery import list_root, plan

    point = crash_at or DEFAULT_CRASH_AT
    name, _, nth = point.partition("@")
    known = registered_crash_points()
    if name not in known:
        raise ValueError(f"unknown crash point {name!r}; known points: {', '.join(sorted(known))}")
    if nth and (not nth.isdigit() or int(nth) < 1):
        raise ValueError(f"--crash-at {point!r}: expected NAME or NAME@N with N a hit number of 1 or more")
    if files < 1:
        raise ValueError(f"--files: expected 1 or more data files, got {files}")
    # A recovery point is only reached by a start that has something to recover:
    # the host is killed at the default point first, then during that recovery.
    in_recovery = name.startswith(_RECOVERY_POINTS)
    first_point = DEFAULT_CRASH_AT if in_recovery else point
    first_name = first_point.partition("@")[0]
    os.makedirs(folder, exist_ok=True)
    make_inbox(os.path.join(folder, "inbox"), files)
    root = os.path.join(folder, "host")
    story = _Story(emit)
    story.add(
        f"shipslog demo in {folder}",
        (
            f"  the host: a LoRA adapter (rank {RANK}) on a frozen base model, trained on the CPU over {files} JSONL files "
            f"of {_ROWS} rows, {STEPS_PER_FILE} steps each;"
        ),
        (
            f"  data prepared by {LOADERS} supervised loader workers; an async checkpoint every {CHECKPOINT_EVERY} steps; "
            f"every {CONSOLIDATE_EVERY} files the adapter is merged into a new base and {POINTER!r} moved to it; "
            f"the last {KEEP_CHECKPOINTS} checkpoints kept"
        ),
        "",
        f"1. the host runs, armed to die (SIGKILL, no clean-up) at {first_point}:",
        f"     {known[first_name]}",
    )
    t0 = time.monotonic()
    first = _host(folder, first_point, "host-1.log")
    crashed = first.returncode == -9
    if first.returncode not in (0, -9):
        raise _failure(folder, "host-1.log", first, "the training host failed before the crash it was armed for")
    before = _losses(folder)
    trained = before[-1][0] if before else 0
    state = shipslog.replay(root) if os.path.isdir(os.path.join(root, "journal")) else None
    committed = state.global_step if state is not None else 0
    if crashed:
        story.add(
            f"     killed after {time.monotonic() - t0:.1f} s, trained to step {trained}; the journal says: newest committed "
            f"checkpoint at step {committed}, {POINTER} -> {state.pointers[POINTER].target if state and POINTER in state.pointers else None}"
        )
    else:
        story.add(f"     the host finished without reaching {first_point} (at step {trained}); there is nothing to recover")
    actions = plan(state, list_root(root)) if state is not None else []
    recovery_crashed = False
    if in_recovery:
        story.add("", f"   the host starts again, armed to die during its recovery at {point}:", f"     {known[name]}")
        middle = _host(folder, point, "host-2.log")
        recovery_crashed = middle.returncode == -9
        if middle.returncode not in (0, -9):
            raise _failure(folder, "host-2.log", middle, "the restarted host failed before the crash it was armed for")
        story.add(
            "     killed during recovery; the journal keeps what it had done, and the next start plans again from it"
            if recovery_crashed
            else f"     it recovered and finished without reaching {point}"
        )
    story.add("", "2. the host starts again: Engine.open recovers the root, then training resumes")
    last_log = "host-3.log" if in_recovery else "host-2.log"
    second = _host(folder, None, last_log)
    if second.returncode != 0:
        raise _failure(folder, last_log, second, "the restarted host failed")
    report = _recovery_done(folder, root, state.seq if state is not None else 0, {a.target for a in actions})
    story.add(*_recovery_table(actions, report["did"], report["quarantined"]))
    after = _losses(folder)[len(before):]
    final = shipslog.replay(root)
    resumed_from = after[0][0] - 1 if after else final.global_step
    redone = [(s, loss) for s, loss, _ in after if s <= trained]
    first_losses = {s: loss for s, loss, _ in before}
    same = all(first_losses.get(s) == loss for s, loss in redone)
    story.add("", "3. the loss curve continues from the newest committed checkpoint:")
    story.add(*_loss_table(before, after, resumed_from))
    if redone:
        story.add(
            f"     {_steps(redone[0][0], redone[-1][0])} trained after that checkpoint and lost with the process; "
            f"trained again, the losses {'match' if same else 'DO NOT match'} the first time"
            f"{' to the last digit: the exact adapter and optimizer state was restored' if same else ''}"
        )
    else:
        story.add("     no step had to be trained again: everything trained was committed")
    story.add(f"     nothing committed was lost; done in {time.monotonic() - t0:.1f} s")
    summary = {
        "dir": folder,
        "root": root,
        "crash_at": point,
        "crashed": crashed,
        "recovery_crashed": recovery_crashed,
        "committed_step_at_crash": committed,
        "trained_step_at_crash": trained,
        "resumed_from_step": resumed_from,
        "redone_steps": len(redone),
        "redone_losses_match": same,
        "global_step": final.global_step,
        "unclean_sessions": final.unclean_sessions,
        "models": sorted(final.models),
        "pointer": final.pointers[POINTER].target if POINTER in final.pointers else None,
        "recovery_found": [a.describe() for a in actions],
        "recovery_did": [f"{d['action']} {d['target']}: {d['outcome']}" for d in report["did"]],
        "seconds": round(time.monotonic() - t0, 1),
    }
    return story.lines, summary
