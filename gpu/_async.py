"""An asynchronous checkpointer: snapshot on the caller's thread, persist through the engine on one worker.

:class:`AsyncCheckpointer` splits a checkpoint save in two:

1. on the caller's thread, :meth:`AsyncCheckpointer.save` validates the
   state, begins the engine's checkpoint operation
   (``engine.checkpoint(name, step=..., meta=..., expected_bytes=...)``: the
   name check, the conflict check, the free-space preflight and
   ``checkpoint.begun`` all happen here, so their errors are raised by
   ``save`` itself, before any background work), and copies every tensor into
   host buffers reused from one save to the next (:class:`HostSnapshot`);
2. on one background thread, the host copy is written into the checkpoint's
   staging folder with :func:`save_state_dict` (checksummed while written),
   each file is recorded with ``writer.add_file``, and ``writer.commit()``
   writes the manifest last and journals ``checkpoint.durable`` and
   ``checkpoint.committed``.  On any failure the writer is aborted (staging
   removed, ``checkpoint.aborted`` journaled) and the failure is kept.

At most one save is in flight: the next ``save`` waits for it (policy
``"wait"``) or returns ``None`` without doing anything (policy ``"skip"``).
That is also what keeps the host buffers from being overwritten while the
worker reads them.  A failed background save is never lost: it is raised, as
:class:`AsyncSaveError`, by the next :meth:`~AsyncCheckpointer.save`,
:meth:`~AsyncCheckpointer.wait` or :meth:`~AsyncCheckpointer.close` (once;
the call after that works again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from shipslog.engine import ArtifactInfo, CheckpointWriter, EngineCore

from ._errors import GpuError
from ._hostcopy import HostSnapshot
from ._tensorfile import DEFAULT_SHARD_BYTES, _check_prefix, _flatten, save_state_dict

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = [
    "EXPECTED_BYTES_MARGIN",
    "AsyncCheckpointer",
    "AsyncSaveError",
    "CheckpointerClosedError",
    "SaveHandle",
    "SaveTimeoutError",
]

_log = logging.getLogger("shipslog.gpu.async")

EXPECTED_BYTES_MARGIN = 1 << 20
"""Bytes added to a state's tensor bytes for the free-space preflight (headers, index, tree, manifest)."""
_PER_TENSOR_MARGIN = 512

Policy = Literal["wait", "skip"]


class AsyncSaveError(GpuError, RuntimeError):
    """A background save failed; its checkpoint was aborted and nothing of it is loadable.

    ``name``, ``step`` and ``op`` identify the failed checkpoint, ``error`` is
    the failure itself (also the ``__cause__``).  Raised by the
    :class:`AsyncCheckpointer` call that came after the failure (``save``,
    ``wait`` or ``close``); a ``save`` that raises it started nothing.
    """

    def __init__(self, name: str, step: int, op: str, error: BaseException, *, aborted: bool) -> None:
        self.name = name
        self.step = step
        self.op = op
        self.error = error
        self.aborted = aborted
        undone = (
            "its staging folder was removed and checkpoint.aborted journaled"
            if aborted
            else "it could not be aborted now (see the log); recovery settles it when the root is opened again"
        )
        super().__init__(
            f"background save of checkpoint {name!r} (step {step}, op {op}) failed: expected it committed, "
            f"found {type(error).__name__}: {error}; {undone}; the call that raised this started nothing: "
            "fix the cause (free space, the state, the disk) and save again"
        )


class CheckpointerClosedError(GpuError, RuntimeError):
    """The :class:`AsyncCheckpointer` was closed; nothing was saved."""

    def __init__(self, root: str) -> None:
        self.root = root
        super().__init__(
            f"the async checkpointer for {root} is closed: expected an open checkpointer, found a closed one; "
            "create a new AsyncCheckpointer to save again"
        )


class SaveTimeoutError(GpuError, TimeoutError):
    """:meth:`SaveHandle.result` timed out; the save is still running and will finish or fail on its own."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(
            f"checkpoint {name!r}: expected the background save to finish within {timeout} s, found it still "
            "running; wait again, or call AsyncCheckpointer.wait() to block until it ends"
        )


class SaveHandle:
    """One background save: poll it with :meth:`done`, block on it with :meth:`result`.

    Set by the worker thread only; safe to read from any thread.
    """

    def __init__(self, name: str, step: int, op: str) -> None:
        self.name = name
        self.step = step
        self.op = op
        """The engine operation id of the checkpoint (``checkpoint-<session>-<n>``)."""
        self._event = threading.Event()
        self._info: ArtifactInfo | None = None
        self._error: AsyncSaveError | None = None
        self.persist_s: float | None = None
        """Seconds the background part took (write, checksums, manifest, commit), once done."""

    def __repr__(self) -> str:
        state = "failed" if self._error else "committed" if self._info else "running"
        return f"<SaveHandle {self.name!r} step={self.step} {state}>"

    def done(self) -> bool:
        """True once the save committed or failed."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> ArtifactInfo:
        """Block until the save ends; return the committed :class:`ArtifactInfo`.

        Raises :class:`AsyncSaveError` when it failed (the checkpointer still
        raises the same failure at its next call), and :class:`SaveTimeoutError`
        when ``timeout`` seconds pass first.
        """
        if not self._event.wait(timeout):
            assert timeout is not None
            raise SaveTimeoutError(self.name, timeout)
        if self._error is not None:
            raise self._error
        assert self._info is not None
        return self._info

    def _finish(self, info: ArtifactInfo | None, error: AsyncSaveError | None, seconds: float) -> None:
        self._info = info
        self._error = error
        self.persist_s = seconds
        self._event.set()


