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

In a distributed run the ranks must stop, and save or not, at the same step:
a save is collective, and a rank that stops alone leaves the others waiting
in the next step's collective.  Every rank calls :meth:`Preemption.agree` at
every step's end (one small all-reduce) and uses its answer in place of
``requested``::

    if preemption.agree():          # True on every rank once any rank got the signal
        preemption.final_save(save)  # saves on every rank, or on none
        break

A signal on any rank then stops all of them at the same step, and the final
save runs on every rank only when it fits on every rank.
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
        self._agreed_fit: bool | None = None
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
        with no save timed yet, whether any of it is left.  After a stop :meth:`agree` answered True: the ranks'
        common answer, whether it fits on every rank."""
        if self._agreed_fit is not None:
            return self._agreed_fit
        return self._fits_here()

    def agree(self, group: Any = None) -> bool:
        """In a distributed run: whether any rank of ``group`` (default: the whole job) received a signal.

        Collective: every rank of the group calls it at the same point of
        every step, and every rank gets the same answer.  Once it is True,
        :attr:`requested` is True on every rank (a rank that received no
        signal takes the highest signal a peer received, and its grace period
        starts now), and :meth:`fits` and :meth:`final_save` give every rank
        the same decision: the save fits only when it fits on every rank.
        Raises ``RuntimeError`` when torch.distributed is not initialized.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("Preemption.agree is collective: it needs an initialized torch.distributed process group "
                               "(outside a distributed run, read preemption.requested)")
        backend = str(dist.get_backend(group))
        device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
        # one all-reduce with MAX: the highest signal received anywhere, and whether the save misses anywhere
        flags = torch.tensor([self.signum or 0, 0 if self._fits_here() else 1], dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
        signum, misses = (int(v) for v in flags.tolist())
        if signum == 0:
            self._agreed_fit = None
            return False
        if self.signum is None:
            self.signum, self.received_at = signum, time.monotonic()
            _log.warning("another rank received %s: stopping at this step with every rank", signal.Signals(signum).name)
        self._agreed_fit = not misses
        return True

    def _fits_here(self) -> bool:
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

    def reclaim_signals(self) -> None:
        """Inside the block, on the main thread: make this context's handler the one for its signals again.

        For a framework that installs its own handler after the block was
        entered (Lightning does when a fit starts); the signals then only set
        :attr:`requested` again, as the module says."""
        if not self._previous:
            raise RuntimeError("Preemption.reclaim_signals works inside the Preemption block only")
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("Preemption.reclaim_signals must run on the main thread (signal handlers can only be set there)")
        for signum in self.signals:
            signal.signal(signum, self._handle)

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
