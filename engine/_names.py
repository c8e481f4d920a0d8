"""Validation of user-given names and of paths under a host root.

Names become single path components under ``ROOT/<folder>/``; a name that
could escape that folder is refused before anything is touched.
"""

from __future__ import annotations

import os
import re

from shipslog.journal import is_temp_name

from ._errors import InvalidNameError

__all__ = [
    "MAX_FILE_NAME_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_RELPATH_PARTS",
    "check_file_name",
    "check_name",
    "check_op_id",
    "check_relpath",
    "inside_root",
    "is_plain_name",
]

MAX_NAME_LENGTH = 200
MAX_RELPATH_PARTS = 32
"""The most components of a file's path inside a checkpoint (``a/b/c.bin`` has 3)."""
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""A control character (C0, DEL or C1): never part of a file's name inside a checkpoint."""
_PLAIN_OP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@:, -]*")
"""Operation ids of printable ASCII that start with a letter or digit: accepted by :func:`check_op_id` at once."""


def is_plain_name(name: str, max_length: int = MAX_NAME_LENGTH) -> bool:
    """Whether :func:`check_name` accepts ``name`` (with the same ``max_length``); the replay's fast test, never raises."""
    return len(name) <= max_length and _ALLOWED.fullmatch(name) is not None


def check_name(what: str, name: object, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return ``name`` when it is a safe single path component, else raise :class:`InvalidNameError`.

    Allowed: letters, digits and ``. _ - + = @``, starting with a letter or
    digit, at most :data:`MAX_NAME_LENGTH` characters.  That excludes empty
    names, ``.``/``..``, separators, absolute paths, NUL and every control
    character, and hidden names (which the engine uses for work in progress).
    """
    if isinstance(name, str) and len(name) <= max_length and _ALLOWED.fullmatch(name):
        return name  # the one test that decides; the ones below only say why a name fails it
    if not isinstance(name, str):
        raise InvalidNameError(what, name, f"expected a string, found {type(name).__name__}")
    if not name:
        raise InvalidNameError(what, name, "it is empty")
    if len(name) > max_length:
        raise InvalidNameError(what, name, f"it is {len(name)} characters long, the limit is {max_length}")
    if "/" in name or "\\" in name or os.sep in name:
        raise InvalidNameError(what, name, "it contains a path separator")
    if name in (".", ".."):
        raise InvalidNameError(what, name, "it names a folder, not an entry")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidNameError(what, name, "it contains a control character")
    raise InvalidNameError(what, name, "it must start with a letter or digit and use only letters, digits and . _ - + = @")


MAX_FILE_NAME_BYTES = 255
"""The longest component of a file's path inside a checkpoint, in UTF-8 bytes (what file systems allow)."""


def check_file_name(what: str, name: object) -> str:
    """Return ``name`` when it can be one component of a file's path inside a checkpoint, else raise :class:`InvalidNameError`.

    Files inside a checkpoint are named by the libraries that write them
    (``__0_0.distcp``, ``.metadata``, ``model-00001-of-00002.safetensors``),
    so this is wider than :func:`check_name`: anything but an empty name,
    ``.``/``..``, a separator, a control character, text that is not UTF-8
    (a lone surrogate), a name of the engine's work in progress, or more than
    :data:`MAX_FILE_NAME_BYTES` bytes.  Such
    a name stays one entry of the folder it is in.
    """
    if not isinstance(name, str):
        raise InvalidNameError(what, name, f"expected a string, found {type(name).__name__}")
    if name in ("", ".", ".."):
        raise InvalidNameError(what, name, "it is empty or names a folder, not an entry")
    if is_temp_name(name):
        raise InvalidNameError(what, name, "it is a name the engine gives work in progress (.<name>.tmp-*, .<name>.deleting)")
    if "/" in name or "\\" in name:
        raise InvalidNameError(what, name, "it contains a path separator")
    if _CONTROL.search(name) is not None:
        raise InvalidNameError(what, name, "it contains a control character")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidNameError(what, name, "it is not UTF-8 text") from None
    if size > MAX_FILE_NAME_BYTES:
        raise InvalidNameError(what, name, f"it is {size} bytes long, the limit is {MAX_FILE_NAME_BYTES}")
    return name


def check_op_id(what: str, op_id: object) -> str:
    """Return ``op_id`` when it can name an operation, else raise :class:`InvalidNameError`.

    A host names its own operations (``job:2024-01-01``, ``nightly eval``),
    so this is wider than :func:`check_name`, but an id may become one
    folder name (``staging/<op>``): a file name (:func:`check_file_name`) of
    at most :data:`MAX_NAME_LENGTH` characters that does not start with ``.``.
    """
    if type(op_id) is str and len(op_id) <= MAX_NAME_LENGTH and _PLAIN_OP_ID.fullmatch(op_id) is not None:
        return op_id  # the common shape, decided by one match; everything it accepts passes the checks below
    check_file_name(what, op_id)
    assert isinstance(op_id, str)
    if op_id.startswith(".") or len(op_id) > MAX_NAME_LENGTH:
        raise InvalidNameError(what, op_id, f"an operation id has at most {MAX_NAME_LENGTH} characters and does not start with '.'")
    return op_id


def check_relpath(what: str, relpath: object) -> list[str]:
    """The components of a '/'-separated path inside a folder, each a file name (:func:`check_file_name`).

    At most :data:`MAX_RELPATH_PARTS` components: no empty component, no
    ``.`` or ``..``, no absolute path, nothing that could lead out of the
    folder.  Raises :class:`InvalidNameError`.
    """
    if not isinstance(relpath, str) or not relpath:
        raise InvalidNameError(what, relpath, "a file inside a folder needs a non-empty relative path")
    if relpath.startswith("/"):
        raise InvalidNameError(what, relpath, "it is an absolute path; give a path relative to the folder, such as 'model.bin' or 'optim/state.bin'")
    parts = relpath.split("/")
    if len(parts) > MAX_RELPATH_PARTS:
        raise InvalidNameError(what, relpath, f"it has {len(parts)} components, the limit is {MAX_RELPATH_PARTS}")
    for part in parts:
        check_file_name(what, part)
    return parts


def inside_root(root: str, path: str) -> str:
    """Resolve ``path`` and return it when it lies inside ``root`` (symlinks resolved), else raise.

    Used for every path built from user input before the engine touches it.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise InvalidNameError("path", path, f"it resolves to {real}, outside the root {real_root}")
    return real
