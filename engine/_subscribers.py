"""Subscribers: callbacks that receive committed records.

Many callbacks per kind, never overwriting each other; each is called after
its record is durable, in seq order, in the thread that journaled it.  A
callback that raises is logged with its traceback and does not stop the
others or the engine.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = ["Subscribers", "Subscription"]

_log = logging.getLogger("shipslog.engine.subscribers")

Callback = Callable[[Any], object]


class Subscription:
    """The handle :meth:`Engine.subscribe` returns; :meth:`cancel` (or ``with``) unsubscribes."""

    def __init__(self, owner: Subscribers, key: int, kinds: frozenset[str] | None) -> None:
        self._owner = owner
        self._key = key
        self.kinds = kinds

    @property
    def active(self) -> bool:
        """True until cancelled (or the engine closed)."""
        return self._owner.has(self._key)

    def cancel(self) -> None:
        """Stop receiving records.  Idempotent."""
        self._owner.remove(self._key)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Subscribers:
    """The registered callbacks, keyed by a private counter so two equal callbacks stay apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: dict[int, tuple[Callback, frozenset[str] | None]] = {}
        self._keys = itertools.count(1)

    def add(self, callback: Callback, kinds: Iterable[str] | None) -> Subscription:
        """Register ``callback`` for records whose event kind is in ``kinds`` (None: every kind)."""
        if not callable(callback):
            raise TypeError(f"a subscriber must be callable, got {type(callback).__name__}")
        wanted = None if kinds is None else frozenset([kinds] if isinstance(kinds, str) else kinds)
        with self._lock:
            key = next(self._keys)
            self._callbacks[key] = (callback, wanted)
        return Subscription(self, key, wanted)

    def has(self, key: int) -> bool:
        with self._lock:
            return key in self._callbacks

    def remove(self, key: int) -> None:
        with self._lock:
            self._callbacks.pop(key, None)

    def clear(self) -> None:
        """Remove every callback (the engine closes)."""
        with self._lock:
            self._callbacks.clear()

    def notify(self, records: Iterable[Any]) -> None:
        """Call every matching callback with each record; a raising callback is logged and skipped."""
        with self._lock:
            if not self._callbacks:
                return
            callbacks = list(self._callbacks.values())
        for record in records:
            kind = record.event.kind if hasattr(record.event, "data") else record.event.__struct_config__.tag
            for callback, kinds in callbacks:
                if kinds is not None and kind not in kinds:
                    continue
                try:
                    callback(record)
                except Exception:  # noqa: BLE001 - a host callback's failure is logged and isolated from the engine
                    _log.exception("subscriber %r raised on record seq %d (%s); it stays subscribed, the engine goes on", callback, record.seq, kind)
