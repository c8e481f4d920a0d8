"""Checks of event fields: the same rules for an event about to be journaled and for one read back.

An event class states what its fields may hold by overriding
:meth:`Event.check_fields <shipslog.engine.Event.check_fields>` with these
helpers; each raises :class:`InvalidFieldError` naming the field, the value
found and what is allowed.  Every check is bounded: nesting is measured
iteratively and stops at the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._errors import InvalidFieldError
from ._layout import relpath_name
from ._names import MAX_NAME_LENGTH, check_name, check_op_id

__all__ = [
    "MAX_NESTING",
    "decode_json_within",
    "expect_count",
    "expect_equal",
    "expect_name",
    "expect_nested_within",
    "expect_op_id",
    "expect_relpath",
    "nesting_depth",
    "reject",
]

MAX_NESTING = 32
"""How deep a free-form value (checkpoint meta, a merge report) may nest: maps and lists inside each other."""


def nesting_depth(value: object, limit: int) -> int:
    """How deeply ``value`` nests maps, lists and tuples (a scalar is 0), counted up to ``limit + 1`` at most.

    Iterative, so a value nested far beyond the interpreter's recursion limit
    is measured without recursion; the walk stops as soon as it passes ``limit``.
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def decode_json_within(data: bytes, max_depth: int) -> Any:
    """Decode JSON ``data`` that nests at most ``max_depth`` levels of objects and arrays.

    Raises ``msgspec.DecodeError`` saying why for anything else: bytes that
    are not JSON (invalid UTF-8 included), or a nesting deeper than
    ``max_depth`` (checked iteratively; one too deep for the decoder itself
    is its ``RecursionError``, turned into the same error).  Never another
    exception; callers turn it into their format's error.
    """
    try:
        value = msgspec.json.decode(data)
    except RecursionError:
        raise msgspec.DecodeError(f"it nests more than {max_depth} levels deep") from None
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"it is not UTF-8 ({exc})") from None
    if nesting_depth(value, max_depth) > max_depth:
        raise msgspec.DecodeError(f"it nests more than {max_depth} levels deep")
    return value


def reject(field: str, value: object, expected: str) -> None:
    """Raise :class:`InvalidFieldError` for ``field`` (for a rule the other helpers do not cover)."""
    raise InvalidFieldError(field, value, expected)


def expect_nested_within(field: str, value: object, limit: int = MAX_NESTING) -> None:
    """``value`` nests at most ``limit`` levels of maps and lists."""
    if not value:
        return  # an empty map or list, or a scalar that is false, nests one level at most
    if nesting_depth(value, limit) > limit:
        raise InvalidFieldError(field, f"<a value nested more than {limit} levels deep>", f"at most {limit} levels of nesting")


def expect_name(field: str, value: object, what: str) -> str:
    """``value`` is a plain name (:func:`check_name`): one path component, never ``..`` or a separator."""
    try:
        return check_name(what, value)
    except ValueError as exc:
        raise InvalidFieldError(field, value, f"a plain {what} name of at most {MAX_NAME_LENGTH} letters, digits and . _ - + = @ ({exc})") from None


def expect_op_id(field: str, value: object) -> str:
    """``value`` can name an operation (:func:`~shipslog.engine.check_op_id`): one folder name, never ``..``."""
    try:
        return check_op_id("operation id", value)
    except ValueError as exc:
        raise InvalidFieldError(field, value, f"an operation id: one name without separators or control characters ({exc})") from None


def expect_equal(field: str, value: object, expected: str) -> None:
    """``value`` is exactly ``expected`` (a path derived from the operation's own names)."""
    if value != expected:
        raise InvalidFieldError(field, value, repr(expected))


def expect_relpath(field: str, value: object, folders: tuple[str, ...]) -> str:
    """``value`` is ``<one of folders>/<plain name>``; returns the name."""
    name = relpath_name(value, folders)
    if name is None:
        shapes = " or ".join(f"'{folder}/<name>'" for folder in folders)
        raise InvalidFieldError(field, value, f"a root-relative path {shapes} with a plain name")
    return name


def expect_count(field: str, value: object, minimum: int = 0) -> None:
    """``value`` is an integer (not a bool) of at least ``minimum``."""
    if type(value) is not int or value < minimum:  # type() and not isinstance(): a bool is not a count
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return  # a subclass of int that is not a bool
        raise InvalidFieldError(field, value, f"an integer of at least {minimum}")
