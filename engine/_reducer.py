"""The reducer: ``state, record -> state``, pure, checking seq continuity and the transition tables.

:func:`apply` is the pure function on immutable values.  :class:`Reducer` is
the same logic folded over many records on a private builder (how replay
reaches a million records a second); both give the same states, which the
tests check.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable
from typing import Any

import msgspec

from shipslog.journal import JOURNAL_DIR, CorruptRecordError, JournalReader, Position

from ._errors import InvalidFieldError, InvalidTransitionError, UnknownOperationError
from ._events import Event, RawEvent
from ._fields import expect_op_id
from ._names import is_plain_name
from ._registry import KindRule, Registry
from ._state import EngineState, OpRecord, StateBuilder

__all__ = ["Reducer", "SequenceGapError", "apply", "replay"]

_to_builtins = msgspec.to_builtins
_replace = msgspec.structs.replace


class SequenceGapError(InvalidTransitionError):
    """A record's seq is not exactly one more than the state's."""

    def __init__(self, seq: int, expected: int) -> None:
        self.seq = seq
        self.expected = expected
        ValueError.__init__(
            self,
            f"record seq {seq} does not follow the state at seq {expected - 1} (expected seq {expected}); "
            "records must be applied in order, without gaps, starting from the state's seq",
        )


class Reducer:
    """Folds records into a private :class:`StateBuilder`; :meth:`state` freezes the result."""

    __slots__ = ("_builder", "_rules", "registry", "skip_unknown", "skipped", "source")

    def __init__(self, registry: Registry, state: EngineState | None = None, *, skip_unknown: bool = False) -> None:
        self.registry = registry
        self._rules = registry.rules
        self._builder = StateBuilder(state)
        self.source = "journal"
        """Where the records come from (the journal folder), named by :class:`CorruptRecordError`."""
        self.skip_unknown = skip_unknown
        """Whether events of kinds no registered type declares are skipped (read-only views) instead of refused."""
        self.skipped: dict[str, int] = {}
        """With :attr:`skip_unknown`: how many records of each unregistered kind were skipped."""

    @property
    def seq(self) -> int:
        """The seq of the last record applied."""
        return self._builder.seq

    def state(self) -> EngineState:
        """An immutable copy of the state as of :attr:`seq`."""
        return self._builder.freeze()

    def check(self, events: Iterable[Event]) -> None:
        """Raise :class:`InvalidTransitionError` unless ``events``, applied in order next, fit the tables.

        Changes nothing: the engine calls it before it journals, so an event the
        table does not allow is never written.
        """
        ops = self._builder.ops
        pending: dict[str, tuple[str | None, dict[str, Any]]] = {}
        seq = self._builder.seq
        for ev in events:
            seq += 1
            rule = self._rules.get(ev.__class__)
            if rule is None:
                raise ValueError(f"event class {type(ev).__name__} belongs to no registered operation type")
            if ev.op in pending:
                state, info = pending[ev.op]
            else:
                op = ops.get(ev.op)
                state, info = (op.state, op.info) if op is not None else (None, {})
            if state is None:
                if rule.begins is None:
                    raise InvalidTransitionError(seq, ev.op, rule.op_type, None, rule.kind, "no such operation is in progress: it never began, or it already ended")
                expect_op_id("op", ev.op)
                if rule.check is not None:
                    rule.check(ev, None)
                nxt = rule.begins
            else:
                found = rule.moves.get(state)
                if found is None:
                    raise InvalidTransitionError(seq, ev.op, rule.op_type, state, rule.kind)
                if rule.check is not None:
                    rule.check(ev, info)
                nxt = found
            fields = _to_builtins(ev)
            del fields["kind"], fields["op"]
            pending[ev.op] = (None if nxt in rule.terminal else nxt, {**info, **fields})

    def apply_all(self, records: Iterable[Any]) -> None:
        """Apply each record in order (records with ``seq``, ``time``, ``session`` and a decoded ``event``).

        Raises :class:`InvalidTransitionError` at the first record that does
        not fit; the records before it stay applied, that one and later ones
        do not.  (One loop with everything in locals: this is replay's hot path.)
        """
        b = self._builder
        rules = self._rules
        ops = b.ops
        counts = b.op_counts
        expected = b.seq + 1
        # Progress folding: a run of records of a kind its type declares in ``grows`` (a self-loop
        # carrying a field that never decreases), for one op, one after the other, is projected once,
        # with the last of them (when another record comes, or at the end), instead of once per
        # record.  The first record of such a run goes through the full path below; the ones after it
        # skip only what cannot change: the rule (same class), the op (same id, its state a
        # self-loop) and the table.
        fold_cls: Any = None
        fold_op = ""
        fold_get: Any = None
        fold_value = 0
        fold_project: Any = None
        fold_record: Any = None
        fold_rec: Any = None
        try:
            for rec in records:
                if rec.seq != expected:
                    raise SequenceGapError(rec.seq, expected)
                ev = rec.event
                if ev.__class__ is fold_cls and ev.op == fold_op and (value := fold_get(ev)) >= fold_value:
                    fold_value = value
                    fold_rec = rec
                    expected += 1
                    continue
                if fold_rec is not None:
                    b.seq = fold_rec.seq - 1
                    fold_project(b, fold_record, fold_rec.event, fold_rec.seq, fold_rec.time)
                    fold_rec = None
                fold_cls = None
                rule = rules.get(ev.__class__)
                if rule is None:
                    kind = ev.kind if isinstance(ev, RawEvent) else type(ev).__name__
                    if not self.skip_unknown:
                        raise UnknownOperationError([kind])
                    self.skipped[kind] = self.skipped.get(kind, 0) + 1
                    expected += 1
                    continue
                op_id = ev.op
                op = ops.get(op_id)
                if op is None:
                    if rule.begins is None:
                        raise InvalidTransitionError(expected, op_id, rule.op_type, None, rule.kind, "no such operation is in progress: it never began, or it already ended")
                    check = rule.check
                    try:
                        if not is_plain_name(op_id):
                            expect_op_id("op", op_id)
                        if check is not None:
                            check(ev, None)
                    except InvalidFieldError as exc:
                        raise self._corrupt(rule, expected, exc) from exc
                    info = _to_builtins(ev)
                    del info["kind"], info["op"]
                    op = OpRecord(op_id, rule.op_type, rule.begins, expected, expected, rec.session, rec.time, info)
                    ops[op_id] = op
                    counts[rule.op_type] = counts.get(rule.op_type, 0) + 1
                else:
                    state = op.state
                    nxt = rule.moves.get(state)
                    if nxt is None:
                        raise InvalidTransitionError(expected, op_id, op.type, state, rule.kind)
                    check = rule.check
                    if check is not None:
                        try:
                            check(ev, op.info)
                        except InvalidFieldError as exc:
                            raise self._corrupt(rule, expected, exc) from exc
                    if nxt != state:  # a move to itself (progress) changes nothing in the table
                        info = _to_builtins(ev)
                        del info["kind"], info["op"]
                        op = OpRecord(op_id, op.type, nxt, op.first_seq, expected, op.session, rec.time, {**op.info, **info})
                        if nxt in rule.terminal:
                            del ops[op_id]
                        else:
                            ops[op_id] = op
                    elif rule.grows is not None and rule.project is not None:
                        fold_cls = ev.__class__
                        fold_op = op_id
                        fold_get = rule.grows
                        fold_value = fold_get(ev)
                        fold_project = rule.project
                        fold_record = op
                project = rule.project
                if project is not None:
                    b.seq = expected - 1
                    project(b, op, ev, expected, rec.time)
                expected += 1
        finally:
            if fold_rec is not None:
                b.seq = fold_rec.seq - 1
                fold_project(b, fold_record, fold_rec.event, fold_rec.seq, fold_rec.time)
            b.seq = expected - 1

    def _corrupt(self, rule: KindRule, seq: int, exc: InvalidFieldError) -> CorruptRecordError:
        """The error for record ``seq`` whose field failed its rule: the record, the field, the value and what was expected."""
        return CorruptRecordError(self.source, seq, rule.kind, exc.field, exc.value, exc.expected)

    def replay_journal(
        self, journal_dir: str, *, until: int | None = None, start: Position | None = None, end: tuple[int, int] | None = None
    ) -> JournalReader:
        """Apply every record of ``journal_dir`` after :attr:`seq` (up to ``until``); return the reader.

        ``start`` is a frame position at or before the first record wanted (a
        snapshot's).  The reader's ``tail`` tells a torn frame at the end, which
        is not replayed.  Replay allocates millions of short-lived objects and no
        cycles, so the cyclic collector is off while it runs (see the design's
        performance notes).  ``end`` bounds the read of the last segment (see
        :meth:`JournalReader.batches`).
        """
        reg = self.registry
        reader = JournalReader(journal_dir)
        self.source = journal_dir
        collecting = gc.isenabled()
        gc.disable()
        try:
            batches = reader.batches(self.seq + 1, until, start=start, decode=reg.decode_frame, decode_chunk=reg.decode_frames, end=end)
            for batch in batches:
                self.apply_all(batch)
        finally:
            if collecting:
                gc.enable()
        return reader

    def apply(self, rec: Any) -> None:
        """Apply one record; raise :class:`InvalidTransitionError` (state unchanged) when it does not fit."""
        self.apply_all((rec,))


def apply(state: EngineState, record: Any, registry: Registry | None = None) -> EngineState:
    """The pure reducer: the state after ``record``, a new value; ``state`` is not changed.

    Raises :class:`InvalidTransitionError` when the record does not follow
    ``state`` (seq gap, or an event the operation's table does not allow).
    """
    reducer = Reducer(registry or Registry(), state)
    reducer.apply(record)
    return reducer.state()


def replay(
    root: str | os.PathLike[str],
    *,
    until: int | None = None,
    operations: Iterable[Any] = (),
    registry: Registry | None = None,
) -> EngineState:
    """The engine state as of record ``until`` (default: the end), replayed from the first record of ``root``'s journal.

    Read-only: takes no lock and changes no byte, so it is safe on a live host.
    A torn tail (perhaps a write in progress) is not replayed.  Raises
    :class:`~shipslog.journal.CorruptJournalError` for damage and
    :class:`InvalidTransitionError` for a record the tables do not allow.
    """
    reducer = Reducer(registry or Registry(operations), None)
    reducer.replay_journal(os.path.join(os.fspath(root), JOURNAL_DIR), until=until)
    if until is not None and reducer.seq < until:
        raise ValueError(f"the journal of {os.fspath(root)} ends at seq {reducer.seq}, before the requested seq {until}")
    return reducer.state()

