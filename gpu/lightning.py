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

Distributed (DDP, one process per rank): open the engine on global rank 0
only, pass ``None`` elsewhere, and use :class:`ShipslogDDPStrategy`::

    engine = shipslog.Engine.open(root) if rank == 0 else None
    trainer = lightning.pytorch.Trainer(
        strategy=ShipslogDDPStrategy(), plugins=[ShipslogCheckpointIO(engine)],
        callbacks=[ShipslogModelCheckpoint(engine, every_n_train_steps=50, save_last=True)], ...)

Every save is then one operation of every process
(:func:`shipslog.gpu.distributed.shared_checkpoint`): rank 0 writes the
state tree into the staging folder it sent to all and commits once every
process took part; a failure, or a process that died or hung, fails the
save on every process with the same
:class:`~shipslog.gpu.distributed.DistributedCheckpointError` (the operation
aborted) instead of leaving the others waiting in Lightning's barrier.
``ckpt_path="last"`` resolves to the newest checkpoint that verifies on every
process (:func:`~shipslog.gpu.distributed.choose_verified`), and every
process verifies the files it loads against the MANIFEST.  Removals and the
``last`` pointer are rank 0's.  With Lightning's own ``"ddp"`` strategy the
plugin still works: rank 0 alone saves, as Lightning calls it there only.

Preemption: with ``Preemption`` (:class:`shipslog.gpu.Preemption`) around the
fit, ``ShipslogCheckpointIO(engine, preemption=...)`` times the saves and the
:class:`ShipslogPreemption` callback commits one final checkpoint at the end
of the batch the SIGTERM arrived in, when it fits in the grace period; then
the fit ends and the process exits with 143.  Under DDP every process passes
its own ``Preemption`` and callback, and a SIGTERM to any one of them stops
all of them at the same batch (see :class:`ShipslogPreemption`).

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

from ._collective import choose_verified, from_coordinator, group_view, shared_checkpoint
from ._preemption import Preemption
from ._tensorfile import save_state_dict
from ._training import checkpoints_newest_first, load_checkpoint, load_checkpoint_folder

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as _exc:
    raise MissingDependencyError("lightning", "lightning") from _exc

