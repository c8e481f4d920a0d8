"""Errors of the GPU compute layer.

Every error derives from :class:`shipslog.journal.ShipslogError` and from the
builtin it resembles, so callers can catch either.  Messages say what was
expected, what was found, where (file, tensor or module name) and what to do.
Checksum mismatches are :class:`shipslog.engine.IntegrityError` (re-exported
here for convenience, never redefined); a missing torch is
:class:`shipslog.engine.MissingDependencyError`.
"""

from __future__ import annotations

import os

from shipslog.engine import IntegrityError, MissingDependencyError
from shipslog.journal import ShipslogError

__all__ = [
    "AdapterError",
    "GpuError",
    "IntegrityError",
    "MergeOutOfMemoryError",
    "MissingDependencyError",
    "NonFiniteError",
    "PickleRefusedError",
    "StateDictError",
    "TensorFileError",
    "TensorFileNotFoundError",
]


class GpuError(ShipslogError):
    """Something is wrong with tensors, tensor files or adapters handled by shipslog.gpu."""


class PickleRefusedError(GpuError, ValueError):
    """A pickle-based tensor file (``.pt``/``.bin``) was refused; nothing from it was returned.

    Raised when the caller did not pass ``allow_pickle=True``, or when
    ``torch.load(weights_only=True)`` rejected the file (it holds something
    other than tensors and plain containers, such as an object whose unpickling
    would run code).  The file is never unpickled with ``weights_only=False``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, *, hint: str = "") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        advice = hint or (
            "convert the file to safetensors with a trusted tool, or pass allow_pickle=True if you "
            "trust its origin (it is then loaded with torch.load(weights_only=True) only)"
        )
        super().__init__(f"refused to load pickle file {self.path}: {reason}; {advice}")


class TensorFileError(GpuError, ValueError):
    """A tensor file is not a valid safetensors file (or holds something this build cannot read).

    Names the file, the tensor where there is one, what was expected and what
    was found.  Nothing from the file is returned.
    """

    def __init__(self, path: str | os.PathLike[str], expected: str, found: str, *, tensor: str | None = None, hint: str = "") -> None:
        self.path = os.fspath(path)
        self.tensor = tensor
        self.expected = expected
        self.found = found
        where = f"{self.path} (tensor {tensor!r})" if tensor is not None else self.path
        advice = hint or "the file is damaged or was not written as safetensors; restore it from a good copy"
        super().__init__(f"bad tensor file {where}: expected {expected}, found {found}; {advice}")


class TensorFileNotFoundError(GpuError, FileNotFoundError):
    """A folder holds none of the tensor files a load looked for."""

    def __init__(self, folder: str | os.PathLike[str], looked_for: str, found: list[str]) -> None:
        self.folder = os.fspath(folder)
        self.looked_for = looked_for
        self.found = list(found)
        listing = ", ".join(self.found[:20]) if self.found else "nothing"
        super().__init__(
            f"no tensor files in {self.folder}: expected {looked_for}, found {listing}; "
            "check the folder and the prefix the state was saved with"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class StateDictError(GpuError, ValueError):
    """A state to save holds something that cannot be saved faithfully.

    For example a value of an unsupported type, two keys that flatten to the
    same tensor name, a non-string/int dict key, or a sparse tensor.  Raised
    before any file is written.
    """

    def __init__(self, key: str, expected: str, found: str, *, hint: str = "") -> None:
        self.key = key
        self.expected = expected
        self.found = found
        advice = hint or "convert the value to a tensor or to plain JSON data before saving"
        super().__init__(f"cannot save state entry {key!r}: expected {expected}, found {found}; {advice}")


class AdapterError(GpuError, ValueError):
    """A LoRA adapter (its config or its weights) does not fit the base model or is malformed.

    Names the module or config field, what was expected and what was found.
    Raised before any merged tensor is returned.
    """

    def __init__(self, where: str, expected: str, found: str, *, hint: str = "") -> None:
        self.where = where
        self.expected = expected
        self.found = found
        advice = hint or "check that the adapter was trained for this base model and that its config matches its weights"
        super().__init__(f"adapter problem at {where}: expected {expected}, found {found}; {advice}")


class NonFiniteError(GpuError, ArithmeticError):
    """A merge produced NaN or infinite values in a tensor; nothing was returned or written.

    ``count`` is the number of non-finite values in the tensor.
    """

    def __init__(self, tensor: str, count: int, detail: str = "") -> None:
        self.tensor = tensor
        self.count = count
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"merged tensor {tensor!r}: expected only finite values, found {count} NaN/Inf value(s){extra}; "
            "nothing was written; check the adapter and base weights for NaN/Inf (or values that overflow "
            "the base dtype) before merging again"
        )


class MergeOutOfMemoryError(GpuError, MemoryError):
    """A merge ran out of memory even one row at a time on the CPU; nothing was returned."""

    def __init__(self, module: str, detail: str) -> None:
        self.module = module
        self.detail = detail
        super().__init__(
            f"merging module {module!r} ran out of memory on the CPU even one row at a time ({detail}); "
            "nothing was returned; free host memory (or merge on a machine with more) and merge again"
        )