class _Job:
    """A save in flight: its handle and the worker thread running it."""

    def __init__(self, handle: SaveHandle, thread: threading.Thread) -> None:
        self.handle = handle
        self.thread = thread


def _state_bytes(state: Mapping[str, Any]) -> tuple[int, int]:
    """(bytes, count) of every tensor and numpy array in a nested state."""
    total = 0
    count = 0
    stack: list[Any] = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
            count += 1
        elif isinstance(item, np.ndarray):
            total += item.nbytes
            count += 1
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total, count


def _own_leaves(src: Any, snap: Any) -> Any:
    """``snap`` (a :meth:`HostSnapshot.take` of ``src``) with the caller's containers' types restored
    (OrderedDict stays OrderedDict) and numpy arrays copied, so nothing in it is shared with ``src``.
    """
    if isinstance(src, torch.Tensor):
        return snap
    if isinstance(src, np.ndarray):
        return np.array(src, copy=True)
    if isinstance(src, Mapping):
        items = [(key, _own_leaves(value, snap[key])) for key, value in src.items()]
        return OrderedDict(items) if isinstance(src, OrderedDict) else dict(items)
    if isinstance(src, tuple):
        return tuple(_own_leaves(a, b) for a, b in zip(src, snap))
    if isinstance(src, list):
        return [_own_leaves(a, b) for a, b in zip(src, snap)]
    return snap


