"""PyTorch Lightning on shipslog: every checkpoint committed through the engine, ``last`` an engine pointer.

Use::

    engine = shipslog.Engine.open(root)
    trainer = lightning.pytorch.Trainer(
        plugins=[ShipslogCheckpointIO(engine)],
        callbacks=[ShipslogModelCheckpoint(engine, every_n_train_steps=50, save_top_k=2, save_last=True)],
    )
    trainer.fit(model, ckpt_path="last")   # the newest checkpoint that verifies, or a fresh start on a new root

Guarantees (on top of Lightning's own):

* a checkpoint exists only once committed: its files (one state tree,
  ``lightning.safetensors`` and its tree) and MANIFEST are fsynced in
  staging, renamed into ``checkpoints/<file name>`` and journaled; a crash at
  any point leaves either the previous checkpoints or the new one, never a
  half-written file that a resume picks up;
* ``last`` is the engine pointer ``last``, moved (verified, atomically,
  journaled) to the checkpoint of the step just saved, never a symbolic
  link or a second copy; ``ckpt_path="last"`` resolves to the newest
  committed checkpoint that verifies in full (never older than the pointer's
  target), and loading verifies every file against its MANIFEST before
  Lightning sees a byte;
* removals (``save_top_k``) go through the engine's retention: journaled
  first, never the newest checkpoint or a pointer's target (a removal of the
  checkpoint ``last`` still names is done once the pointer has moved on).

Preemption: with ``Preemption`` (:class:`shipslog.gpu.Preemption`) around the
fit, ``ShipslogCheckpointIO(engine, preemption=...)`` times the saves and the
:class:`ShipslogPreemption` callback commits one final checkpoint at the end
of the batch the SIGTERM arrived in, when it fits in the grace period; then
Lightning's own SIGTERM handling ends the fit and the process exits with 143.

Checkpoint values are saved as a safetensors state tree, so the checkpoint
dict may hold tensors, numpy arrays, dicts, lists, tuples and JSON scalars;
anything else (a pickled object in ``hyper_parameters``, say) is refused with
:class:`~shipslog.gpu.StateDictError` naming where it is, never pickled.
Import this module only with Lightning installed (``pip install
'shipslog[lightning]'``); without it :class:`MissingDependencyError` says so.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch

from shipslog.engine import (
    ArtifactInfo,
    ConflictError,
    EngineCore,
    IntegrityError,
    MissingDependencyError,
    NotFoundError,
)

from ._preemption import Preemption
from ._tensorfile import save_state_dict
from ._training import load_checkpoint

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
except ImportError as _exc:
    raise MissingDependencyError("lightning", "lightning") from _exc

__all__ = ["LAST_POINTER", "LIGHTNING_PREFIX", "ShipslogCheckpointIO", "ShipslogModelCheckpoint", "ShipslogPreemption"]

_log = logging.getLogger("shipslog.gpu.lightning")

LIGHTNING_PREFIX = "lightning"
"""The file prefix of a Lightning checkpoint's state tree in its folder."""
LAST_POINTER = "last"
"""The engine pointer that serves Lightning's ``last`` checkpoint."""
_LAST = re.compile(r"^last(-v?\d+)?(\.ckpt)?$")


def _is_last(name: str) -> bool:
    return bool(_LAST.match(name))


def _name_of(path: str | os.PathLike[str]) -> str:
    return os.path.basename(os.fspath(path).rstrip("/"))


class ShipslogCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that commits every checkpoint through ``engine`` (see the module).

    The directory in a path Lightning passes is ignored: a checkpoint is
    committed as ``checkpoints/<file name>`` under the engine's root.  The
    engine stays open for the plugin's life; the caller closes it.
    """

    def __init__(self, engine: EngineCore, *, preemption: Preemption | None = None) -> None:
        self.engine = engine
        self.preemption = preemption
        self._deferred: list[str] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Commit ``checkpoint`` as ``checkpoints/<file name>``; a ``last`` file moves the ``last`` pointer instead."""
        name = _name_of(path)
        step = checkpoint.get("global_step")
        step = step if isinstance(step, int) and step >= 0 else None
        if _is_last(name):
            target = self._committed_at(step)
            if target is None:  # nothing else was saved at this step: save it under its step
                target = self._commit(f"last-step={step}.ckpt" if step is not None else "last-unnumbered.ckpt", checkpoint, step)
            self.engine.set_pointer(LAST_POINTER, target.path)
            self._retry_deferred()
            return
        self._commit(name, checkpoint, step)
        self._retry_deferred()

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint ``path`` names (``last``: the pointer's target), verified in full as it is read."""
        name = _name_of(path)
        target = self._last_target() if _is_last(name) else f"checkpoints/{name}"
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        state = load_checkpoint(self.engine, target, prefix=LIGHTNING_PREFIX, device=device)
        if not isinstance(state, dict):
            raise IntegrityError(self.engine.path(*target.split("/")), "a Lightning checkpoint (a dict)", type(state).__name__)
        return state

    def remove_checkpoint(self, path: Any) -> None:
        """Delete checkpoint ``path`` through the engine's retention (``last`` files: nothing; the pointer moves)."""
        name = _name_of(path)
        if _is_last(name) or name not in self.engine.state.checkpoints:
            return
        self._deferred.append(name)
        self._retry_deferred()

    def _last_target(self) -> str:
        pointer = self.engine.state.pointers.get(LAST_POINTER)
        if pointer is None:
            raise NotFoundError("pointer", LAST_POINTER, "no checkpoint was saved as 'last' in this root yet")
        return pointer.target

    def teardown(self) -> None:
        """Carry out removals that waited for the ``last`` pointer to move on (what still cannot be is logged)."""
        self._retry_deferred(final=True)

    def _commit(self, name: str, checkpoint: dict[str, Any], step: int | None) -> ArtifactInfo:
        def commit() -> ArtifactInfo:
            with self.engine.checkpoint(name, step=step, meta={"framework": "lightning"}) as ck:
                for entry in save_state_dict(checkpoint, ck.path, prefix=LIGHTNING_PREFIX, fs=self.engine.fs):
                    ck.add_file(entry)
            assert ck.info is not None
            return ck.info

        return self.preemption.timed(commit) if self.preemption is not None else commit()

    def _committed_at(self, step: int | None) -> ArtifactInfo | None:
        """The newest committed checkpoint of ``step`` (None when there is none, or no step)."""
        if step is None:
            return None
        found = [a for a in self.engine.state.checkpoints.values() if a.step == step]
        return max(found, key=lambda a: a.seq) if found else None

    def _retry_deferred(self, *, final: bool = False) -> None:
        waiting, self._deferred = self._deferred, []
        for name in waiting:
            if name not in self.engine.state.checkpoints:
                continue
            try:
                self.engine.delete([name], reason="removed by Lightning's ModelCheckpoint")
            except ConflictError as exc:
                if final:
                    _log.warning("checkpoint %s was not removed: %s", name, exc)
                else:
                    self._deferred.append(name)  # the 'last' pointer (or the newest) still needs it: later


class ShipslogPreemption(Callback):
    """On SIGTERM (see :class:`~shipslog.gpu.Preemption`): at the end of the batch, one final checkpoint when it
    fits in the grace period, then the fit stops (Lightning's own SIGTERM handling ends it)."""

    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not (self.preemption.requested or getattr(trainer, "received_sigterm", False)) or self.preemption.final_saved:
            return
        step = int(trainer.global_step)
        path = os.path.join(trainer.default_root_dir, f"preempted-epoch={trainer.current_epoch}-step={step}.ckpt")
        self.preemption.final_save(lambda: trainer.save_checkpoint(path))
        trainer.should_stop = True


class ShipslogModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``dirpath`` in the engine's root and ``last`` resolved by the engine.

    Takes every ``ModelCheckpoint`` argument.  ``ckpt_path="last"`` resolves
    to the newest committed checkpoint that verifies in full (checksums): the
    ``last`` pointer's target when it does, else the newest older one that
    does; none on a fresh root (Lightning then starts from scratch, as it
    says).
    """

    def __init__(self, engine: EngineCore, **kwargs: Any) -> None:
        kwargs.setdefault("dirpath", engine.path("checkpoints"))
        super().__init__(**kwargs)
        self.engine = engine

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        # The newest committed checkpoint that verifies: at least as new as what the 'last' pointer names (a kill
        # between a commit and the pointer's move leaves the pointer one save behind).
        art = self.engine.latest_checkpoint(deep=True)
        return {self.engine.path(*art.path.split("/"))} if art is not None else set()