__all__ = [
    "LAST_POINTER",
    "LIGHTNING_PREFIX",
    "ShipslogCheckpointIO",
    "ShipslogDDPStrategy",
    "ShipslogModelCheckpoint",
    "ShipslogPreemption",
]

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
    engine stays open for the plugin's life; the caller closes it.  ``engine``
    is None on the processes of a distributed run other than global rank 0.
    """

    def __init__(self, engine: EngineCore | None, *, preemption: Preemption | None = None) -> None:
        self.engine = engine
        self.preemption = preemption
        self._deferred: list[str] = []

    def _engine(self) -> EngineCore:
        if self.engine is None:
            raise ValueError("this ShipslogCheckpointIO has no engine (a process other than rank 0): only rank 0 saves "
                             "and removes checkpoints; give rank 0 the open Engine")
        return self.engine

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Commit ``checkpoint`` as ``checkpoints/<file name>``; a ``last`` file moves the ``last`` pointer instead."""
        engine = self._engine()
        name = _name_of(path)
        step = checkpoint.get("global_step")
        step = step if isinstance(step, int) and step >= 0 else None
        if _is_last(name):
            target = self._committed_at(step)
            if target is None:  # nothing else was saved at this step: save it under its step
                target = self._commit(f"last-step={step}.ckpt" if step is not None else "last-unnumbered.ckpt", checkpoint, step)
            engine.set_pointer(LAST_POINTER, target.path)
            self._retry_deferred()
            return
        self._commit(name, checkpoint, step)
        self._retry_deferred()

    def save_collective(self, checkpoint: dict[str, Any], path: Any) -> None:
        """:meth:`save_checkpoint` as one operation of every process of the job (call it on every one; see the module)."""
        distributed, rank, _world = group_view(None)
        name = _name_of(path)
        step = checkpoint.get("global_step")
        step = step if isinstance(step, int) and step >= 0 else None
        plan: dict[str, Any] | None = None
        if rank == 0:
            try:
                plan = self._plan(name, step)
            except Exception as exc:  # noqa: BLE001 - sent to every process, then raised there as the same error
                plan = {"error": f"{type(exc).__name__}: {exc}"}
        plan = from_coordinator(distributed, plan, None)
        if plan.get("commit"):
            def commit() -> None:
                with shared_checkpoint(self.engine, plan["commit"], step=step, meta={"framework": "lightning"}) as shared:
                    if shared.writer is not None:
                        for entry in save_state_dict(checkpoint, shared.path, prefix=LIGHTNING_PREFIX, fs=self._engine().fs):
                            shared.writer.add_file(entry)

            self.preemption.timed(commit) if self.preemption is not None else commit()
        outcome: dict[str, Any] | None = None
        if rank == 0:
            try:
                if plan.get("pointer"):
                    self._engine().set_pointer(LAST_POINTER, plan["pointer"])
                self._retry_deferred()
                outcome = {"done": True}
            except Exception as exc:  # noqa: BLE001 - sent to every process, then raised there as the same error
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
        from_coordinator(distributed, outcome, None)

    def _plan(self, name: str, step: int | None) -> dict[str, Any]:
        """Rank 0's decision for a save of file ``name``: the checkpoint to commit and/or where ``last`` points."""
        if not _is_last(name):
            return {"commit": name}
        target = self._committed_at(step)
        if target is not None:
            return {"pointer": target.path}
        committed = f"last-step={step}.ckpt" if step is not None else "last-unnumbered.ckpt"
        return {"commit": committed, "pointer": f"checkpoints/{committed}"}

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint ``path`` names (``last``: the pointer's target), verified in full as it is read.

        In a distributed run (call it on every process: Lightning does) rank 0
        resolves the folder and sends it to all; every process then loads it,
        verified against its MANIFEST.  Without an engine outside a
        distributed run, ``path`` is a committed folder, loaded the same way.
        """
        name = _name_of(path)
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        distributed, rank, world = group_view(None)
        if distributed and world > 1:
            resolved: dict[str, Any] | None = None
            if rank == 0:
                try:
                    resolved = {"folder": self._engine().path(*self._target(name).split("/"))}
                except Exception as exc:  # noqa: BLE001 - sent to every process, then raised there as the same error
                    resolved = {"error": f"{type(exc).__name__}: {exc}"}
            folder = from_coordinator(True, resolved, None)["folder"]
            state = load_checkpoint_folder(folder, prefix=LIGHTNING_PREFIX, device=device)
        elif self.engine is None:  # no engine and no group: ``path`` is a committed folder, verified as it is read
            folder = os.fspath(path)
            state = load_checkpoint_folder(folder, prefix=LIGHTNING_PREFIX, device=device)
        else:
            target = self._target(name)
            folder = self.engine.path(*target.split("/"))
            state = load_checkpoint(self.engine, target, prefix=LIGHTNING_PREFIX, device=device)
        if not isinstance(state, dict):
            raise IntegrityError(folder, "a Lightning checkpoint (a dict)", type(state).__name__)
        return state

    def remove_checkpoint(self, path: Any) -> None:
        """Delete checkpoint ``path`` through the engine's retention (``last`` files: nothing; the pointer moves)."""
        name = _name_of(path)
        if _is_last(name) or name not in self._engine().state.checkpoints:
            return
        self._deferred.append(name)
        self._retry_deferred()

    def _target(self, name: str) -> str:
        """The root-relative checkpoint a file name Lightning passes stands for."""
        return self._last_target() if _is_last(name) else f"checkpoints/{name}"

    def _last_target(self) -> str:
        pointer = self._engine().state.pointers.get(LAST_POINTER)
        if pointer is None:
            raise NotFoundError("pointer", LAST_POINTER, "no checkpoint was saved as 'last' in this root yet")
        return pointer.target

    def teardown(self) -> None:
        """Carry out removals that waited for the ``last`` pointer to move on (what still cannot be is logged)."""
        if self.engine is not None:
            self._retry_deferred(final=True)

    def _commit(self, name: str, checkpoint: dict[str, Any], step: int | None) -> ArtifactInfo:
        engine = self._engine()

        def commit() -> ArtifactInfo:
            with engine.checkpoint(name, step=step, meta={"framework": "lightning"}) as ck:
                for entry in save_state_dict(checkpoint, ck.path, prefix=LIGHTNING_PREFIX, fs=engine.fs):
                    ck.add_file(entry)
            assert ck.info is not None
            return ck.info

        return self.preemption.timed(commit) if self.preemption is not None else commit()

    def _committed_at(self, step: int | None) -> ArtifactInfo | None:
        """The newest committed checkpoint of ``step`` (None when there is none, or no step)."""
        if step is None:
            return None
        found = [a for a in self._engine().state.checkpoints.values() if a.step == step]
        return max(found, key=lambda a: a.seq) if found else None

    def _retry_deferred(self, *, final: bool = False) -> None:
        engine = self._engine()
        waiting, self._deferred = self._deferred, []
        for name in waiting:
            if name not in engine.state.checkpoints:
                continue
            try:
                engine.delete([name], reason="removed by Lightning's ModelCheckpoint")
            except ConflictError as exc:
                if final:
                    _log.warning("checkpoint %s was not removed: %s", name, exc)
                else:
                    self._deferred.append(name)  # the 'last' pointer (or the newest) still needs it: later


class ShipslogPreemption(Callback):
    """On SIGTERM (see :class:`~shipslog.gpu.Preemption`): at the end of the batch, one final checkpoint when it
    fits in the grace period, then the fit stops.

    In one process Lightning's own SIGTERM handling ends the fit.  Under DDP
    (with :class:`ShipslogDDPStrategy`; every process has its own
    ``Preemption`` and this callback) the callback takes the signal back from
    Lightning when training starts, since Lightning's handler runs a
    broadcast from inside the signal handler, which a peer meets in whatever
    collective it is in; at every batch's end the processes then agree
    (:meth:`~shipslog.gpu.Preemption.agree`), so a signal on any process stops
    all of them at that batch, with one final checkpoint when it fits on all.
    """

    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption
        self.distributed = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.distributed = trainer.world_size > 1
        if self.distributed and not isinstance(trainer.strategy, ShipslogDDPStrategy):
            raise ValueError(f"ShipslogPreemption under DDP needs ShipslogDDPStrategy, not {type(trainer.strategy).__name__}: "
                             "the final checkpoint is saved by every process at the same batch")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.distributed:
            self.preemption.reclaim_signals()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.distributed:
            stop = self.preemption.agree()  # every process, every batch: the same answer everywhere
        else:
            stop = self.preemption.requested or getattr(trainer, "received_sigterm", False)
        if not stop or self.preemption.final_saved:
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

    def __init__(self, engine: EngineCore | None, **kwargs: Any) -> None:
        if engine is not None:
            kwargs.setdefault("dirpath", engine.path("checkpoints"))  # elsewhere Lightning sends rank 0's
        super().__init__(**kwargs)
        self.engine = engine

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        # The newest committed checkpoint that verifies: at least as new as what the 'last' pointer names (a kill
        # between a commit and the pointer's move leaves the pointer one save behind).  Distributed: the newest
        # that verifies on every process, chosen by all of them together.
        if trainer.world_size > 1 and not group_view(None)[0] and hasattr(trainer.strategy, "setup_distributed"):
            # Lightning resolves ckpt_path before it sets up the device and joins the process group; both are
            # idempotent, so do them now (the device first: NCCL's collectives run on the current device)
            trainer.strategy.setup_environment()
        if group_view(None)[0] and trainer.world_size > 1:
            candidates = [a.path for a in checkpoints_newest_first(self.engine)] if self.engine is not None else []
            chosen = choose_verified(self.engine, candidates)
            return {chosen[1]} if chosen is not None else set()
        if self.engine is None:
            raise ValueError("ShipslogModelCheckpoint without an engine outside a distributed run: give it the open Engine")
        art = self.engine.latest_checkpoint(deep=True)
        return {self.engine.path(*art.path.split("/"))} if art is not None else set()


class ShipslogDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy whose checkpoint saves are one operation of every process (see the module).

    Takes every ``DDPStrategy`` argument; its checkpoint IO must be a
    :class:`ShipslogCheckpointIO` (rank 0's with the engine, ``None``
    elsewhere).  Lightning's own DDP saves on rank 0 alone; this strategy
    calls :meth:`ShipslogCheckpointIO.save_collective` on every process, so a
    failed or cut-off save raises on all of them alike.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        io = self.checkpoint_io
        if not isinstance(io, ShipslogCheckpointIO):
            raise TypeError(f"ShipslogDDPStrategy saves through ShipslogCheckpointIO; its checkpoint IO is {type(io).__name__} "
                            "(pass plugins=[ShipslogCheckpointIO(engine)])")
        io.save_collective(checkpoint, filepath)
