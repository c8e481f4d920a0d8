"""SIGTERM at a random time: the loop finishes its step, takes a final checkpoint when the grace period allows,
closes the session cleanly and exits 143; the resume starts from that final checkpoint (never a broken one)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

pytest.importorskip("torch")

from shipslog.gpu import Preemption

CHILD = r'''
import json, sys, time
import torch
import shipslog
from shipslog.gpu import Preemption, restore_training, save_training

root, grace, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
torch.manual_seed(1)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
with shipslog.Engine.open(root) as engine, Preemption(grace_s=grace) as preemption:
    restored = restore_training(engine, model=model, optimizer=optimizer)
    start = restored.step if restored is not None else 0
    print(json.dumps({"start": start}), flush=True)
    step = start
    for step in range(start + 1, 100_000):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(0.005)
        save = lambda: save_training(engine, step=step, model=model, optimizer=optimizer)
        if step % 20 == 0:
            preemption.timed(save)
        elif preemption.requested:
            preemption.final_save(save)
        if preemption.requested:
            break
    with open(out, "w") as f:
        json.dump({"stopped_at": step, "saved_at_stop": preemption.final_saved or step % 20 == 0}, f)
'''


def _start(root: str, grace: float, out: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, root, str(grace), out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=60)
        pytest.fail(err or "the child printed nothing")
    return proc, int(json.loads(line)["start"])


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)  # waits, and closes the pipes
    return proc.returncode


def _preempt(root: str, grace: float, out: str, after: float) -> tuple[int, dict[str, Any]]:
    proc, start = _start(root, grace, out)
    time.sleep(after)
    code = _stop(proc)
    with open(out, encoding="utf-8") as f:
        return start, {"code": code, **json.load(f)}


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_sigterm_at_random_times_resumes_from_the_final_checkpoint(root: str, tmp_path: Any) -> None:
    rng = random.Random(11)
    out = os.path.join(str(tmp_path), "out.json")
    expected_start = 0
    for _ in range(3):
        start, stopped = _preempt(root, 30.0, out, rng.uniform(0.2, 1.0))
        assert start == expected_start  # resumed from the checkpoint the last preemption saved
        assert stopped["code"] == 128 + signal.SIGTERM
        assert stopped["saved_at_stop"] is True
        expected_start = stopped["stopped_at"]
    proc, start = _start(root, 30.0, out)
    _stop(proc)
    assert start == expected_start


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_without_grace_no_final_save_is_started_and_the_resume_uses_the_last_complete_one(root: str, tmp_path: Any) -> None:
    out = os.path.join(str(tmp_path), "out.json")
    _, stopped = _preempt(root, 0.0, out, 0.6)
    assert stopped["code"] == 128 + signal.SIGTERM
    last_regular = stopped["stopped_at"] - stopped["stopped_at"] % 20
    proc, start = _start(root, 0.0, out)
    _stop(proc)
    assert start == last_regular


def test_a_signal_outside_a_step_only_sets_the_flag_and_the_block_exits_with_its_code() -> None:
    with pytest.raises(SystemExit) as caught, Preemption(grace_s=5) as preemption:
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested and preemption.fits()
        assert preemption.final_save(lambda: None) and preemption.final_saved
    assert caught.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_final_save_that_does_not_fit_is_skipped() -> None:
    with Preemption(grace_s=1.0, exit_on_signal=False) as preemption:
        preemption.timed(lambda: time.sleep(0.2))
        os.kill(os.getpid(), signal.SIGTERM)
        preemption.received_at = time.monotonic() - 0.9  # 0.1 s left, the last save took 0.2 s
        ran: list[int] = []
        assert not preemption.final_save(lambda: ran.append(1))
        assert ran == []


def test_reclaim_signals_takes_the_signal_back_from_a_handler_installed_inside_the_block() -> None:
    others: list[int] = []
    outer = signal.getsignal(signal.SIGTERM)
    with Preemption(grace_s=5, exit_on_signal=False) as preemption:
        signal.signal(signal.SIGTERM, lambda signum, frame: others.append(signum))  # a framework's own handler
        preemption.reclaim_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested and preemption.signum == signal.SIGTERM
        assert others == []
    assert signal.getsignal(signal.SIGTERM) == outer  # leaving the block restores the handler from before it


def test_reclaim_signals_outside_the_block_is_refused() -> None:
    preemption = Preemption()
    with pytest.raises(RuntimeError, match="inside the Preemption block only"):
        preemption.reclaim_signals()
    assert not preemption.requested
