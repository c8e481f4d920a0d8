"""One call each way for a plain torch loop: a resumed run continues bit for bit; a checkpoint that does not verify
is passed over for the one before it, and never reported as a fresh start."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _engine_helpers import open_engine

from shipslog.gpu import (
    TRAINING_PREFIX,
    AsyncCheckpointer,
    RestoreError,
    StateDictError,
    load_checkpoint,
    restore_training,
    save_training,
    save_training_async,
)

STEPS = 12
SAVE_AT = 5


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _objects(seed: int) -> tuple[Any, Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    return model, optimizer, scheduler


def _train_step(model: Any, optimizer: Any, scheduler: Any) -> None:
    """One step whose batch comes from all three generators (Python, numpy, torch), with dropout."""
    x = torch.randn(4, 8) + float(np.random.rand()) + random.random()
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _params(model: Any) -> list[Any]:
    return [p.detach().clone() for p in model.state_dict().values()]


def _uninterrupted() -> list[Any]:
    model, optimizer, scheduler = _objects(1)
    _seed(7)
    for _ in range(STEPS):
        _train_step(model, optimizer, scheduler)
    return _params(model)


def test_a_resumed_run_continues_bit_for_bit(root: str) -> None:
    expected = _uninterrupted()
    model, optimizer, scheduler = _objects(1)
    _seed(7)
    with open_engine(root) as e:
        assert restore_training(e, model=model, optimizer=optimizer, scheduler=scheduler) is None  # a fresh root
        for _ in range(SAVE_AT):
            _train_step(model, optimizer, scheduler)
        save_training(e, step=SAVE_AT, model=model, optimizer=optimizer, scheduler=scheduler, extra={"epoch": 2, "ema": torch.ones(3)})
        for _ in range(3):  # work after the save: lost in the crash
            _train_step(model, optimizer, scheduler)
    model, optimizer, scheduler = _objects(99)  # a new process: other weights, other generator states
    _seed(12345)
    with open_engine(root) as e:
        restored = restore_training(e, model=model, optimizer=optimizer, scheduler=scheduler)
        assert restored is not None and (restored.name, restored.step) == (f"step-{SAVE_AT}", SAVE_AT)
        assert restored.extra["epoch"] == 2 and torch.equal(restored.extra["ema"], torch.ones(3))
        for _ in range(SAVE_AT, STEPS):
            _train_step(model, optimizer, scheduler)
    for got, want in zip(_params(model), expected, strict=True):
        assert torch.equal(got, want)


def test_the_async_save_restores_the_same(root: str) -> None:
    model, optimizer, scheduler = _objects(1)
    _seed(3)
    _train_step(model, optimizer, scheduler)
    with open_engine(root) as e:
        with AsyncCheckpointer(e, prefix=TRAINING_PREFIX) as ck:
            handle = save_training_async(ck, step=1, model=model, optimizer=optimizer, scheduler=scheduler)
            assert handle is not None
            info = handle.result(timeout=60)
        assert info.step == 1
        saved = _params(model)
        after = torch.rand(1)
        fresh, fresh_opt, fresh_sched = _objects(5)
        restore_training(e, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
        assert all(torch.equal(a, b) for a, b in zip(_params(fresh), saved, strict=True))
        assert torch.equal(torch.rand(1), after)  # the generator is back where the save left it


def test_an_async_checkpointer_of_another_prefix_is_refused(root: str) -> None:
    model, optimizer, _ = _objects(1)
    with open_engine(root) as e, AsyncCheckpointer(e) as ck, pytest.raises(ValueError, match="prefix"):
        save_training_async(ck, step=1, model=model, optimizer=optimizer)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_a_newest_checkpoint_that_does_not_verify_falls_back_to_the_one_before(root: str, caplog: pytest.LogCaptureFixture) -> None:
    model, optimizer, scheduler = _objects(1)
    with open_engine(root) as e:
        save_training(e, step=10, model=model, optimizer=optimizer, scheduler=scheduler)
        first = _params(model)
        _train_step(model, optimizer, scheduler)
        save_training(e, step=20, model=model, optimizer=optimizer, scheduler=scheduler)
    _flip(os.path.join(root, "checkpoints", "step-20", f"{TRAINING_PREFIX}.safetensors"), -1 + os.path.getsize(
        os.path.join(root, "checkpoints", "step-20", f"{TRAINING_PREFIX}.safetensors")))
    fresh, fresh_opt, fresh_sched = _objects(2)
    with open_engine(root) as e:
        restored = restore_training(e, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert restored is not None and restored.step == 10
    assert all(torch.equal(a, b) for a, b in zip(_params(fresh), first, strict=True))
    assert any("step-20" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_when_no_checkpoint_can_be_restored_nothing_is_loaded_and_it_says_why(root: str) -> None:
    model, optimizer, scheduler = _objects(1)
    with open_engine(root) as e:
        save_training(e, step=10, model=model, optimizer=optimizer, scheduler=scheduler)
    path = os.path.join(root, "checkpoints", "step-10", f"{TRAINING_PREFIX}.safetensors")
    _flip(path, os.path.getsize(path) - 1)
    fresh, fresh_opt, fresh_sched = _objects(2)
    before = _params(fresh)
    with open_engine(root) as e, pytest.raises(RestoreError, match="step-10"):
        restore_training(e, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert all(torch.equal(a, b) for a, b in zip(_params(fresh), before, strict=True))


def test_a_checkpoint_of_another_model_changes_no_parameter(root: str) -> None:
    model, optimizer, _ = _objects(1)
    with open_engine(root) as e:
        save_training(e, step=10, model=model, optimizer=optimizer)
    other = torch.nn.Linear(8, 2)
    before = _params(other)
    with open_engine(root) as e, pytest.raises(RestoreError, match="StateDictError"):
        restore_training(e, model=other, rng=False)
    assert all(torch.equal(a, b) for a, b in zip(_params(other), before, strict=True))


def test_load_checkpoint_is_one_verified_call(root: str) -> None:
    model, optimizer, _ = _objects(1)
    with open_engine(root) as e:
        save_training(e, "best", step=4, model=model, optimizer=optimizer, rng=False)
        state = load_checkpoint(e, "best")
        assert set(state) == {"model", "optimizer"}
        path = os.path.join(root, "checkpoints", "best", f"{TRAINING_PREFIX}.safetensors")
        _flip(path, os.path.getsize(path) - 1)
        with pytest.raises(Exception, match="best") as caught:
            load_checkpoint(e, "checkpoints/best")
        assert type(caught.value).__name__ == "IntegrityError"


def test_an_unsavable_extra_is_refused_before_anything_is_journaled(root: str) -> None:
    model, _, _ = _objects(1)
    with open_engine(root) as e:
        with pytest.raises(StateDictError):
            save_training(e, step=1, model=model, extra={"handle": object()})
        assert e.state.checkpoints == {} and not os.listdir(os.path.join(root, "staging"))
