"""Hugging Face Trainer through shipslog: checkpoints committed by the engine, save_total_limit by retention,
and resume_from_checkpoint=True from the newest checkpoint that verifies, bit for bit."""

from __future__ import annotations

import os
import signal
import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _engine_helpers import open_engine

from shipslog.gpu.hf import BEST_POINTER, ShipslogTrainer

STEPS = 12
SAVE_EVERY = 4


def _model() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def _dataset() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 64, (64, 16), generator=g)
    return [{"input_ids": r, "labels": r} for r in rows]


class _Count(transformers.TrainerCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps = 0
        self.stop_at = stop_at

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.steps += 1
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True
        return control


def _train(root: str, out: str, *, stop_at: int | None = None, resume: bool = True) -> tuple[list[Any], int]:
    model = _model()
    counter = _Count(stop_at)
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=STEPS, save_steps=SAVE_EVERY, save_total_limit=2, per_device_train_batch_size=4,
        report_to=[], use_cpu=True, seed=0, logging_steps=1000, disable_tqdm=True, lr_scheduler_type="constant",
    )
    with open_engine(root) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ShipslogTrainer(engine, model=model, args=args, train_dataset=_dataset(), callbacks=[counter])
        trainer.train(resume_from_checkpoint=resume)
    return [p.detach().clone() for p in model.parameters()], counter.steps


def test_resume_from_checkpoint_true_continues_bit_for_bit_from_the_committed_checkpoint(root: str, tmp_path: Any) -> None:
    out = os.path.join(str(tmp_path), "out")
    expected, _ = _train(os.path.join(str(tmp_path), "other"), out)
    _, ran = _train(root, out, stop_at=2 * SAVE_EVERY)  # a fresh root: resume=True starts from scratch
    assert ran == 2 * SAVE_EVERY
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["checkpoint-4", "checkpoint-8"]
    folder = os.path.join(root, "checkpoints", "checkpoint-8")
    assert {"model.safetensors", "config.json", "trainer_state.json", "optimizer.pt", "rng_state.pth", "MANIFEST"} <= set(os.listdir(folder))
    transformers.GPT2LMHeadModel.from_pretrained(folder)
    resumed, ran = _train(root, out)
    assert ran == STEPS - 2 * SAVE_EVERY
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["checkpoint-12", "checkpoint-8"]  # save_total_limit=2, by retention
        assert BEST_POINTER not in e.state.pointers  # no metric: no best
        assert e.violations == []


def test_a_newest_checkpoint_that_does_not_verify_is_passed_over(root: str, tmp_path: Any) -> None:
    out = os.path.join(str(tmp_path), "out")
    _train(root, out, stop_at=2 * SAVE_EVERY)
    weights = os.path.join(root, "checkpoints", "checkpoint-8", "model.safetensors")
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) - 1)
        byte = f.read(1)
        f.seek(os.path.getsize(weights) - 1)
        f.write(bytes([byte[0] ^ 1]))
    _, ran = _train(root, out)
    assert ran == STEPS - SAVE_EVERY  # from checkpoint-4


def test_resuming_a_finished_run_trains_no_step_past_max_steps(root: str, tmp_path: Any) -> None:
    out = os.path.join(str(tmp_path), "out")
    finished, _ = _train(root, out)
    again, ran = _train(root, out)
    assert ran == 0
    assert all(torch.equal(a, b) for a, b in zip(again, finished, strict=True))
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["checkpoint-12", "checkpoint-8"]


def test_sigterm_during_train_commits_a_final_checkpoint_and_exits_143(root: str, tmp_path: Any) -> None:
    from shipslog.gpu import Preemption

    class SendTerm(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 6:
                os.kill(os.getpid(), signal.SIGTERM)
            return control

    args = transformers.TrainingArguments(
        output_dir=os.path.join(str(tmp_path), "out"), max_steps=STEPS, save_steps=SAVE_EVERY, save_total_limit=3,
        per_device_train_batch_size=4, report_to=[], use_cpu=True, seed=0, logging_steps=1000, disable_tqdm=True,
        lr_scheduler_type="constant",
    )
    with pytest.raises(SystemExit) as caught, open_engine(root) as engine, Preemption(grace_s=30) as preemption, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ShipslogTrainer(engine, model=_model(), args=args, train_dataset=_dataset(), callbacks=[SendTerm()], preemption=preemption)
        trainer.train()
    assert caught.value.code == 128 + signal.SIGTERM
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["checkpoint-4", "checkpoint-6"]
        assert e.violations == []
    _, ran = _train(root, os.path.join(str(tmp_path), "out"))
    assert ran == STEPS - 6


def test_a_trainer_without_an_engine_outside_a_distributed_run_is_refused(tmp_path: Any) -> None:
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="needs the open Engine"):
        ShipslogTrainer(None, model=_model(), args=args, train_dataset=_dataset())
