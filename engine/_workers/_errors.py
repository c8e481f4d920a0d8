"""The errors of worker supervision: a worker configuration that is not valid, a supervisor misused or unable to end a worker.

Guarantee: both derive from :class:`~shipslog.engine.EngineError` (so from
``ShipslogError``) and from the builtin they resemble (``ValueError``,
``RuntimeError``), so a caller may catch either.
"""

from __future__ import annotations

from .._errors import EngineError

__all__ = ["SupervisorError", "WorkerConfigError"]


class WorkerConfigError(EngineError, ValueError):
    """A worker configuration is not valid: an unknown key, a wrong type, a value out of range.

    The message names the key and what was expected.
    """


class SupervisorError(EngineError, RuntimeError):
    """A supervisor was used the wrong way (started twice, started after stop) or a worker could not be ended."""
