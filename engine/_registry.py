"""The registry of operation types, and the two-step decoding of journal records.

A :class:`Registry` holds the built-in operation types and the user's own.  It
builds one msgspec decoder for a whole frame of records with typed events (the
fast path), and falls back to two steps when a frame holds an event kind it
does not know: the record envelope first, then each event, an unknown one kept
as a :class:`RawEvent` so it stays readable.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import msgspec

from shipslog.journal import Record

from ._builtins import BUILTIN_OPERATIONS
from ._events import Event, RawEvent
from ._fields import MAX_NESTING, nesting_depth
from ._optypes import OperationType, Projection

__all__ = ["EventRecord", "KindRule", "Registry"]


class EventRecord(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A journal record with its event decoded: ``seq``, ``time``, ``session``, ``event``."""

    seq: int
    time: float
    session: str
    event: Event | RawEvent


@dataclass(frozen=True, slots=True)
class KindRule:
    """What the reducer needs for one event kind, precomputed from its operation type."""

    kind: str
    op_type: str
    begins: str | None
    moves: dict[str, str]
    terminal: frozenset[str]
    project: Projection | None
    check: Callable[[Any, Mapping[str, Any] | None], None] | None
    """The event class's ``check_fields`` when it declares one (None: nothing to check)."""
    grows: Callable[[Any], int] | None = None
    """For a kind the type declares in ``grows``: reads the growing field (replay folds such records)."""


class Registry:
    """Operation types by name and event kinds by tag; immutable once built.

    Registering two types with the same name, or two events with the same tag,
    raises ``ValueError``.
    """

    def __init__(self, operations: Iterable[OperationType] = ()) -> None:
        types: dict[str, OperationType] = {}
        for op_type in (*BUILTIN_OPERATIONS, *operations):
            if op_type.name in types and types[op_type.name] is not op_type:
                raise ValueError(f"operation type {op_type.name!r} is registered twice")
            types[op_type.name] = op_type
        self.types: dict[str, OperationType] = types
        self.rules: dict[type, KindRule] = {}
        self.event_classes: dict[str, type[Event]] = {}
        for op_type in types.values():
            for cls in op_type.events:
                kind = cls.__struct_config__.tag
                assert isinstance(kind, str)
                if kind in self.event_classes:
                    raise ValueError(f"event kind {kind!r} is declared by two operation types")
                self.event_classes[kind] = cls
                self.rules[cls] = _rule(op_type, kind, cls)
        classes = tuple(self.event_classes.values())
        union: Any = Union[classes] if len(classes) > 1 else classes[0]  # noqa: UP007 - built at run time
        self._event_decoder = msgspec.msgpack.Decoder(union)
        record_type = msgspec.defstruct(
            "TypedRecord",
            [("seq", int), ("time", float), ("session", str), ("event", union)],
            array_like=True,
            gc=False,
            frozen=True,
        )
        self._frame_decoder = msgspec.msgpack.Decoder(list[record_type])  # type: ignore[valid-type]
        self._chunk_decoder = msgspec.msgpack.Decoder(list[list[record_type]])  # type: ignore[valid-type]
        self._raw_frame_decoder = msgspec.msgpack.Decoder(list[Record])
        self._head_decoder = msgspec.msgpack.Decoder(dict[str, Any])
        self._encoder = msgspec.msgpack.Encoder()

    def op_type(self, name: str) -> OperationType | None:
        """The registered operation type called ``name``."""
        return self.types.get(name)

    def encode(self, event: Event) -> bytes:
        """The journal payload of ``event``; its class must be registered."""
        if type(event) not in self.rules:
            raise ValueError(f"event class {type(event).__name__} belongs to no registered operation type")
        return self._encoder.encode(event)

    def decode_frame(self, payload: bytes) -> list[Any]:
        """Decode one frame into records with typed events (unknown kinds as :class:`RawEvent`).

        Raises ``msgspec.DecodeError`` when the payload is not a list of records at all, or an event does not
        decode (nesting deeper than the decoder allows included).
        """
        try:
            return self._frame_decoder.decode(payload)
        except msgspec.ValidationError:  # an unknown kind, or damage: find out record by record
            try:
                raw = self._raw_frame_decoder.decode(payload)
            except RecursionError:
                raise _too_deep() from None
            return [self.typed(rec) for rec in raw]
        except RecursionError:
            raise _too_deep() from None

    def decode_frames(self, chunk: bytes) -> list[list[Any]]:
        """Decode a msgpack array of frame payloads in one call (the replay fast path).

        Raises ``msgspec.DecodeError`` (the caller then decodes frame by frame
        with :meth:`decode_frame`) when any frame holds an unknown kind or damage.
        """
        return self._chunk_decoder.decode(chunk)

    def typed(self, record: Record) -> Any:
        """One record with its event decoded in two steps: envelope, then event (or :class:`RawEvent`)."""
        return EventRecord(record.seq, record.time, record.session, self.decode_event(bytes(record.event)))

    def decode_event(self, data: bytes) -> Event | RawEvent:
        """The event in ``data``: a registered class, or a :class:`RawEvent` holding its fields.

        Raises ``msgspec.DecodeError`` for anything else, nesting too deep for the decoder included.
        """
        try:
            head = self._head_decoder.decode(data)
        except RecursionError:
            raise _too_deep() from None
        if nesting_depth(head, MAX_NESTING + 1) > MAX_NESTING + 1:  # the event map itself is one level
            raise msgspec.ValidationError(f"the event nests more than {MAX_NESTING} levels deep")
        kind = head.get("kind")
        op = head.get("op")
        if not isinstance(kind, str) or not isinstance(op, str):
            raise msgspec.ValidationError(f"an event needs string fields 'kind' and 'op', found {sorted(head)}")
        if kind in self.event_classes:
            event: Event = self._event_decoder.decode(data)
            return event
        return RawEvent(kind=kind, op=op, data=head)

    def unknown_kinds(self, kinds: Sequence[str]) -> list[str]:
        """The kinds in ``kinds`` that no registered type declares."""
        return [k for k in kinds if k not in self.event_classes]


def _too_deep() -> msgspec.DecodeError:
    return msgspec.DecodeError(f"it is nested deeper than the decoder allows (events nest at most {MAX_NESTING} levels)")


def _rule(op_type: OperationType, kind: str, cls: type[Event]) -> KindRule:
    def value(s: enum.Enum) -> str:
        return str(s.value)

    begins = op_type.begins.get(kind)
    moves = {value(src): value(dst) for (src, k), dst in op_type.transitions.items() if k == kind}
    return KindRule(
        kind=kind,
        op_type=op_type.name,
        begins=value(begins) if begins is not None else None,
        moves=moves,
        terminal=frozenset(value(s) for s in op_type.terminal),
        project=op_type.projections.get(kind),
        check=cls.check_fields if cls.check_fields is not Event.check_fields else None,
        grows=operator.attrgetter(op_type.grows[kind]) if kind in op_type.grows else None,
    )
