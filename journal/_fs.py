"""Durable file primitives: the one place where shipslog touches the file system.

Every file effect of the journal and the engine goes through a
:class:`FileSystem` object, so that the rules below live in one place and a
test (or the crash harness) can substitute a recording implementation.

The rules, learned from LevelDB, etcd, SQLite and PostgreSQL:

* a new or renamed file is durable only after its folder is fsynced;
* writes loop on short writes; a write that makes no progress is an error;
* a failed fsync is never retried here: the error propagates and the caller
  decides (the journal turns it into :class:`JournalBrokenError`);
* bytes are written and fsynced before anything that says they are complete.

The low-level methods (``open``, ``write_all``, ``fsync``, ``replace``, ...)
are single system calls; the composite ones (``write_file_atomic``,
``rename_durable``, ...) are written only in terms of them, so a subclass that
overrides the low-level methods sees every effect of the composites too.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterable
from typing import Union

from ._errors import InsufficientSpaceError, PathEscapeError

__all__ = ["OS_FS", "DelegatingFileSystem", "FileSystem", "PathLike", "RootedFileSystem", "is_temp_name", "open_regular", "read_limited"]

PathLike = Union[str, "os.PathLike[str]"]

_log = logging.getLogger("shipslog.journal.fs")

_TEMP_MARK = ".tmp-"
_DELETING_MARK = ".deleting"


def is_temp_name(name: str) -> bool:
    """Return True for names this module uses for work in progress.

    Such files are never results: a crash can leave them behind, and recovery
    moves them to quarantine.
    """
    return name.startswith(".") and (_TEMP_MARK in name or name.endswith(_DELETING_MARK))


def open_regular(path: PathLike) -> int:
    """A read-only descriptor of the regular file at ``path``; ``OSError`` for anything else.

    A symbolic link is not followed (``ELOOP``), a folder is ``EISDIR``, and a
    FIFO, socket or device is refused (``EINVAL``) without blocking on it or
    reading from it, so a
    special file planted in a root can neither hang nor flood a reader.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        raise OSError(errno.EINVAL, "expected a regular file, found a special file (FIFO, socket, device)", os.fspath(path))
    return fd


def read_limited(path: PathLike, limit: int) -> bytes | None:
    """The whole content of the regular file at ``path``, or None when it holds more than ``limit`` bytes.

    The size is looked at before anything is read, and at most ``limit + 1``
    bytes are ever read (a file that grows meanwhile is caught too), so a
    huge or endless file costs no memory.  ``OSError`` when it cannot be read
    or is not a regular file (:func:`open_regular`).
    """
    with open(open_regular(path), "rb", closefd=True) as f:
        if os.fstat(f.fileno()).st_size > limit:
            return None
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


