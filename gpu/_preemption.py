"""Preemption: SIGTERM (a spot instance reclaimed, a scheduler's time limit) turned into a clean, saved stop.

Schedulers send SIGTERM and kill the process after a grace period.  With::

    with shipslog.Engine.open(root) as engine, Preemption(grace_s=30) as preemption:
        for step in range(start + 1, total + 1):
            train_step()
            if step % 100 == 0:
                preemption.timed(lambda: save_training(engine, step=step, model=model, optimizer=optimizer))
            elif preemption.requested:
                preemption.final_save(lambda: save_training(engine, step=step, model=model, optimizer=optimizer))
            if preemption.requested:
                break
    # leaving the block: the engine is closed cleanly, then the process exits with 128 + the signal (143)

the signal only sets a flag, so a save in progress finishes (a save is never
cut by the handler); at the next step boundary the loop takes one final
checkpoint when it fits in what is left of the grace period (estimated from
the last timed save, with a margin), leaves the block, and the session is
closed cleanly before the process exits with the conventional code.  A final
save that does not fit is skipped (logged), so the kill never lands in the
middle of a save that was not going to finish: the resume starts from the
last complete checkpoint either way.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = ["Preemption"]

_log = logging.getLogger("shipslog.gpu.preemption")

T = TypeVar("T")


class Preemption:
    """A context in which ``signals`` (default SIGTERM) request a saved stop instead of killing (see the module).

    ``grace_s`` is how long the scheduler waits after the signal before it
    kills; ``margin`` multiplies the last timed save's duration when deciding
    whether a final save fits.  Must be entered on the main thread (signal
    handlers can only be installed there).  Leaving the block after a signal
    raises ``SystemExit(128 + signal)``, so outer blocks (the engine) close
    cleanly first; ``exit_on_signal=False`` leaves the exit to the caller.
    """

    def __init__(
        self,
        *,
        grace_s: float = 30.0,
        signals: Sequence[int] = (signal.SIGTERM,),
        margin: float = 1.5,
        exit_on_signal: bool = True,
    ) -> None:
        if grace_s < 0 or margin < 1:
            raise ValueError(f"grace_s must be 0 or more and margin 1 or more, got {grace_s!r} and {margin!r}")
        self.grace_s = grace_s
        self.signals = tuple(signals)
        self.margin = margin
        self.exit_on_signal = exit_on_signal
        self.signum: int | None = None
        """The signal received (None while none was)."""
        self.received_at: float | None = None
        self.last_save_s: float | None = None
        """How long the last :meth:`timed` save took."""
        self.final_saved = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the loop to stop."""
        return self.signum is not None

    def time_left(self) -> float:
        """Seconds left of the grace period since the signal (the whole period before one)."""
        if self.received_at is None:
            return self.grace_s
        return self.grace_s - (time.monotonic() - self.received_at)

    def fits(self) -> bool:
        """Whether a save of the last timed duration (times the margin) fits in what is left of the grace period;
        with no save timed yet, whether any of it is left."""
        left = self.time_left()
        if self.last_save_s is None:
            return left > 0
        return left >= self.last_save_s * self.margin

    def timed(self, save: Callable[[], T]) -> T:
        """Run a regular save and remember how long it took (for :meth:`fits`)."""
        t0 = time.monotonic()
        result = save()
        self.last_save_s = time.monotonic() - t0
        return result

    def final_save(self, save: Callable[[], Any]) -> bool:
        """After a signal: run ``save`` when it fits (see :meth:`fits`); True when it ran."""
        if not self.requested:
            return False
        if not self.fits():
            _log.warning(
                "no final checkpoint: %.1f s of the %.1f s grace period are left and the last save took %s s",
                self.time_left(), self.grace_s, f"{self.last_save_s:.1f}" if self.last_save_s is not None else "?",
            )
            return False
        self.timed(save)
        self.final_saved = True
        _log.info("final checkpoint saved %.1f s after the signal", self.grace_s - self.time_left())
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.received_at = time.monotonic()
            _log.warning("received %s: stopping at the next step with a final checkpoint if it fits", signal.Signals(signum).name)

    def __enter__(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("Preemption must be entered on the main thread (signal handlers can only be set there)")
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self.signum is None or not self.exit_on_signal:
            return
        # A framework that stops on the signal itself (Lightning raises a SystemExit of its own) exits with 0: the
        # conventional code says the process was preempted.
        if exc_type is None or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            raise SystemExit(128 + self.signum)
