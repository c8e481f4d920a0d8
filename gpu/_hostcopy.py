"""Device-to-host snapshots of a (nested) state dict into reusable host buffers.

A checkpoint must capture the training state at one step without stopping
training for the whole save.  :class:`HostSnapshot` copies every tensor of a
state into host buffers that are allocated once per (name, shape, dtype) and
reused by later snapshots, so the training loop pays only for the copy; the
slow part (writing and fsyncing the files) then runs from the host buffers,
on another thread, while training goes on.

On CUDA the buffers are pinned (page-locked) and the copies are issued with
``non_blocking=True`` on a side :class:`torch.cuda.Stream`.  The side stream
first waits for the work already queued on each source device's current
stream (so it copies the values of this step), and each source tensor is
marked as used by the side stream (so the caching allocator does not hand its
memory out again before the copy ran).  Then either

* ``take(state)`` (``wait=True``, the default) synchronizes the copy before
  returning: the caller's loop is blocked for the copy only; or
* ``take(state, wait=False)`` returns at once; the current streams of the
  source devices are made to wait for the copy on the GPU (so a later
  optimizer step cannot overwrite a parameter before it was copied, without
  blocking the CPU), and whoever reads the buffers (the persisting thread)
  must call :meth:`HostSnapshot.wait` first.

On the CPU the copies are plain ``copy_`` into the reused buffers.

The buffers belong to the snapshot object: a later ``take`` overwrites them,
so the caller must be done with one snapshot (its files written) before taking
the next.  One save in flight at a time is the intended use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import torch

from ._errors import StateDictError

__all__ = ["HostSnapshot"]

_log = logging.getLogger("shipslog.gpu.hostcopy")

_Key = tuple[str, tuple[int, ...], torch.dtype]


class HostSnapshot:
    """Copies state dicts from their devices into host buffers reused across snapshots.

    Guarantee: after :meth:`take` returns (and, with ``wait=False``, after
    :meth:`wait` returns) the returned structure holds, for every tensor of the
    state, a host tensor equal to the source's value at the time of the call,
    in the same nested structure (dicts, lists, tuples; other leaves are
    copied as they are).  Buffers are allocated once per
    (flat name, shape, dtype) and reused; a buffer is pinned when its source
    is on a CUDA device.  ``pin_memory=False`` turns pinning off.
    """

    def __init__(self, *, pin_memory: bool = True) -> None:
        self.pin_memory = pin_memory
        self._buffers: dict[str, torch.Tensor] = {}
        self._streams: dict[int, Any] = {}
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self.allocations = 0
        """Host buffers allocated so far (a buffer reused by a later snapshot is not counted again)."""
        self.bytes_copied = 0
        """Bytes copied by the last :meth:`take`."""

    @property
    def buffer_bytes(self) -> int:
        """The bytes of host memory the buffers hold now."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def _buffer(self, name: str, src: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is not None and buf.shape == src.shape and buf.dtype == src.dtype:
            return buf
        pin = self.pin_memory and src.device.type == "cuda" and torch.cuda.is_available()
        buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=pin)
        self._buffers[name] = buf
        self.allocations += 1
        return buf

    def _side_stream(self, device: torch.device) -> Any:
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = self._streams.get(index)
        if stream is None:
            stream = torch.cuda.Stream(device=index)  # type: ignore[no-untyped-call]
            self._streams[index] = stream
        return stream

    def _copy(self, value: Any, path: str, seen: set[str]) -> Any:
        if isinstance(value, torch.Tensor):
            if path in seen:
                raise StateDictError(path, "each tensor at a distinct flat name", "two entries with the same name", hint="rename one of the keys")
            seen.add(path)
            if value.layout != torch.strided or value.device.type == "meta":
                raise StateDictError(path, "a dense tensor with data", f"layout {value.layout} on {value.device}")
            src = value.detach()
            buf = self._buffer(path, src)
            if src.device.type == "cuda":
                stream = self._side_stream(src.device)
                with torch.cuda.stream(stream):
                    buf.copy_(src, non_blocking=True)
                src.record_stream(stream)
            else:
                buf.copy_(src)
            self.bytes_copied += buf.numel() * buf.element_size()
            return buf
        if isinstance(value, Mapping):
            return {k: self._copy(v, f"{path}.{k}" if path else str(k), seen) for k, v in value.items()}
        if isinstance(value, list):
            return [self._copy(v, f"{path}.{i}" if path else str(i), seen) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(self._copy(v, f"{path}.{i}" if path else str(i), seen) for i, v in enumerate(value))
        return value

    def take(self, state: Mapping[str, Any], *, wait: bool = True) -> dict[str, Any]:
        """Copy ``state`` into the host buffers and return it rebuilt from them.

        With ``wait=True`` the copies are complete when this returns.  With
        ``wait=False`` (CUDA sources) the copies may still be running: call
        :meth:`wait` before reading the result.  A later call reuses (and
        overwrites) the same buffers.
        """
        if not isinstance(state, Mapping):
            raise StateDictError("<root>", "a mapping (a state dict)", f"a value of type {type(state).__name__}")
        with self._lock:
            self.wait()
            self.bytes_copied = 0
            devices = _cuda_devices(state)
            for device in devices:
                self._side_stream(device).wait_stream(torch.cuda.current_stream(device))
            out: dict[str, Any] = self._copy(state, "", set())
            for device in devices:
                stream = self._side_stream(device)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
                torch.cuda.current_stream(device).wait_event(event)
                self._pending.append(event)
            if wait:
                self.wait()
            _log.debug("snapshot of %d bytes into %d host buffers (wait=%s)", self.bytes_copied, len(self._buffers), wait)
            return out

    def wait(self) -> None:
        """Block until every copy of the last :meth:`take` has finished (a no-op on the CPU)."""
        pending, self._pending = self._pending, []
        for event in pending:
            event.synchronize()

    def release(self) -> None:
        """Wait for pending copies, then drop every host buffer (the next snapshot allocates again)."""
        self.wait()
        self._buffers.clear()


def _cuda_devices(value: Any) -> list[torch.device]:
    found: dict[torch.device, None] = {}
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.device.type == "cuda":
                index = item.device.index if item.device.index is not None else torch.cuda.current_device()
                found[torch.device("cuda", index)] = None
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return list(found)
