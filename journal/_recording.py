"""A :class:`FileSystem` that performs every effect and records it.

Tests use it to check the order of effects (bytes, then fsync, then rename,
then the folder fsync) and to count fsyncs (group commit shares them).  The
record is a list of :class:`FsOp` values in call order.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ._fs import FileSystem, PathLike

__all__ = ["FsOp", "RecordingFileSystem"]


@dataclass(frozen=True)
class FsOp:
    """One recorded effect: ``op`` names the primitive, ``path`` what it touched.

    ``target`` is the destination of a ``replace``; ``size`` the byte count of
    a ``write`` or the length of a ``truncate``/``preallocate``; ``offset`` the
    position of a positioned write.
    """

    op: str
    path: str
    target: str = ""
    size: int = 0
    offset: int | None = None


class RecordingFileSystem(FileSystem):
    """Performs every effect like :class:`FileSystem` and appends it to ``ops``."""

    def __init__(self, *, sync: bool = True) -> None:
        super().__init__(sync=sync)
        self.ops: list[FsOp] = []
        self._paths: dict[int, str] = {}
        self._mutex = threading.Lock()

    def _record(self, op: FsOp) -> None:
        with self._mutex:
            self.ops.append(op)

    def names(self) -> list[str]:
        """The recorded primitive names, in order."""
        return [o.op for o in self.ops]

    def count(self, op: str) -> int:
        """How many times primitive ``op`` ran."""
        return sum(1 for o in self.ops if o.op == op)

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self._paths[fd] = os.fspath(path)
        self._record(FsOp("open", os.fspath(path)))
        return fd

    def close(self, fd: int) -> None:
        path = self._paths.pop(fd, f"fd:{fd}")
        super().close(fd)
        self._record(FsOp("close", path))

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        super().write_all(fd, data, offset)
        self._record(FsOp("write", self._paths.get(fd, f"fd:{fd}"), size=len(memoryview(data).cast("B")), offset=offset))

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._record(FsOp("fsync", self._paths.get(fd, f"fd:{fd}")))

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self._record(FsOp("fdatasync", self._paths.get(fd, f"fd:{fd}")))

    def truncate(self, fd: int, size: int) -> None:
        super().truncate(fd, size)
        self._record(FsOp("truncate", self._paths.get(fd, f"fd:{fd}"), size=size))

    def preallocate(self, fd: int, size: int) -> bool:
        ok = super().preallocate(fd, size)
        self._record(FsOp("preallocate", self._paths.get(fd, f"fd:{fd}"), size=size))
        return ok

    def replace(self, src: PathLike, dst: PathLike) -> None:
        super().replace(src, dst)
        self._record(FsOp("replace", os.fspath(src), target=os.fspath(dst)))

    def mkdir(self, path: PathLike) -> None:
        super().mkdir(path)
        self._record(FsOp("mkdir", os.fspath(path)))

    def unlink(self, path: PathLike) -> None:
        super().unlink(path)
        self._record(FsOp("unlink", os.fspath(path)))

    def rmdir(self, path: PathLike) -> None:
        super().rmdir(path)
        self._record(FsOp("rmdir", os.fspath(path)))
