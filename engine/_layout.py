"""The layout of a host root: the engine's folders, and the only root-relative paths a record may name.

Every path the engine acts on is one of these shapes, built from a name that
passed :func:`~shipslog.engine.check_name`; records read back from disk are
checked against the same shapes (:func:`relpath_name`), so a record can
never steer an effect outside the folder its operation owns.
"""

from __future__ import annotations

import os
import stat

from shipslog.journal import (
    JOURNAL_DIR,
    LOCK_NAME,
    QUARANTINE_DIR,
    SNAPSHOT_DIR,
    is_temp_name,
    list_segments,
)

from ._errors import ForeignFolderError, RootLayoutError
from ._names import MAX_NAME_LENGTH, is_plain_name

__all__ = [
    "ADAPTERS_DIR",
    "ARTIFACT_FOLDERS",
    "CHECKPOINTS_DIR",
    "ENGINE_FOLDERS",
    "MODELS_DIR",
    "POINTERS_DIR",
    "RETAINABLE_FOLDERS",
    "RETIRED_DIR",
    "ROOT_FOLDERS",
    "SALVAGE_MARKER",
    "STAGING_DIR",
    "TARGET_FOLDERS",
    "artifact_relpath",
    "check_root_folders",
    "relpath_name",
    "staging_relpath",
]

STAGING_DIR = "staging"
CHECKPOINTS_DIR = "checkpoints"
MODELS_DIR = "models"
ADAPTERS_DIR = "adapters"
RETIRED_DIR = "retired"
POINTERS_DIR = "pointers"

ARTIFACT_FOLDERS = {"checkpoint": CHECKPOINTS_DIR, "model": MODELS_DIR, "adapter": ADAPTERS_DIR}
"""The folder of each kind of committed artifact."""

ENGINE_FOLDERS = (STAGING_DIR, CHECKPOINTS_DIR, MODELS_DIR, ADAPTERS_DIR, RETIRED_DIR, POINTERS_DIR)
"""The folders whose every entry must be accounted for by the journal."""

ROOT_FOLDERS = (JOURNAL_DIR, SNAPSHOT_DIR, QUARANTINE_DIR, *ENGINE_FOLDERS)
"""Every folder the engine keeps directly under a root."""

SALVAGE_MARKER = "SALVAGING"
"""The file ``shipslog recover --salvage`` keeps directly under a root while it cuts and reconciles: no engine
opens the root while it is there."""

TARGET_FOLDERS = (CHECKPOINTS_DIR, MODELS_DIR)
"""Where a pointer's target may live."""

RETAINABLE_FOLDERS = (CHECKPOINTS_DIR, MODELS_DIR, ADAPTERS_DIR, RETIRED_DIR)
"""Where retention may delete: nothing else, ever."""


def staging_relpath(op: str) -> str:
    """``staging/<op>``: the one staging folder operation ``op`` may use."""
    return f"{STAGING_DIR}/{op}"


def artifact_relpath(artifact: str, name: str) -> str:
    """``<folder>/<name>`` of a committed checkpoint, model or adapter."""
    return f"{ARTIFACT_FOLDERS[artifact]}/{name}"


def relpath_name(relpath: object, folders: tuple[str, ...]) -> str | None:
    """The name in ``relpath`` when it is exactly ``<one of folders>/<valid name>``, else None.

    Two components, no more: no ``..``, no absolute path, no separator inside
    the name, nothing :func:`check_name` refuses.
    """
    if not isinstance(relpath, str):
        return None
    folder, sep, name = relpath.partition("/")
    if not sep or folder not in folders:
        return None
    # retired/<op>-<adapter> joins two names, each within the limit
    limit = 2 * MAX_NAME_LENGTH + 1 if folder == RETIRED_DIR else MAX_NAME_LENGTH
    return name if is_plain_name(name, limit) else None


def check_root_folders(root: str, *, new_root_is_empty: bool = False) -> None:
    """Refuse a root whose own folders are not real folders; with ``new_root_is_empty``, also a non-root holding files.

    Raises :class:`RootLayoutError` when a folder of :data:`ROOT_FOLDERS`
    exists as a symbolic link or as something other than a folder, or the
    ``LOCK`` file as anything but a regular file.  With
    ``new_root_is_empty`` (``Engine.open``), a folder whose ``journal/`` holds
    no segment yet (not a root yet) raises :class:`ForeignFolderError` when
    any of the engine's folders already holds entries, so someone's files
    are never quarantined by a first open.  Files of the user's directly under
    the root are never the engine's concern.  Reads only.
    """
    for folder in ROOT_FOLDERS:
        path = os.path.join(root, folder)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise RootLayoutError(root, folder, f"a symbolic link to {os.readlink(path)}")
        if not stat.S_ISDIR(st.st_mode):
            raise RootLayoutError(root, folder, "a file")
    lock = os.path.join(root, LOCK_NAME)
    if os.path.lexists(lock) and not stat.S_ISREG(os.lstat(lock).st_mode):
        raise RootLayoutError(root, LOCK_NAME, "a symbolic link or a special file where the lock file belongs", folder_kind="file")
    if not new_root_is_empty or list_segments(os.path.join(root, JOURNAL_DIR)):
        return
    found: list[str] = []
    for folder in ROOT_FOLDERS:
        try:
            names = sorted(os.listdir(os.path.join(root, folder)))
        except FileNotFoundError:
            continue
        found += [f"{folder}/{name}" for name in names if not is_temp_name(name)]  # a first open cut off leaves only temporary files
    if found:
        raise ForeignFolderError(root, found)
