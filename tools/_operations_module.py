"""``--operations MODULE``: a host's own operation types, loaded for the command line.

MODULE is an importable dotted module name (``myhost.ops``) or the path to a
``.py`` file (``./ops.py``).  It must define ``OPERATIONS``, a sequence of
:class:`shipslog.engine.OperationType`; those types are registered beside
the built-ins, exactly as a host passes them to
``Engine.open(root, operations=...)``.  Every way this can go wrong (the
module cannot be found or raises while it is imported, it has no
``OPERATIONS``, ``OPERATIONS`` is not a sequence of operation types, or its
types clash with each other or with the built-ins) raises
:class:`OperationsModuleError`: one line naming the module and what to do,
which the command line prints as a usage error (exit 2).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from shipslog.engine import OperationType, Registry
from shipslog.journal import ShipslogError, short_repr

__all__ = ["OPERATIONS_HELP", "OperationsModuleError", "load_operations", "load_operations_module", "operation_types"]

_WANTED = "OPERATIONS, a sequence (list or tuple) of shipslog.engine.OperationType"

OPERATIONS_HELP = (
    "a host's own operation types, registered beside the built-ins: an importable dotted module name or the path "
    "to a .py file that defines OPERATIONS, a sequence of shipslog.engine.OperationType"
)
"""The help text of every command's ``--operations MODULE``."""


class OperationsModuleError(ShipslogError, ValueError):
    """``--operations MODULE`` names a module that cannot be loaded or does not declare operation types."""

    def __init__(self, spec: str, problem: str) -> None:
        self.spec = spec
        self.problem = problem
        super().__init__(f"--operations {spec}: {problem}")


def _is_path(spec: str) -> bool:
    """Whether ``spec`` names a file rather than a dotted module name."""
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def load_operations_module(spec: str) -> ModuleType:
    """The module ``spec`` names: a dotted module name, imported as usual, or a ``.py`` file, executed as a module.

    A file is loaded under a private module name derived from its absolute
    path (so it never shadows or replaces another module) and is executed
    again by each call.  Raises :class:`OperationsModuleError` when it cannot
    be found, or when importing it raises (the error is chained).
    """
    if not spec or not spec.strip():
        raise OperationsModuleError(spec, "expected a dotted module name or the path to a .py file, got nothing")
    if _is_path(spec):
        return _load_file(spec)
    parts = spec.split(".")
    if not all(part.isidentifier() for part in parts):
        raise OperationsModuleError(
            spec, "is neither a dotted module name (like myhost.operations) nor the path to a .py file (like ./operations.py)"
        )
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec != exc.name and not spec.startswith(f"{exc.name}."):
            raise _import_failed(spec, exc) from exc  # the module was found; something it imports was not
        raise OperationsModuleError(
            spec,
            f"no module named {exc.name or spec!r} can be imported; put its folder on PYTHONPATH, "
            "or give the path to its .py file",
        ) from exc
    except Exception as exc:  # the module's own code raised: one line, chained for --debug
        raise _import_failed(spec, exc) from exc


def _load_file(spec: str) -> ModuleType:
    path = os.path.abspath(spec)
    if not path.endswith(".py"):
        raise OperationsModuleError(spec, "a path must name a .py file")
    if not os.path.isfile(path):
        raise OperationsModuleError(spec, f"no such file: {path}")
    stem = os.path.basename(path)[:-3]
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:12]
    name = f"_shipslog_operations_{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise OperationsModuleError(spec, f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # classes declared in it (msgspec structs, dataclasses) find their module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if not isinstance(exc, Exception):
            raise
        raise _import_failed(spec, exc) from exc
    return module


def _import_failed(spec: str, exc: BaseException) -> OperationsModuleError:
    message = " ".join(str(exc).split()) or "no message"
    return OperationsModuleError(spec, f"importing it raised {type(exc).__name__}: {message}")


def operation_types(module: ModuleType, *, spec: str | None = None) -> tuple[OperationType, ...]:
    """The operation types ``module`` declares in ``OPERATIONS``, in order.

    Raises :class:`OperationsModuleError` (naming ``spec``, default: the
    module's file or name) when ``OPERATIONS`` is missing, is not a list or
    tuple (a single type, a string, a set), or holds anything that is not a
    :class:`~shipslog.engine.OperationType`.
    """
    if spec is None:
        file = getattr(module, "__file__", None)
        spec = file if isinstance(file, str) and module.__name__.startswith("_shipslog_operations_") else module.__name__
    if not hasattr(module, "OPERATIONS"):
        raise OperationsModuleError(spec, f"the module defines no OPERATIONS; it must define {_WANTED}")
    declared = module.OPERATIONS
    if isinstance(declared, (str, bytes)) or not isinstance(declared, Sequence):
        raise OperationsModuleError(
            spec, f"OPERATIONS is a {type(declared).__name__} ({short_repr(declared)}); it must be {_WANTED}"
        )
    for index, item in enumerate(declared):
        if not isinstance(item, OperationType):
            raise OperationsModuleError(
                spec,
                f"OPERATIONS[{index}] is a {type(item).__name__} ({short_repr(item)}), not a shipslog.engine.OperationType",
            )
    return tuple(declared)


def load_operations(spec: str | None) -> tuple[OperationType, ...]:
    """The operation types of the module ``spec`` names (none when ``spec`` is None), checked to register beside the built-ins.

    Loads the module once (:func:`load_operations_module`), reads its types
    (:func:`operation_types`) and builds a :class:`~shipslog.engine.Registry`
    of them to find clashes (a name or an event kind taken twice, by the
    module or by a built-in), all raised as :class:`OperationsModuleError`.
    Pass the result to ``Registry(...)`` or ``Engine.open(root, operations=...)``.
    """
    if spec is None:
        return ()
    types = operation_types(load_operations_module(spec), spec=spec)
    try:
        Registry(types)
    except ValueError as exc:
        raise OperationsModuleError(spec, f"its OPERATIONS cannot be registered beside the built-ins: {exc}") from exc
    return types
