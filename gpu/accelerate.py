"""Hugging Face Accelerate on shipslog: ``save_state`` / ``load_state`` committed and verified through the engine.

Use::

    engine = shipslog.Engine.open(root)
    accelerator = Accelerator()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    states = ShipslogAccelerate(accelerator, engine, total_limit=3)
    restored = states.load_state()            # the newest checkpoint that verifies; None on a fresh root
    ...
    states.save_state(step=step)              # committed when it returns; then retention

Guarantees (on top of Accelerate's own):

* ``save_state`` has Accelerate write its usual files (model weights,
  optimizer, scheduler, sampler, scaler and RNG states) into the
  operation's staging folder; they are checksummed and fsynced with the
  MANIFEST, renamed into ``checkpoints/<name>`` and journaled, so a kill
  during a save never leaves a folder that ``load_state`` picks up;
* ``total_limit`` is honoured by the engine's retention after the commit
  (journaled first, never the newest checkpoint or a pointer's target),
  never before the new save is durable;
* ``load_state`` loads the newest committed checkpoint whose every file
  verifies against its MANIFEST (older ones are tried, with a logged error,
  when it does not), never the highest-numbered folder unchecked.  Some of
  Accelerate's files are pickles (its RNG states); they are read only after
  their checksums matched what was written at save time, which guards
  against damage, not against someone who can write the root.

``ProjectConfiguration(automatic_checkpoint_naming=True)`` is refused: the
engine names and rotates the checkpoints.  Import this module only with
Accelerate installed (``pip install 'shipslog[accelerate]'``).
"""

from __future__ import annotations

import logging
from typing import Any

from shipslog.engine import (
    ArtifactInfo,
    EngineCore,
    IntegrityError,
    MissingDependencyError,
    resolve_target,
    verify_folder,
)

try:
    from accelerate import Accelerator  # type: ignore[import-untyped]
except ImportError as _exc:
    raise MissingDependencyError("accelerate", "accelerate") from _exc

from ._training import (
    RestoreError,
    checkpoints_newest_first,
    free_checkpoint_name,
    rotate_checkpoints,
)

__all__ = ["ShipslogAccelerate"]

_log = logging.getLogger("shipslog.gpu.accelerate")


class ShipslogAccelerate:
    """``save_state`` / ``load_state`` of ``accelerator`` through ``engine`` (see the module).

    ``total_limit`` (default: the accelerator's project configuration's)
    keeps that many newest checkpoints.  The engine stays open for this
    object's life; the caller closes it.
    """

    def __init__(self, accelerator: Accelerator, engine: EngineCore, *, total_limit: int | None = None) -> None:
        config = accelerator.project_configuration
        if config.automatic_checkpoint_naming:
            raise ValueError(
                "ProjectConfiguration(automatic_checkpoint_naming=True) writes and deletes checkpoint folders itself; "
                "turn it off: the engine names and rotates the checkpoints (pass total_limit here)"
            )
        if total_limit is None:
            total_limit = config.total_limit
        if total_limit is not None and (isinstance(total_limit, bool) or not isinstance(total_limit, int) or total_limit < 1):
            raise ValueError(f"total_limit must be 1 or more (or None: keep every checkpoint), got {total_limit!r}")
        self.accelerator = accelerator
        self.engine = engine
        self.total_limit = total_limit

    def save_state(self, name: str | None = None, *, step: int, meta: dict[str, Any] | None = None) -> ArtifactInfo:
        """Accelerate's ``save_state`` as committed checkpoint ``name`` (default ``step-<step>``) at ``step``;
        returns once it is committed, then applies ``total_limit``."""
        name = name or free_checkpoint_name(self.engine, f"step-{step}")
        with self.engine.checkpoint(name, step=step, meta={"framework": "accelerate", **(meta or {})}) as ck:
            self.accelerator.save_state(output_dir=ck.path)
        assert ck.info is not None
        if self.total_limit is not None:
            rotate_checkpoints(self.engine, self.total_limit, reason=f"total_limit={self.total_limit}")
        return ck.info

    def load_state(self, name: str | None = None) -> ArtifactInfo | None:
        """Accelerate's ``load_state`` from the newest committed checkpoint that verifies (or from ``name``).

        Returns the checkpoint loaded, or ``None`` on a root with none (a
        fresh start).  Raises :class:`RestoreError` when checkpoints exist
        but none verifies (or ``name`` does not), having loaded nothing.
        """
        self.engine.check_usable()
        if name is not None:
            candidates = [resolve_target(self.engine.state, name)]
        else:
            candidates = checkpoints_newest_first(self.engine)
        if not candidates:
            return None
        failures: list[tuple[str, str]] = []
        for art in candidates:
            folder = self.engine.path(*art.path.split("/"))
            try:
                verify_folder(folder, deep=True)
            except (IntegrityError, OSError) as exc:
                failures.append((art.path, f"{type(exc).__name__}: {exc}"))
                _log.error("checkpoint %s does not verify (%s); trying the one before it", art.path, exc)
                continue
            self.accelerator.load_state(folder)
            _log.info("loaded %s (step %s)", art.path, art.step)
            return art
        raise RestoreError(self.engine.root, failures)
