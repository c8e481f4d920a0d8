"""The built-in operation types: each declared in its own module, through the same public mechanism a host uses."""

from __future__ import annotations

from typing import Any

from ._checkpoint import CHECKPOINT, CheckpointState
from ._consolidation import CONSOLIDATION
from ._optypes import OperationType
from ._pointer import POINTER, PointerState
from ._recovery_op import RECOVERY, RecoveryState
from ._retention import RETENTION, RetentionState
from ._run import RUN, RunState
from ._salvage import SALVAGE, SalvageState
from ._session import SESSION, SessionState
from ._workers import WORKER

__all__ = [
    "BUILTIN_OPERATIONS",
    "CHECKPOINT",
    "POINTER",
    "RECOVERY",
    "RETENTION",
    "RUN",
    "SALVAGE",
    "SESSION",
    "CheckpointState",
    "PointerState",
    "RecoveryState",
    "RetentionState",
    "RunState",
    "SalvageState",
    "SessionState",
    "describe_all",
]

BUILTIN_OPERATIONS: tuple[OperationType, ...] = (
    SESSION, CHECKPOINT, POINTER, RETENTION, RUN, RECOVERY, WORKER, CONSOLIDATION, SALVAGE
)
"""Every built-in operation type, always registered."""


def describe_all() -> list[dict[str, Any]]:
    """The built-in tables as plain data."""
    return [t.describe() for t in BUILTIN_OPERATIONS]
