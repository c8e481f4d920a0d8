"""Hugging Face Transformers' ``Trainer`` on shipslog: every checkpoint committed through the engine.

Use::

    engine = shipslog.Engine.open(root)
    trainer = ShipslogTrainer(engine, model=model, args=TrainingArguments(save_steps=500, save_total_limit=3, ...),
                              train_dataset=dataset)
    trainer.train(resume_from_checkpoint=True)   # the newest checkpoint that verifies; a fresh start on a new root

Guarantees (on top of the Trainer's own):

* a checkpoint exists only once committed: the Trainer writes its usual
  files (``model.safetensors``, ``config.json``, ``optimizer.pt``,
  ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``, ...) into the
  operation's staging folder, they are checksummed and fsynced with the
  MANIFEST, renamed into ``checkpoints/checkpoint-<step>`` and journaled; a
  kill during a save leaves no ``checkpoint-N`` folder that makes a resume
  fail, so ``from_pretrained`` and ``resume_from_checkpoint`` only ever see
  complete folders;
* ``resume_from_checkpoint=True`` resolves to the newest committed checkpoint
  that verifies in full (checksums), falling back to older ones with a
  logged error, and to a fresh start on a root with none;
* ``save_total_limit`` is honoured by the engine's retention after the
  commit (journaled first): never the newest checkpoint, never the best one
  (the ``best`` pointer follows ``state.best_model_checkpoint``).

Distributed (DDP, one process per rank, ``torchrun`` or the same environment
variables): pass the open engine on process 0 only and ``None`` on the
others.  A checkpoint is then one operation of every process
(:func:`shipslog.gpu.distributed.shared_checkpoint`): process 0 begins it and
sends the staging folder to all; each process writes what the Trainer writes
there (process 0 the weights, optimizer, scheduler and trainer state, every
process its ``rng_state_<i>.pth``, fsynced and checksummed where it was
written); process 0 commits once every process reported, and a failure or a
dead process fails the save on every process with the same
:class:`~shipslog.gpu.distributed.DistributedCheckpointError` (the operation
aborted).  ``resume_from_checkpoint=True`` picks the newest checkpoint that
verifies on every process (each checks the files it reads: the shared ones
and its own RNG file) with :func:`~shipslog.gpu.distributed.choose_verified`.
Retention and the ``best`` pointer run on process 0.

Preemption: ``ShipslogTrainer(engine, ..., preemption=Preemption(grace_s=...))``
(entered around the training) saves at the end of the step a SIGTERM arrived
in, when it fits in the grace period (estimated from the last save), and
stops training; leaving the ``Preemption`` block exits with 143.  In a
distributed run every process passes its own ``Preemption``: at every step's
end they agree (:meth:`~shipslog.gpu.Preemption.agree`), so a SIGTERM on any
process stops all of them at that step, with one final checkpoint when it
fits on every process.

Import this module only with Transformers installed (``pip install
'shipslog[hf]'``); without it :class:`MissingDependencyError` says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch.distributed as dist

from shipslog.engine import (
    ArtifactInfo,
    EngineCore,
    MissingDependencyError,
)

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ExportableState
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput
except ImportError as _exc:
    raise MissingDependencyError("transformers", "hf") from _exc

from ._collective import (
    DistributedCheckpoint,
    agree,
    choose_verified,
    engine_problem,
    from_coordinator,
    shared_checkpoint,
)
from ._preemption import Preemption
from ._training import checkpoints_newest_first, free_checkpoint_name, rotate_checkpoints

__all__ = ["BEST_POINTER", "ShipslogTrainer"]

_log = logging.getLogger("shipslog.gpu.hf")

BEST_POINTER = "best"
"""The engine pointer that follows the Trainer's ``state.best_model_checkpoint`` (retention never deletes it)."""
_TRAINER_STATE = "trainer_state.json"


class _PreemptionCallback(TrainerCallback):
    """On SIGTERM: save at the end of this step when it fits in the grace period, and stop training.  In a
    distributed run every process asks :meth:`Preemption.agree` at every step's end, so a signal on any process
    stops all of them at the same step, each saving (collectively) or none."""

    def __init__(self, preemption: Preemption, *, distributed: bool) -> None:
        self.preemption = preemption
        self.distributed = distributed

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        stop = self.preemption.agree() if self.distributed else self.preemption.requested
        if stop and not self.preemption.final_saved:
            if self.preemption.fits():
                control.should_save = True
                self.preemption.final_saved = True
            control.should_training_stop = True
        return control


