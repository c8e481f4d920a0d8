"""The event base: frozen msgspec Structs in one tagged union (``kind``), each naming its operation (``op``).

Each operation declares its own events in its own module (the built-ins in
``_checkpoint``, ``_pointer``, ...; a host in its own).

A journal record's event payload is one of these, msgpack-encoded as a map
(field names included, defaults omitted), so the inspection tool can show an
event of an operation type it does not know as plain data.

The event schema version is :data:`EVENT_SCHEMA_VERSION`; every session writes
it into its ``session.opened`` event, and the reducer refuses a journal whose
sessions wrote a newer one.  Within a version, events only ever gain fields
with defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["EVENT_SCHEMA_VERSION", "Event", "RawEvent"]

EVENT_SCHEMA_VERSION = 1


class Event(msgspec.Struct, tag_field="kind", frozen=True, gc=False, omit_defaults=True, kw_only=True):
    """The base of every event.  ``op`` is the id of the operation the event belongs to.

    Subclass it with ``tag="<type>.<event>"`` to declare the events of your own
    operation types; keep field values msgpack-able and small.
    """

    op: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        """Raise :class:`~shipslog.engine.InvalidFieldError` when a field holds what its operation does not allow.

        ``info`` is the operation's fields so far (every state-changing event's,
        merged), or None for the event that begins it.  Called before the event
        is journaled and again when it is replayed, so a record read back from
        disk is held to the same rules as the API.  The default checks
        nothing; override it for every field that names a path, a name or a
        free-form value (see :mod:`shipslog.engine` ``expect_*`` helpers).
        """


class RawEvent(msgspec.Struct, frozen=True, gc=False):
    """An event whose kind is not registered here, kept as decoded plain data (``data`` holds every field)."""

    kind: str
    op: str
    data: dict[str, Any]
