"""Accelerate through shipslog: save_state committed by the engine, total_limit by retention after the commit,
load_state from the newest checkpoint that verifies, and a resumed loop that continues bit for bit."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from _engine_helpers import open_engine

from shipslog.gpu import RestoreError
from shipslog.gpu.accelerate import ShipslogAccelerate

STEPS = 12
SAVE_EVERY = 4


def _run(root: str, *, stop_at: int = STEPS, total_limit: int = 2) -> tuple[list[Any], int, int]:
    """Train to ``stop_at`` (resuming when the root has a checkpoint): final parameters, start step, steps run."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.25), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerator = accelerate.Accelerator(cpu=True)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ran = 0
    with open_engine(root) as engine:
        states = ShipslogAccelerate(accelerator, engine, total_limit=total_limit)
        loaded = states.load_state()
        if loaded is None:
            torch.manual_seed(7)
        start = loaded.step or 0 if loaded is not None else 0
        for step in range(start + 1, stop_at + 1):
            loss = model(torch.randn(8, 8)).pow(2).mean()
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            ran += 1
            if step % SAVE_EVERY == 0:
                states.save_state(step=step)
    return [p.detach().clone() for p in model.parameters()], start, ran


def test_load_state_resumes_bit_for_bit_from_the_committed_checkpoint(root: str, tmp_path: Any) -> None:
    expected, _, _ = _run(os.path.join(str(tmp_path), "other"))
    _, start, ran = _run(root, stop_at=2 * SAVE_EVERY)
    assert (start, ran) == (0, 2 * SAVE_EVERY)
    resumed, start, ran = _run(root)
    assert (start, ran) == (2 * SAVE_EVERY, STEPS - 2 * SAVE_EVERY)
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["step-12", "step-8"]  # total_limit=2, by retention after the commit
        assert e.violations == []


def test_a_checkpoint_that_does_not_verify_is_passed_over_and_none_is_an_error(root: str) -> None:
    _run(root, stop_at=2 * SAVE_EVERY)
    for name in ("step-8", "step-4"):
        folder = os.path.join(root, "checkpoints", name)
        weights = next(os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".safetensors"))
        with open(weights, "r+b") as f:
            f.seek(os.path.getsize(weights) - 1)
            byte = f.read(1)
            f.seek(os.path.getsize(weights) - 1)
            f.write(bytes([byte[0] ^ 1]))
        if name == "step-8":
            _, start, _ = _run(root, stop_at=SAVE_EVERY)  # nothing to train past step 4: it only loads
            assert start == SAVE_EVERY
    with pytest.raises(RestoreError, match="step-4"):
        _run(root)


def test_automatic_checkpoint_naming_is_refused(root: str) -> None:
    config = accelerate.utils.ProjectConfiguration(project_dir=str(root), automatic_checkpoint_naming=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerator = accelerate.Accelerator(cpu=True, project_config=config)
    with open_engine(root) as engine, pytest.raises(ValueError, match="automatic_checkpoint_naming"):
        ShipslogAccelerate(accelerator, engine)