class ShipslogTrainer(Trainer):
    """A ``transformers.Trainer`` whose checkpoints are committed through ``engine`` (see the module).

    Takes every ``Trainer`` argument after ``engine``.  The engine stays open
    for the trainer's life; the caller closes it.  In a distributed run
    ``engine`` is given on process 0 only (``None`` elsewhere); this is
    checked on every process when the trainer is made.
    """

    def __init__(self, engine: EngineCore | None, *args: Any, preemption: Preemption | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distributed = self.args.world_size > 1 and dist.is_available() and dist.is_initialized()
        if self.distributed:
            agree(True, dist.get_rank(), engine_problem(engine, dist.get_rank()), None)
        elif engine is None:
            raise ValueError("ShipslogTrainer needs the open Engine (None is only for processes other than 0 of a distributed run)")
        self.engine = engine
        self.preemption = preemption
        if preemption is not None:
            self.add_callback(_PreemptionCallback(preemption, distributed=self.distributed))
        self.resumed_from: ArtifactInfo | DistributedCheckpoint | None = None
        """The committed checkpoint the last ``train(resume_from_checkpoint=True)`` resumed from (None: from scratch)."""

    def _reads(self, relpath: str) -> bool:
        """Whether this process reads ``relpath`` of a checkpoint when it resumes (another process's RNG file: no)."""
        return not relpath.startswith("rng_state") or relpath == f"rng_state_{self.args.process_index}.pth"

    def _choose_resume(self) -> tuple[ArtifactInfo | DistributedCheckpoint, str] | None:
        """The newest committed checkpoint that verifies (on every process, when distributed), with its folder."""
        if not self.distributed:
            assert self.engine is not None
            art = self.engine.latest_checkpoint(deep=True)
            return (art, self.engine.path(*art.path.split("/"))) if art is not None else None
        candidates = [a.path for a in checkpoints_newest_first(self.engine)] if self.engine is not None else []
        return choose_verified(self.engine, candidates, reads=self._reads)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` is the newest committed checkpoint that verifies."""
        if resume_from_checkpoint is True:
            chosen = self._choose_resume()
            self.resumed_from = chosen[0] if chosen is not None else None
            if chosen is None:
                _log.info("no committed checkpoint to resume from: training starts from scratch")
                resume_from_checkpoint = None
            else:
                art, resume_from_checkpoint = chosen
                _log.info("resuming from %s (step %s)", art.path, art.step)
                if self.args.max_steps > 0 and (art.step or 0) >= self.args.max_steps:
                    # The run was complete: the Trainer itself would train one step past max_steps here.
                    _log.info("%s is at max_steps=%d: loading it, nothing left to train", art.path, self.args.max_steps)
                    self._load_from_checkpoint(resume_from_checkpoint)
                    return TrainOutput(int(art.step or 0), 0.0, {})
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, written into the operation's staging folder and committed (then retention)."""
        if self.preemption is not None:
            self.preemption.timed(lambda: self._commit_checkpoint(model, trial))
        else:
            self._commit_checkpoint(model, trial)

    def _commit_checkpoint(self, model: Any, trial: Any) -> None:
        step = int(self.state.global_step)
        if self.hp_search_backend is None and trial is None:
            self.store_flos()  # a collective when distributed: every process is here
        base = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        meta = {"framework": "transformers"}
        if self.distributed:
            name = free_checkpoint_name(self.engine, base) if self.engine is not None else base  # process 0's counts
            with shared_checkpoint(self.engine, name, step=step, meta=meta) as shared:
                self._write_checkpoint(shared.path, os.path.dirname(shared.final_path), step)
                rng_file = f"rng_state_{self.args.process_index}.pth"
                if os.path.isfile(os.path.join(shared.path, rng_file)):
                    shared.record(rng_file)
        else:
            assert self.engine is not None
            with self.engine.checkpoint(free_checkpoint_name(self.engine, base), step=step, meta=meta) as ck:
                self._write_checkpoint(ck.path, self.engine.path("checkpoints"), step)
        if not self.distributed:
            assert self.engine is not None
            self._point_best(self.engine)
            self._rotate(self.engine)
            return
        outcome: dict[str, Any] | None = None
        if self.engine is not None:  # process 0's, its outcome sent to every process
            try:
                self._point_best(self.engine)
                self._rotate(self.engine)
                outcome = {"done": True}
            except Exception as exc:  # noqa: BLE001 - sent to every process, then raised there as the same error
                outcome = {"error": f"after checkpoint-{step} was committed: {type(exc).__name__}: {exc}"}
        from_coordinator(True, outcome, None)

    def _write_checkpoint(self, out: str, checkpoints: str, step: int) -> None:
        """What the Trainer writes into a checkpoint folder (on this process), into ``out``; ``checkpoints`` is
        the folder committed checkpoints are in."""
        self.save_model(out, _internal_call=True)
        if self.state.best_global_step:
            best = os.path.join(checkpoints, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if os.path.isdir(best) or self.state.best_global_step == step:
                self.state.best_model_checkpoint = best
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(out)
            save_scaler = getattr(self, "_save_scaler", None)
            if save_scaler is not None:
                save_scaler(out)
            self._save_rng_state(out)
        if self.args.should_save:
            stateful: Any = self.state.stateful_callbacks  # a dict by the time a checkpoint is saved
            for cb in [c for c in [*self.callback_handler.callbacks, self.control] if isinstance(c, ExportableState)]:
                key = cb.__class__.__name__
                if isinstance(stateful.get(key), list):
                    stateful[key].append(cb.state())
                else:
                    stateful[key] = cb.state()
            self.state.save_to_json(os.path.join(out, _TRAINER_STATE))

    def _point_best(self, engine: EngineCore) -> None:
        """Move the ``best`` pointer to the Trainer's best checkpoint, when it is a committed one."""
        best = self.state.best_model_checkpoint
        name = os.path.basename(best) if best else None
        if name is None or name not in engine.state.checkpoints:
            return
        target = f"checkpoints/{name}"
        current = engine.state.pointers.get(BEST_POINTER)
        if current is None or current.target != target:
            engine.set_pointer(BEST_POINTER, target)

    def _rotate(self, engine: EngineCore) -> None:
        """``save_total_limit`` through the engine's retention: the newest N by step stay, and the best."""
        limit = self.args.save_total_limit
        if limit and limit >= 1:
            rotate_checkpoints(engine, limit, reason=f"save_total_limit={limit}")
