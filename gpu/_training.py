"""One call each way for a plain torch training loop: save everything a resume needs, restore the newest that verifies.

A training checkpoint is an ordinary committed checkpoint whose folder holds
one state tree under the prefix ``training`` (see :mod:`._tensorfile`)::

    {"model": model.state_dict(),
     "optimizer": optimizer.state_dict(),        # when given
     "scheduler": scheduler.state_dict(),        # when given
     "rng": {"python": ..., "numpy": ..., "torch": ..., "cuda": [...]},
     "extra": {...}}                             # the caller's tensors and JSON values

Guarantees:

* :func:`save_training` returns once the checkpoint is committed (files and
  manifest fsynced, renamed into ``checkpoints/<name>``, journaled), and
  :func:`save_training_async` once the state is copied to host memory (the
  commit follows on the checkpointer's worker thread);
* :func:`restore_training` loads nothing into the caller's objects unless
  the checkpoint verified in full (every file's size and CRC-32 against its
  MANIFEST, every header and tree) and holds every part asked for; when the
  newest committed checkpoint fails, the failure is logged as an error and
  the one before it is tried, and so on; when none can be used it raises
  :class:`RestoreError` listing why, never reports a fresh start;
* a resumed run continues bit for bit as the uninterrupted one would: the
  RNG states of Python, numpy and torch (CPU and every CUDA device) are saved
  and restored with the rest.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec
import numpy as np
import torch

from shipslog.engine import (
    ArtifactInfo,
    ConflictError,
    EngineCore,
    IntegrityError,
    read_manifest,
    resolve_target,
    verify_folder,
)

from ._async import (
    _PER_TENSOR_MARGIN,
    EXPECTED_BYTES_MARGIN,
    AsyncCheckpointer,
    SaveHandle,
    _state_bytes,
)
from ._errors import GpuError, StateDictError, TensorFileError
from ._tensorfile import load_state_dict, save_state_dict

__all__ = [
    "TRAINING_PREFIX",
    "RestoreError",
    "Restored",
    "capture_rng",
    "checkpoints_newest_first",
    "free_checkpoint_name",
    "load_checkpoint",
    "load_checkpoint_folder",
    "restore_rng",
    "restore_training",
    "rotate_checkpoints",
    "save_training",
    "save_training_async",
    "training_state",
]

_log = logging.getLogger("shipslog.gpu.training")

TRAINING_PREFIX = "training"
"""The file prefix of a training checkpoint's state tree (``training.safetensors``, ``training.tree.json``)."""


class _Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class RestoreError(GpuError, RuntimeError):
    """No committed checkpoint could be restored: each one tried is named with why it failed."""

    def __init__(self, root: str, failures: list[tuple[str, str]]) -> None:
        self.root = root
        self.failures = failures
        listed = "; ".join(f"{path}: {why}" for path, why in failures)
        super().__init__(
            f"no committed checkpoint of {root} could be restored ({len(failures)} tried: {listed}); "
            "nothing was loaded: inspect them with 'shipslog verify --deep', or start the run from scratch on purpose"
        )


class Restored(msgspec.Struct, frozen=True):
    """What :func:`restore_training` restored: the checkpoint (name, folder, step) and the caller's ``extra``."""

    name: str
    path: str
    step: int | None
    extra: dict[str, Any]