class FileSystem:
    """The durable file primitives, backed by the real operating system.

    ``sync=False`` turns every fsync into a no-op.  That is for tests and
    benchmarks that measure something else; nothing written that way survives a
    power cut.
    """

    def __init__(self, *, sync: bool = True) -> None:
        self.sync = sync

    # -- low-level primitives: one system call each --------------------------------

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        """Open ``path`` with ``os.open`` flags; never follows a final symlink."""
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        """Close a file descriptor."""
        os.close(fd)

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        """Write every byte of ``data``, looping on short writes.

        With ``offset`` the bytes go to that position (``pwrite``), otherwise
        to the file position.  A write that returns 0 raises ``OSError(EIO)``
        instead of looping forever.
        """
        done = 0
        if offset is not None and type(data) is bytes:
            done = os.pwrite(fd, data, offset)  # the common case: one call writes it all; the loop finishes a short one
            if done == len(data):
                return
        view = memoryview(data).cast("B")
        total = len(view)
        while done < total:
            if offset is None:
                n = os.write(fd, view[done:])
            else:
                n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, f"write made no progress after {done} of {total} bytes")
            done += n

    def fsync(self, fd: int) -> None:
        """Flush a file's data and metadata to stable storage."""
        if self.sync:
            os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """Flush a file's data (and the metadata needed to read it back)."""
        if self.sync:
            os.fdatasync(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Set a file's length (``ftruncate``)."""
        os.ftruncate(fd, size)

    def preallocate(self, fd: int, size: int) -> bool:
        """Reserve ``size`` bytes for a file, reading back as zeros.

        Returns False where the file system does not support it (the caller
        then writes without a reservation).
        """
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                _log.debug("posix_fallocate unsupported here: %s", exc)
                return False
            raise
        return True

    def replace(self, src: PathLike, dst: PathLike) -> None:
        """Atomically rename ``src`` over ``dst`` (not yet durable)."""
        os.replace(src, dst)

    def mkdir(self, path: PathLike) -> None:
        """Create one folder (not yet durable)."""
        os.mkdir(path, 0o755)

    def unlink(self, path: PathLike) -> None:
        """Remove one file or symlink (not yet durable)."""
        os.unlink(path)

    def rmdir(self, path: PathLike) -> None:
        """Remove one empty folder (not yet durable)."""
        os.rmdir(path)

    # -- composites, written only in terms of the primitives above ----------------

    def fsync_dir(self, path: PathLike) -> None:
        """Make the entries of folder ``path`` (creations, renames, removals) durable."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def write_file_atomic(self, path: PathLike, data: bytes | bytearray | memoryview, *, preallocate: int = 0) -> None:
        """Replace ``path`` with ``data`` so that after a crash it holds the old or the new bytes.

        Writes a temporary file in the same folder, fsyncs it, renames it over
        ``path`` and fsyncs the folder.  When this returns the new content is
        durable.  ``preallocate`` reserves that many bytes (zeros) after the data.
        On failure the temporary file is removed and the error propagates;
        ``path`` is untouched.
        """
        path = os.fspath(path)
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}{_TEMP_MARK}{secrets.token_hex(4)}")
        try:
            fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                try:
                    self.write_all(fd, data)
                    if preallocate > len(data):
                        self.preallocate(fd, preallocate)
                    self.fsync(fd)
                finally:
                    self.close(fd)
                self.replace(tmp, path)
            except BaseException:
                self._discard(tmp)
                raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not isinstance(exc, InsufficientSpaceError):
                free = self._free_or_none(folder or ".")
                raise InsufficientSpaceError(path, max(len(data), preallocate), free, "writing it failed; it is unchanged") from exc
            raise
        self.fsync_dir(folder or ".")

    def rename_durable(self, src: PathLike, dst: PathLike, *, sync_source: bool = True) -> None:
        """Rename ``src`` to ``dst`` and fsync both parent folders.

        ``sync_source=False`` fsyncs only the destination's folder: the new name
        is durable, but after a power cut the old name may still be listed too.
        Only for callers whose recovery treats such a leftover as a copy (the
        checkpoint protocol does: the final copy wins and staging is cleaned).
        """
        src, dst = os.fspath(src), os.fspath(dst)
        self.replace(src, dst)
        dst_parent = os.path.dirname(dst) or "."
        src_parent = os.path.dirname(src) or "."
        self.fsync_dir(dst_parent)
        if sync_source and os.path.realpath(src_parent) != os.path.realpath(dst_parent):
            self.fsync_dir(src_parent)

    def remove_tree_durable(self, path: PathLike) -> None:
        """Remove a file or folder tree so that a crash leaves it whole or gone.

        The tree is first renamed to a hidden ``.<name>.deleting`` sibling (one
        durable rename), then removed, then the parent is fsynced.  Calling it
        again after a crash finishes a removal that was cut off.  Symlinks are
        removed, never followed.  A path that does not exist is not an error.
        """
        path = os.fspath(path)
        parent, name = os.path.split(path)
        parent = parent or "."
        trash = os.path.join(parent, f".{name}{_DELETING_MARK}")
        if os.path.lexists(path) and os.path.lexists(trash):
            self._remove_tree(trash)  # an earlier removal of this name was cut off: finish it first
        if os.path.lexists(path):
            self.replace(path, trash)
            self.fsync_dir(parent)
        if os.path.lexists(trash):
            self._remove_tree(trash)
            self.fsync_dir(parent)

    def ensure_dir(self, path: PathLike) -> None:
        """Create folder ``path`` and any missing parents, durably (``mkdir -p``).

        Each folder created is made durable by fsyncing its parent.  An
        existing folder is fine; an existing non-folder raises
        ``NotADirectoryError``.
        """
        path = os.path.abspath(os.fspath(path))
        missing: list[str] = []
        probe = path
        while not os.path.isdir(probe):
            if os.path.lexists(probe):
                raise NotADirectoryError(errno.ENOTDIR, "expected a folder, found a file", probe)
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        for folder in reversed(missing):
            try:
                self.mkdir(folder)
            except FileExistsError:
                if not os.path.isdir(folder):
                    raise
            self.fsync_dir(os.path.dirname(folder))

    def _free_or_none(self, path: PathLike) -> int | None:
        try:
            return self.free_bytes(path)
        except OSError:
            return None

    def free_bytes(self, path: PathLike) -> int:
        """Bytes available to this user on the file system holding ``path``."""
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    # -- helpers --------------------------------------------------------------------

    def _remove_tree(self, path: str) -> None:
        """Remove ``path`` and everything under it, deepest first; iterative, so no tree is too deep."""
        pending = [(path, False)]
        while pending:
            current, emptied = pending.pop()
            if emptied:
                self.rmdir(current)
                continue
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                self.unlink(current)
                continue
            pending.append((current, True))
            pending.extend((os.path.join(current, entry), False) for entry in os.listdir(current))

    def _discard(self, tmp: str) -> None:
        try:
            self.unlink(tmp)
        except FileNotFoundError:
            return
        except OSError as exc:  # the original error matters more; report this one
            _log.warning("could not remove temporary file %s: %s", tmp, exc)


OS_FS = FileSystem()
"""The shared default: the real file system, with fsync on."""


class DelegatingFileSystem(FileSystem):
    """Every single-call primitive handed to ``inner``; the composites of :class:`FileSystem` are built on them.

    A base for file systems that add something around the primitives
    (checks, bookkeeping) while ``inner`` (the real file system, or a
    recording one in tests) still sees every effect.
    """

    def __init__(self, inner: FileSystem) -> None:
        super().__init__(sync=inner.sync)
        self.inner = inner

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        return self.inner.open(path, flags, mode)

    def close(self, fd: int) -> None:
        self.inner.close(fd)

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        self.inner.write_all(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self.inner.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.inner.fdatasync(fd)

    def truncate(self, fd: int, size: int) -> None:
        self.inner.truncate(fd, size)

    def preallocate(self, fd: int, size: int) -> bool:
        return self.inner.preallocate(fd, size)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        self.inner.replace(src, dst)

    def mkdir(self, path: PathLike) -> None:
        self.inner.mkdir(path)

    def unlink(self, path: PathLike) -> None:
        self.inner.unlink(path)

    def rmdir(self, path: PathLike) -> None:
        self.inner.rmdir(path)

    def _free_or_none(self, path: PathLike) -> int | None:
        try:
            return self.free_bytes(path)
        except OSError:
            return None

    def free_bytes(self, path: PathLike) -> int:
        return self.inner.free_bytes(path)


def _opens_folder_read_only(flags: int) -> bool:
    return flags & os.O_ACCMODE == os.O_RDONLY and bool(flags & os.O_DIRECTORY) and not flags & os.O_CREAT


class RootedFileSystem(DelegatingFileSystem):
    """The primitives of ``inner``, refusing every effect on a path outside ``root``.

    Guarantee: no file is created, written, renamed, or removed, and no folder
    created or removed, anywhere but strictly inside ``root`` (creating
    ``root`` itself and its missing parents excepted, and opening them
    read-only to fsync them).  A path is inside when it is lexically under
    ``root`` after normalization (no ``..`` escape) and no folder between
    ``root`` and it is a symbolic link; a final component is never followed
    (``open`` uses ``O_NOFOLLOW``; rename and unlink act on a link itself).
    The folders in ``trusted`` (the root's own folders, checked to be real
    folders when the root is opened) are not looked at again, so the usual
    effect costs no extra system call; folders below them found real are
    remembered until an effect here renames or removes them, so a deep tree
    costs one look per folder, not one per folder per effect.  A refused
    effect raises :class:`PathEscapeError` before anything is touched.
    """

    _REMEMBERED = 4096
    """The most folders below the trusted ones remembered as real (then the memory starts afresh)."""

    def __init__(self, inner: FileSystem, root: PathLike, *, trusted: Iterable[str] = ()) -> None:
        super().__init__(inner)
        self.root = os.path.abspath(os.fspath(root))
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._trusted = {self.root, *(os.path.join(self.root, name) for name in trusted)}
        self._real: set[str] = set()
        self._real_lock = threading.Lock()

    def _forget(self, *paths: str) -> None:
        """Forget the folders at or under ``paths``, which an effect just renamed or removed."""
        with self._real_lock:
            for path in paths:
                under = path + os.sep
                self._real = {f for f in self._real if f != path and not f.startswith(under)}

    def _remember(self, folders: list[str]) -> None:
        """Remember ``folders`` as real folders (the memory starts afresh when it would pass :attr:`_REMEMBERED`)."""
        with self._real_lock:
            if len(self._real) + len(folders) > self._REMEMBERED:
                self._real = set()
            self._real.update(folders)

    def _absolute(self, path: PathLike, what: str) -> str:
        """``path`` made absolute without resolving anything; a ``.`` or ``..`` component is refused.

        The kernel resolves ``a/link/..`` through the link, so a lexical
        normalization would check another path than the one acted on.
        """
        raw = os.fspath(path)
        if "." in raw:
            parts = raw.split(os.sep)
            if "." in parts or ".." in parts:
                raise PathEscapeError(self.root, raw, what, "it has a '.' or '..' component")
        return os.path.abspath(raw)

    def _inside(self, path: PathLike, what: str) -> str:
        """``path`` made absolute, once it is checked to be strictly inside the root through real folders."""
        full = self._absolute(path, what)
        if not full.startswith(self._prefix) or full == self.root:
            raise PathEscapeError(self.root, full, what, "it is not strictly under the root")
        folder = os.path.dirname(full)
        seen: list[str] = []
        while folder not in self._trusted and folder not in self._real:
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                seen.clear()  # the effect itself fails on a missing folder; nothing below it can be a link out
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise PathEscapeError(self.root, full, what, f"{folder} is a symbolic link")
                if stat.S_ISDIR(st.st_mode):
                    seen.append(folder)
            folder = os.path.dirname(folder)  # ends at the root, which is trusted
        if seen:
            self._remember(seen)
        return full

    def _at_or_above_root(self, full: str) -> bool:
        return full == self.root or self._prefix.startswith(full.rstrip(os.sep) + os.sep)

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        full = self._absolute(path, "open")
        if not (_opens_folder_read_only(flags) and self._at_or_above_root(full)):
            full = self._inside(full, "open")
        return self.inner.open(full, flags, mode)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        full_src, full_dst = self._inside(src, "rename"), self._inside(dst, "rename onto")
        self._forget(full_src, full_dst)
        self.inner.replace(full_src, full_dst)

    def mkdir(self, path: PathLike) -> None:
        full = self._absolute(path, "create the folder")
        if self._at_or_above_root(full):
            self.inner.mkdir(full)
            return
        full = self._inside(full, "create the folder")
        self.inner.mkdir(full)
        self._remember([full])  # a folder made here, below folders found real, is real: no need to look at it again

    def unlink(self, path: PathLike) -> None:
        full = self._inside(path, "remove")
        self._forget(full)
        self.inner.unlink(full)

    def rmdir(self, path: PathLike) -> None:
        full = self._inside(path, "remove the folder")
        self._forget(full)
        self.inner.rmdir(full)
