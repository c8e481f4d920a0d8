"""The narrow contexts an operation is given: what its forward path and its recovery may use.

An operation module (the built-ins and a host's own alike) never sees the
engine core.  Its forward path is handed an :class:`OperationContext`: the
journal's append, the file system, root-relative path resolution and the
current state.  Its recovery executors are handed a :class:`RecoveryContext`,
which adds the two things only recovery does: moving an entry aside to
``quarantine/`` and marking that a file effect happened (a crash point the
crash harness kills at).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shipslog.journal import FileSystem

if TYPE_CHECKING:
    from ._events import Event
    from ._registry import EventRecord
    from ._state import EngineState

__all__ = ["OperationContext", "RecoveryContext"]


class OperationContext(Protocol):
    """What an operation's forward path may use (an open engine provides it).

    Guarantees: :meth:`journal_events` returns only after the events are
    durable and applied to :attr:`state` (all of them or none: one frame);
    :attr:`fs` is the engine's file system, so every file effect is seen by
    recording and fault-injecting file systems; :meth:`path` never leaves
    the root for the names the engine validated.
    """

    @property
    def root(self) -> str:
        """The absolute path of the root."""
        ...

    @property
    def fs(self) -> FileSystem:
        """The file system every file effect goes through."""
        ...

    @property
    def state(self) -> EngineState:
        """The state as of the last durable record (an immutable value)."""
        ...

    @property
    def session(self) -> str:
        """The id of this opening of the root."""
        ...

    @property
    def broken(self) -> BaseException | None:
        """The failure that broke the engine, or None."""
        ...

    @property
    def closed(self) -> bool:
        """True once the engine was closed."""
        ...

    def path(self, *parts: str) -> str:
        """The absolute path of ``parts`` under the root (``ctx.path("checkpoints", name)`` or ``ctx.path(rel)``)."""
        ...

    def journal_events(
        self, *events: Event, check: Callable[[EngineState], None] | None = None, sync: bool = True
    ) -> list[EventRecord]:
        """Durably append ``events`` as one frame and apply them (``check`` runs first, under the lock)."""
        ...

    def new_op_id(self, op_type: str) -> str:
        """A fresh operation id for ``op_type``, unique across sessions."""
        ...

    def preflight(self, needed: int, what: str) -> None:
        """Refuse ``what`` before any write when the disk lacks ``needed`` bytes."""
        ...

    def check_usable(self) -> None:
        """Raise when the engine is closed or broken."""
        ...


class RecoveryContext(OperationContext, Protocol):
    """What a recovery executor may use: the operation context, plus quarantine and the effect mark.

    An executor is called with the operation as the state holds it now (never
    an operation already settled) and must be idempotent: a crash anywhere in
    it is recovered by planning again from the journal.  It journals the
    operation's closing event itself and returns one line saying what it did.
    """

    def quarantine(self, rel: str) -> str:
        """Move root-relative ``rel`` into ``quarantine/`` durably (never deleted); return a line saying where."""
        ...

    def effect_done(self) -> None:
        """Mark that a file effect of this action happened and its closing record is not yet journaled."""
        ...
