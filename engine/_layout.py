"""The layout of a host root: the engine's folders, and the only root-relative paths a record may name.

Every path the engine acts on is one of these shapes, built from a name that
passed :func:`~shipslog.engine.check_name`; records read back from disk are
checked against the same shapes (:func:`check_relpath_shape`), so a record can
never steer an effect outside the folder its operation owns.
"""

from __future__ import annotations

from ._names import MAX_NAME_LENGTH, check_name

__all__ = [
    "ADAPTERS_DIR",
    "ARTIFACT_FOLDERS",
    "CHECKPOINTS_DIR",
    "ENGINE_FOLDERS",
    "MODELS_DIR",
    "POINTERS_DIR",
    "RETAINABLE_FOLDERS",
    "RETIRED_DIR",
    "STAGING_DIR",
    "TARGET_FOLDERS",
    "artifact_relpath",
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
    try:
        check_name("path", name, max_length=limit)
    except ValueError:
        return None
    return name
