"""The run operation: a training run over one JSONL data file.

The file is validated whole before anything is journaled (exists, non-empty,
every line a JSON object, the required fields present), so a bad file is
never half-trained.  Then ``run.validated`` and ``run.started`` (one frame),
``run.progress`` as training goes, and ``run.finished`` / ``run.failed``.  The
global step is cumulative: a run starts at the step of the newest committed
checkpoint, never at a number kept in an editable side file.  After a crash
the next session journals ``run.interrupted``, so no status says "training"
for a process that is gone.  Its events, table, projection and forward path
live here; its recovery is journal-only (``run.interrupted``, with the step
the run reached).
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from shipslog.journal import crash_point, crc32, register_crash_point

from ._context import OperationContext
from ._errors import ConflictError, DataFileError, InvalidTransitionError
from ._events import Event
from ._fields import decode_json_within, expect_count, expect_relpath
from ._layout import CHECKPOINTS_DIR
from ._optypes import OperationType, Recovery, RecoveryAction
from ._state import EngineState, OpRecord, RunInfo, StateBuilder

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_LINE_DEPTH",
    "RUN",
    "DataFileSummary",
    "Run",
    "RunFailed",
    "RunFinished",
    "RunInterrupted",
    "RunProgress",
    "RunStarted",
    "RunState",
    "RunValidated",
    "start_run",
    "validate_data_file",
]

_replace = msgspec.structs.replace


# -- events --------------------------------------------------------------------------------


class RunValidated(Event, tag="run.validated", frozen=True):
    """The data file was checked whole: ``lines`` JSON lines, ``size`` bytes, ``crc32``, fields present."""

    data_file: str
    lines: int
    size: int
    crc32: int
    required_fields: list[str] = msgspec.field(default_factory=list)


class RunStarted(Event, tag="run.started", frozen=True):
    """Training started at global step ``start_step`` (from committed checkpoint ``checkpoint``)."""

    start_step: int
    checkpoint: str | None = None

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("start_step", self.start_step)
        if self.checkpoint is not None:
            expect_relpath("checkpoint", self.checkpoint, (CHECKPOINTS_DIR,))


class RunProgress(Event, tag="run.progress", frozen=True):
    """The run reached global ``step`` (never below the run's step: the projection checks it)."""

    step: int


class RunFinished(Event, tag="run.finished", frozen=True):
    """The run completed at global ``step``."""

    step: int

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("step", self.step)


class RunFailed(Event, tag="run.failed", frozen=True):
    """The run raised ``error`` at global ``step``."""

    step: int
    error: str


class RunInterrupted(Event, tag="run.interrupted", frozen=True):
    """The run's session ended without finishing it (a crash); recorded by a later session."""

    step: int = 0
    reason: str = ""


# -- states and projection ---------------------------------------------------------------


class RunState(str, enum.Enum):
    """States of a training run over one data file."""

    VALIDATED = "validated"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def _run_validated(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, RunValidated)
    b.runs[op.id] = RunInfo(op=op.id, data_file=ev.data_file, state="validated", session=op.session, first_seq=seq, last_seq=seq)


def _run_started(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, RunStarted)
    b.runs[op.id] = _replace(b.runs[op.id], state="started", start_step=ev.start_step, step=ev.start_step, last_seq=seq)


def _run_progress(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    runs = b.runs
    run = runs[op.id]
    step = ev.step  # type: ignore[attr-defined]
    if step < run.step:
        raise InvalidTransitionError(seq, op.id, "run", run.state, "run.progress", f"step {step} is below the run's step {run.step}")
    runs[op.id] = _replace(run, step=step, last_seq=seq)


def _run_ended(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    state = op.state
    error = ev.error if isinstance(ev, RunFailed) else (ev.reason or None) if isinstance(ev, RunInterrupted) else None
    b.runs[op.id] = _replace(b.runs[op.id], state=state, step=ev.step, error=error, last_seq=seq)  # type: ignore[attr-defined]
    b.trim_runs()


# -- the forward path ------------------------------------------------------------------------

CP_STARTED = register_crash_point("run.after_started", "run.validated and run.started are durable; no progress is journaled")
CP_PROGRESS = register_crash_point("run.after_progress", "a run.progress is durable; the run is still started")


class DataFileSummary(msgspec.Struct, frozen=True):
    """What validation found: absolute ``path``, ``lines`` (records), ``size`` in bytes and ``crc32``."""

    path: str
    lines: int
    size: int
    crc32: int


MAX_LINE_BYTES = 64 * 1024 * 1024
"""Most bytes of one data file line, its line end included.  A longer line is refused after reading at most
this many bytes of it (plus one), never loaded whole."""
MAX_LINE_DEPTH = 64
"""Deepest nesting of arrays and objects in one line (the line's own object is level 1)."""
_SHOWN_KEYS = 20


_PROGRESS_EVERY = 8 << 20
"""How many bytes :func:`validate_data_file` reads between two calls of its progress hook."""


def validate_data_file(
    path: str | os.PathLike[str], required_fields: Sequence[str] = (), *, on_progress: Callable[[int], None] | None = None
) -> DataFileSummary:
    """Check a JSONL data file whole; raise :class:`DataFileError` naming the first bad line.

    Every line must be a JSON object holding every field of
    ``required_fields``; a final newline is optional, and blank lines may end
    the file (trailing ones are not records) but nowhere else.

    Guarantees: the file's bytes are untrusted; for any content this returns
    a summary or raises :class:`DataFileError` (with the line number where a
    line is at fault), nothing else.  A line over :data:`MAX_LINE_BYTES` is
    refused without being read whole; a line nested deeper than
    :data:`MAX_LINE_DEPTH` is refused (checked iteratively after decoding;
    the decoder's own ``RecursionError`` on deeper input becomes the same
    error); invalid UTF-8, NUL bytes and anything else that is not JSON are
    "not JSON".  Time is linear in the file's size and memory bounded by one
    line.  A FIFO or device is refused without blocking on it: the file is
    opened with ``O_NONBLOCK`` and checked to be a regular file before a byte
    is read.  Unreadable files are :class:`DataFileError` too, never a bare
    ``OSError``.  The file is streamed one line at a time; ``on_progress``,
    when given, is called with the bytes read since its last call, about
    every 8 MiB and once at the end (their sum is the file's size when it is
    valid), so a caller can show a progress bar.
    """
    full = os.path.abspath(os.fspath(path))
    fields = list(required_fields)
    limit = MAX_LINE_BYTES
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataFileError(full, None, "it does not exist") from None
    except ValueError:
        raise DataFileError(full, None, "the path contains a NUL character") from None
    except OSError as exc:
        raise DataFileError(full, None, f"it cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataFileError(full, None, "it is not a regular file")
        f = open(fd, "rb")  # noqa: SIM115 - owns fd from here on; the with below closes it
    except OSError as exc:
        os.close(fd)
        raise DataFileError(full, None, f"it cannot be read ({exc.strerror or exc})") from None
    except DataFileError:
        os.close(fd)
        raise
    with f:
        if st.st_size == 0:
            raise DataFileError(full, None, "it is empty")
        crc = 0
        size = 0
        lines = 0
        number = 0
        blank = 0
        reported = 0
        while True:
            try:
                line = f.readline(limit + 1)
            except OSError as exc:
                raise DataFileError(full, number + 1, f"the line cannot be read ({exc.strerror or exc})") from None
            if not line:
                break
            number += 1
            if len(line) > limit:
                raise DataFileError(full, number, f"the line is longer than {limit} bytes, the limit (MAX_LINE_BYTES)")
            crc = crc32(line, crc)
            size += len(line)
            if on_progress is not None and size - reported >= _PROGRESS_EVERY:
                on_progress(size - reported)
                reported = size
            if not line.strip():  # blank: fine at the very end of the file, an error before another line
                blank = blank or number
                continue
            if blank:
                raise DataFileError(full, blank, "the line is blank; every line must be one JSON object (blank lines may only end the file)")
            _check_line(full, number, line, fields)
            lines = number
    if lines == 0:
        raise DataFileError(full, None, "it is empty")
    if on_progress is not None and size > reported:
        on_progress(size - reported)
    return DataFileSummary(path=full, lines=lines, size=size, crc32=crc)


def _check_line(full: str, number: int, line: bytes, fields: list[str]) -> None:
    """Raise :class:`DataFileError` for line ``number`` unless it is one JSON object, within depth, with ``fields``."""
    text = line.rstrip(b"\r\n")
    if not text.strip():
        raise DataFileError(full, number, "the line is blank; every line must be one JSON object")
    try:
        obj = decode_json_within(text, MAX_LINE_DEPTH)
    except msgspec.DecodeError as exc:
        raise DataFileError(full, number, f"the line is not JSON nested at most {MAX_LINE_DEPTH} levels (MAX_LINE_DEPTH): {_cap(str(exc))}") from None
    if not isinstance(obj, dict):
        raise DataFileError(full, number, f"expected a JSON object, found {type(obj).__name__}")
    missing = [k for k in fields if k not in obj]
    if missing:
        keys = sorted(obj)
        shown = repr([_cap(k) for k in keys[:_SHOWN_KEYS]])
        if len(keys) > _SHOWN_KEYS:
            shown = f"{shown[:-1]}, ... ({len(keys)} keys)]"
        raise DataFileError(full, number, f"missing required field(s) {missing}; the line has {shown}")


def _cap(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters, so no message repeats a huge input."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def start_run(
    ctx: OperationContext,
    data_file: str | os.PathLike[str],
    required_fields: Sequence[str] = (),
    on_progress: Callable[[int], None] | None = None,
) -> Run:
    """Validate ``data_file``, then journal validated + started in one frame; see :meth:`Engine.run`."""
    ctx.check_usable()
    if isinstance(required_fields, str):
        required_fields = [required_fields]
    summary = validate_data_file(data_file, required_fields, on_progress=on_progress)
    op = ctx.new_op_id("run")

    def one_at_a_time(state: EngineState) -> None:
        for other in state.ops_of("run"):
            raise ConflictError(f"starting a run over {summary.path}", f"run {other.id} (state {other.state}) over {other.info.get('data_file')}")

    state = ctx.state
    latest = state.latest_checkpoint()
    ctx.journal_events(
        RunValidated(op=op, data_file=summary.path, lines=summary.lines, size=summary.size, crc32=summary.crc32, required_fields=list(required_fields)),
        RunStarted(op=op, start_step=state.global_step, checkpoint=latest.path if latest else None),
        check=one_at_a_time,
    )
    crash_point(CP_STARTED)
    return Run(ctx, op, summary)


class Run:
    """A started training run.  :meth:`progress` as it goes; as a context manager it finishes or fails.

    ``start_step`` is the global step it started from (the newest committed
    checkpoint's); ``step`` the last step journaled.
    """

    def __init__(self, ctx: OperationContext, op: str, summary: DataFileSummary) -> None:
        self._ctx = ctx
        self.op = op
        self.data = summary
        info = ctx.state.runs[op]
        self.start_step = info.start_step
        self.step = info.step
        self._ended: str | None = None

    @property
    def info(self) -> RunInfo:
        """The run as the engine state has it now."""
        return self._ctx.state.runs[self.op]

    def _check(self) -> None:
        if self._ended is not None:
            raise ValueError(f"run {self.op} has already {self._ended}")

    def progress(self, step: int) -> None:
        """Journal that training reached global ``step`` (never below the last one)."""
        self._check()
        self._check_step(step)
        self._ctx.journal_events(RunProgress(op=self.op, step=step))
        self.step = step
        crash_point(CP_PROGRESS)

    def _check_step(self, step: int) -> None:
        if not isinstance(step, int) or isinstance(step, bool) or step < self.step:
            raise ValueError(f"run {self.op}: step must be an integer >= {self.step} (the last journaled step), got {step!r}")

    def finish(self, step: int | None = None) -> None:
        """Journal ``run.finished`` at ``step`` (default: the last step)."""
        self._check()
        step = self.step if step is None else step
        self._check_step(step)
        self._ctx.journal_events(RunFinished(op=self.op, step=step))
        self.step = step
        self._ended = "finished"

    def fail(self, error: str | BaseException) -> None:
        """Journal ``run.failed`` with ``error`` at the last step."""
        self._check()
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self._ctx.journal_events(RunFailed(op=self.op, step=self.step, error=text))
        self._ended = "failed"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._ended is not None:
            return
        if exc is None:
            self.finish()
        elif self._ctx.broken is None and not self._ctx.closed:
            self.fail(exc)


# -- recovery ------------------------------------------------------------------------------


def _interrupted_fields(state: EngineState, op: OpRecord, session: str) -> Mapping[str, Any]:
    run = state.runs.get(op.id)
    return {"step": run.step if run else 0, "reason": f"its session ended without finishing it; found by session {session}"}


# -- the declaration ----------------------------------------------------------------------

RUN = OperationType(
    name="run",
    description="a training run over one JSONL data file, validated whole before it starts",
    states=RunState,
    events=(RunValidated, RunStarted, RunProgress, RunFinished, RunFailed, RunInterrupted),
    begins={"run.validated": RunState.VALIDATED},
    transitions={
        (RunState.VALIDATED, "run.started"): RunState.STARTED,
        (RunState.VALIDATED, "run.failed"): RunState.FAILED,
        (RunState.VALIDATED, "run.interrupted"): RunState.INTERRUPTED,
        (RunState.STARTED, "run.progress"): RunState.STARTED,
        (RunState.STARTED, "run.finished"): RunState.FINISHED,
        (RunState.STARTED, "run.failed"): RunState.FAILED,
        (RunState.STARTED, "run.interrupted"): RunState.INTERRUPTED,
    },
    terminal=frozenset({RunState.FINISHED, RunState.FAILED, RunState.INTERRUPTED}),
    recovery={
        RunState.VALIDATED: Recovery(
            RecoveryAction.ROLL_BACK,
            "its session is gone before training started: journal interrupted",
            "run.interrupted",
            close_fields=_interrupted_fields,
        ),
        RunState.STARTED: Recovery(
            RecoveryAction.ROLL_BACK,
            "its session is gone: journal interrupted; resume from the newest committed checkpoint",
            "run.interrupted",
            close_fields=_interrupted_fields,
        ),
    },
    projections={
        "run.validated": _run_validated,
        "run.started": _run_started,
        "run.progress": _run_progress,
        "run.finished": _run_ended,
        "run.failed": _run_ended,
        "run.interrupted": _run_ended,
    },
    grows={"run.progress": "step"},
)