# -- the state ---------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The random number generators' states: Python's, numpy's global one, torch's CPU one and every CUDA device's."""
    cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back the states :func:`capture_rng` took (CUDA devices: as many as both this process and the state have)."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(tuple(state["numpy"]))
        torch.set_rng_state(state["torch"].cpu())
        if torch.cuda.is_available():
            for i, cuda in enumerate(state.get("cuda", [])[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda.cpu(), i)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise StateDictError("rng", "the RNG states capture_rng() takes", f"{type(exc).__name__}: {exc}") from exc


def training_state(
    *,
    model: _Stateful,
    optimizer: _Stateful | None = None,
    scheduler: _Stateful | None = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """The state tree a training checkpoint holds (see the module); nothing is copied yet."""
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if rng:
        state["rng"] = capture_rng()
    if extra is not None:
        state["extra"] = dict(extra)
    return state


def free_checkpoint_name(engine: EngineCore, base: str) -> str:
    """``base`` when no checkpoint (committed or in progress) and no folder holds that name, else ``base-2``,
    ``base-3``, ...: a run resumed from an older checkpoint saves its steps again beside the ones it passed over."""
    state = engine.state
    taken = set(state.checkpoints) | {str(op.info.get("name")) for op in state.ops_of("checkpoint")}
    name, n = base, 1
    while name in taken or os.path.lexists(engine.path("checkpoints", name)):
        n += 1
        name = f"{base}-{n}"
    return name


def checkpoints_newest_first(engine: EngineCore) -> list[ArtifactInfo]:
    """The committed checkpoints, newest first by (step, commit seq)."""
    return sorted(engine.state.checkpoints.values(), key=lambda a: (a.step or 0, a.seq), reverse=True)


def rotate_checkpoints(engine: EngineCore, keep: int, *, reason: str) -> list[str]:
    """Delete the committed checkpoints beyond the ``keep`` newest (never a pointer's target) as one retention
    operation; a folder in use by an operation in progress is left for the next call (logged).  Returns the
    root-relative paths deleted."""
    protected = {p.target for p in engine.state.pointers.values()}
    doomed = [a.path for a in checkpoints_newest_first(engine)[keep:] if a.path not in protected]
    if not doomed:
        return []
    try:
        return engine.delete(doomed, reason=reason)
    except ConflictError as exc:
        _log.warning("checkpoints not rotated this time: %s", exc)
        return []


def _expected_bytes(state: Mapping[str, Any]) -> int:
    """The space a save of ``state`` needs, estimated as the async checkpointer estimates it."""
    tensor_bytes, tensors = _state_bytes(state)
    return tensor_bytes + EXPECTED_BYTES_MARGIN + _PER_TENSOR_MARGIN * tensors


# -- saving ------------------------------------------------------------------------------------


def save_training(
    engine: EngineCore,
    name: str | None = None,
    *,
    step: int,
    model: _Stateful,
    optimizer: _Stateful | None = None,
    scheduler: _Stateful | None = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> ArtifactInfo:
    """Save model, optimizer, scheduler, RNG states and ``extra`` as committed checkpoint ``name`` (default
    ``step-<step>``, or ``step-<step>-2``... when a run resumed from an older checkpoint saves a step again) at
    global ``step``; returns once it is committed.

    Raises what the engine's checkpoint raises (a name in use, no space,
    a closed engine) before anything is written, :class:`StateDictError`
    for a value that cannot be saved; a failure while writing aborts the
    checkpoint (staging removed, journaled) and is raised.
    """
    state = training_state(model=model, optimizer=optimizer, scheduler=scheduler, extra=extra, rng=rng)
    name = name or free_checkpoint_name(engine, f"step-{step}")
    with engine.checkpoint(name, step=step, meta=meta, expected_bytes=_expected_bytes(state)) as ck:
        for entry in save_state_dict(state, ck.path, prefix=TRAINING_PREFIX, fs=engine.fs):
            ck.add_file(entry)
    assert ck.info is not None
    return ck.info


def save_training_async(
    checkpointer: AsyncCheckpointer,
    name: str | None = None,
    *,
    step: int,
    model: _Stateful,
    optimizer: _Stateful | None = None,
    scheduler: _Stateful | None = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> SaveHandle | None:
    """:func:`save_training` on ``checkpointer``'s worker: returns once the state is copied to host memory.

    The checkpointer must write the training prefix
    (``AsyncCheckpointer(engine, prefix=TRAINING_PREFIX)``).  Returns the
    :class:`SaveHandle` (``None`` when its policy skipped the save); a
    failure surfaces at the checkpointer's next call.
    """
    if checkpointer.prefix != TRAINING_PREFIX:
        raise ValueError(
            f"the checkpointer writes prefix {checkpointer.prefix!r}; a training checkpoint needs "
            f"AsyncCheckpointer(engine, prefix={TRAINING_PREFIX!r})"
        )
    state = training_state(model=model, optimizer=optimizer, scheduler=scheduler, extra=extra, rng=rng)
    return checkpointer.save(name or free_checkpoint_name(checkpointer.engine, f"step-{step}"), state, step=step, meta=meta)


# -- loading -----------------------------------------------------------------------------------


def load_checkpoint(
    engine: EngineCore, target: str, *, prefix: str = TRAINING_PREFIX, device: str | torch.device = "cpu"
) -> dict[Any, Any]:
    """The state saved in committed checkpoint or model ``target`` (a name or ``checkpoints/<name>``), verified in
    full against its MANIFEST as it is read (every file's size and CRC-32; no unlisted file): one call.

    Raises :class:`~shipslog.engine.NotFoundError` for a target that is not
    committed, :class:`~shipslog.engine.IntegrityError` naming a file that
    does not match, :class:`TensorFileError` for a damaged header or tree.
    """
    engine.check_usable()
    art = resolve_target(engine.state, target)
    return load_checkpoint_folder(engine.path(*art.path.split("/")), prefix=prefix, device=device)


def load_checkpoint_folder(folder: str, *, prefix: str = TRAINING_PREFIX, device: str | torch.device = "cpu") -> dict[Any, Any]:
    """:func:`load_checkpoint` of a committed folder named by path (where no engine is open: the processes other
    than rank 0 of a distributed run), verified in full against its own MANIFEST as it is read."""
    manifest = read_manifest(folder)
    verify_folder(folder, manifest, deep=False)  # every listed file present, of its size, and nothing else
    return load_state_dict(folder, entries=manifest.files, device=device, prefix=prefix)


def restore_training(
    engine: EngineCore,
    *,
    model: _Stateful,
    optimizer: _Stateful | None = None,
    scheduler: _Stateful | None = None,
    name: str | None = None,
    rng: bool = True,
    device: str | torch.device = "cpu",
) -> Restored | None:
    """Load the newest committed training checkpoint that verifies (or checkpoint ``name``) into the given objects.

    Returns what was restored, or ``None`` on a root with no committed
    checkpoint (a fresh start).  A checkpoint that fails (a file that does not
    verify, a part that is missing, state that does not fit the objects) is
    logged as an error and the one before it (by step) is tried; nothing is
    loaded into an object until every part was read and verified.  Raises
    :class:`RestoreError` when checkpoints exist but none can be restored,
    and when ``name`` is given and it cannot be.
    """
    engine.check_usable()
    if name is not None:
        candidates = [resolve_target(engine.state, name)]
    else:
        candidates = checkpoints_newest_first(engine)
    if not candidates:
        return None
    failures: list[tuple[str, str]] = []
    for art in candidates:
        try:
            state = load_checkpoint(engine, art.path, device=device)
            _check_parts(state, optimizer=optimizer, scheduler=scheduler, rng=rng)
            _load_into(state, model=model, optimizer=optimizer, scheduler=scheduler, rng=rng)
        except (IntegrityError, TensorFileError, StateDictError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            failures.append((art.path, why))
            _log.error("checkpoint %s cannot be restored (%s); trying the one before it", art.path, why)
            continue
        extra = state.get("extra", {})
        _log.info("restored %s (step %s)", art.path, art.step)
        return Restored(art.name, art.path, art.step, dict(extra) if isinstance(extra, Mapping) else {})
    raise RestoreError(engine.root, failures)


def _check_parts(state: Any, *, optimizer: object, scheduler: object, rng: bool) -> None:
    """Refuse a state that lacks a part the caller asked to restore (before anything is loaded)."""
    if not isinstance(state, Mapping):
        raise StateDictError("<root>", "a training state (a dict with 'model')", type(state).__name__)
    wanted = ["model", *(["optimizer"] if optimizer is not None else []), *(["scheduler"] if scheduler is not None else [])]
    wanted += ["rng"] if rng else []
    missing = [part for part in wanted if part not in state]
    if missing:
        raise StateDictError("<root>", f"a training state holding {wanted}", f"one without {missing}")


def _check_model(model: _Stateful, saved: Any) -> None:
    """Refuse saved model state whose names or shapes differ from the model's, before any of it is copied in."""
    current = model.state_dict()
    if not isinstance(saved, Mapping):
        raise StateDictError("model", "a model state dict", type(saved).__name__)
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    if missing or unexpected:
        raise StateDictError("model", "the model's own parameter names", f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in current.items():
        other = saved[key]
        if isinstance(value, torch.Tensor) and (not isinstance(other, torch.Tensor) or other.shape != value.shape):
            found = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            raise StateDictError(f"model.{key}", f"a tensor of shape {tuple(value.shape)}", str(found))


def _load_into(state: Mapping[str, Any], *, model: _Stateful, optimizer: _Stateful | None, scheduler: _Stateful | None, rng: bool) -> None:
    """Load each part; a part an object refuses (wrong keys or shapes) is a :class:`StateDictError`.  The model's
    names and shapes are checked first, so a checkpoint that does not fit changes none of its parameters."""
    _check_model(model, state["model"])
    for part, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        try:
            obj.load_state_dict(state[part])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise StateDictError(part, f"a {part} state that fits the {part} given", f"{type(exc).__name__}: {exc}") from exc
    if rng:
        restore_rng(state["rng"])