class AsyncCheckpointer:
    """Saves training state as engine checkpoints with one save in flight, blocking only for the host copy.

    Guarantees:

    * ``save`` returns only after every tensor of the state was copied into
      host buffers (on CUDA: the copies are queued on a side stream that the
      training streams wait for, so later steps cannot change what is saved):
      the caller may change its tensors as soon as it returns;
    * the name check, conflict check, free-space preflight and
      ``checkpoint.begun`` run in ``save`` itself; when they fail, ``save``
      raises and nothing is journaled, written or started;
    * a checkpoint is loadable only once committed by the engine (manifest
      last, ``checkpoint.durable`` then ``checkpoint.committed``); a failed
      background save is aborted (staging removed, ``checkpoint.aborted``)
      and its failure is raised, as :class:`AsyncSaveError`, by the next
      ``save``, ``wait`` or ``close``, exactly once;
    * at most one background thread exists, and ``close`` joins it.

    ``policy="wait"``: a ``save`` while one is in flight waits for it first.
    ``policy="skip"``: it returns ``None`` and does nothing (logged at INFO).
    The engine must stay open until :meth:`close` returns.  All methods are
    thread-safe (calls are serialized).
    """

    def __init__(
        self,
        engine: EngineCore,
        *,
        policy: Policy = "wait",
        pin_memory: bool = True,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        prefix: str = "model",
    ) -> None:
        if policy not in ("wait", "skip"):
            raise ValueError(f"policy must be 'wait' or 'skip', got {policy!r}")
        if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes <= 0:
            raise ValueError(f"shard_bytes must be a positive number of bytes, got {shard_bytes!r}")
        _check_prefix(prefix)
        self.engine = engine
        self.policy: Policy = policy
        self.shard_bytes = shard_bytes
        self.prefix = prefix
        self.snapshot = HostSnapshot(pin_memory=pin_memory)
        self._lock = threading.RLock()
        self._job: _Job | None = None
        self._error: AsyncSaveError | None = None
        self._last: ArtifactInfo | None = None
        self._closed = False
        self.skipped = 0
        """Saves skipped (policy ``"skip"``) because one was in flight."""
        self.last_blocking_s: float | None = None
        """Seconds the last started ``save`` blocked its caller."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "saving" if self.in_flight else "idle"
        return f"<AsyncCheckpointer {self.engine.root} policy={self.policy} {state}>"

    @property
    def in_flight(self) -> bool:
        """True while a background save is running."""
        job = self._job
        return job is not None and not job.handle.done()

    # -- the caller's side --------------------------------------------------------------

    def save(self, name: str, state: Mapping[str, Any], *, step: int, meta: Mapping[str, Any] | None = None) -> SaveHandle | None:
        """Snapshot ``state`` and persist it in the background as checkpoint ``name`` at global ``step``.

        Returns the :class:`SaveHandle`, or ``None`` when policy ``"skip"``
        skipped it.  Raises, before anything is started: :class:`AsyncSaveError`
        for an earlier background save that failed, :class:`StateDictError`
        for a state that cannot be saved, and the engine's errors
        (:class:`InvalidNameError`, :class:`ConflictError`,
        :class:`InsufficientSpaceError`, ``ValueError`` for a bad step or meta).
        """
        with self._lock:
            if self._closed:
                raise CheckpointerClosedError(self.engine.root)
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"step must be a non-negative integer (the global training step), got {step!r}")
            if self.in_flight and self.policy == "skip":
                assert self._job is not None
                self.skipped += 1
                _log.info(
                    "skipped checkpoint %r (step %d): checkpoint %r is still being saved (policy 'skip')",
                    name, step, self._job.handle.name,
                )
                return None
            self._collect(block=True)
            self._raise_failure()
            t0 = time.perf_counter()
            _flatten(state)  # every StateDictError is raised here, before the engine hears of the save
            tensor_bytes, tensors = _state_bytes(state)
            expected = tensor_bytes + EXPECTED_BYTES_MARGIN + _PER_TENSOR_MARGIN * tensors
            writer = self.engine.checkpoint(name, step=step, meta=meta, expected_bytes=expected)
            try:
                host = _own_leaves(state, self.snapshot.take(state, wait=False))
            except BaseException as exc:
                _abort(writer, f"the host snapshot failed: {type(exc).__name__}: {exc}")
                raise
            handle = SaveHandle(name, step, writer.op)
            thread = threading.Thread(
                target=self._persist, args=(handle, writer, host), name=f"shipslog-save-{name}", daemon=True
            )
            try:
                thread.start()
            except BaseException as exc:
                _abort(writer, f"the worker thread could not start: {type(exc).__name__}: {exc}")
                raise
            self._job = _Job(handle, thread)
            self.last_blocking_s = time.perf_counter() - t0
            _log.debug("checkpoint %r (step %d, %d bytes): snapshot taken in %.4f s, persisting", name, step, tensor_bytes, self.last_blocking_s)
            return handle

    def wait(self) -> ArtifactInfo | None:
        """Block until the save in flight ends; return the newest committed checkpoint of this checkpointer.

        Returns ``None`` when none committed yet.  Raises :class:`AsyncSaveError`
        when the last save failed (once; the next call works again).
        """
        with self._lock:
            self._collect(block=True)
            self._raise_failure()
            return self._last

    def close(self) -> None:
        """Wait for the save in flight, join the worker and drop the host buffers.  Idempotent.

        Raises :class:`AsyncSaveError` when the last save failed (and was not
        raised yet); the checkpointer is closed either way.  The engine is not
        closed.
        """
        with self._lock:
            if self._closed:
                return
            try:
                self._collect(block=True)
            finally:
                self._closed = True
                self.snapshot.release()
            self._raise_failure()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collect(self, *, block: bool) -> None:
        """Take in the finished (with ``block``: the in-flight) job: join its thread, keep its outcome."""
        job = self._job
        if job is None or (not block and not job.handle.done()):
            return
        job.thread.join()
        self._job = None
        handle = job.handle
        if handle._error is not None:
            self._error = handle._error
        else:
            self._last = handle._info

    def _raise_failure(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    # -- the worker's side --------------------------------------------------------------

    def _persist(self, handle: SaveHandle, writer: CheckpointWriter, host: dict[str, Any]) -> None:
        """Write ``host`` into the writer's staging folder and commit; on failure abort and keep the error."""
        t0 = time.perf_counter()
        committing = False
        try:
            self.snapshot.wait()  # CUDA: the side-stream copies must be complete before the bytes are read
            entries = save_state_dict(host, writer.path, shard_bytes=self.shard_bytes, prefix=self.prefix, fs=self.engine.fs)
            for entry in entries:
                writer.add_file(entry)
            committing = True
            info = writer.commit()  # aborts by itself when it fails before the folder is committed
        except BaseException as exc:  # noqa: BLE001  (kept, and raised by the checkpointer's next call)
            if not committing:
                _abort(writer, f"failed: {type(exc).__name__}: {exc}")
            aborted = handle.op not in self.engine.state.ops and handle.name not in self.engine.state.checkpoints
            error = AsyncSaveError(handle.name, handle.step, handle.op, exc, aborted=aborted)
            error.__cause__ = exc
            _log.error("%s", error)
            handle._finish(None, error, time.perf_counter() - t0)
            return
        seconds = time.perf_counter() - t0
        _log.info("checkpoint %r (step %d) committed at %s in %.3f s after the snapshot", handle.name, handle.step, info.path, seconds)
        handle._finish(info, None, seconds)


def _abort(writer: CheckpointWriter, reason: str) -> None:
    """Abort ``writer`` (staging removed, checkpoint.aborted journaled); a failure to do so is logged, for recovery."""
    try:
        writer.abort(reason)
    except Exception as exc:  # noqa: BLE001  (logged; recovery settles the checkpoint on the next open)
        _log.error(
            "could not abort checkpoint %r (op %s; %s): %s; recovery settles it when the root is opened again",
            writer.name, writer.op, reason, exc,
        )
