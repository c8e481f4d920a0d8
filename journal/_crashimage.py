"""A file system that knows what a power cut would leave: the crash-image file system.

:class:`CrashImageFileSystem` performs every effect on the real folder (so the
code under test reads back what it wrote) and keeps, beside it, a model of
what is *durable* under the strict rules POSIX gives and nothing more:

- a file's bytes are durable as of its last ``fsync``/``fdatasync``; writes,
  truncations and reservations after it are pending;
- a folder's entries (creations, renames in and out, removals) are durable as
  of that folder's last fsync; a rename touches two folders, and each side
  becomes durable with its own folder's fsync (so a cut after the target's
  folder fsync and before the source's leaves both names); until then a
  rename is one operation, which a cut applies whole or not at all;
- a folder or file created and never made durable through its parent is not
  there at all after the cut, whatever was fsynced inside it.

From the record it builds **crash images**, each a :class:`CrashImage` (a
tree of folders and file bytes) that :meth:`CrashImage.materialize` writes
into a fresh folder:

- :meth:`CrashImageFileSystem.image`: a cut now, everything not yet durable
  dropped (taken at every durability point -- each fsync, fdatasync and
  folder fsync -- through :attr:`CrashImageFileSystem.on_sync`);
- :meth:`CrashImageFileSystem.partial_image`: one of a seeded sample of the states
  in between, each pending piece applied or not independently: any subset of
  a file's pending writes at sector granularity (512 B or 4 KiB), a pending
  sector torn (zeros or garbage), an appended file cut anywhere after its
  durable length, and each pending folder entry change applied or not.

Only paths under ``root`` are modelled (inputs elsewhere are read, never
written, by the code under test).  What this does not simulate: a disk that
acknowledges a flush it did not do, and bit rot of durable bytes (the
integrity checks and the corruption tests cover those).

Guarantee: every effect is performed exactly as :class:`FileSystem` performs
it, in the same order; the model is updated under one lock together with the
effect, so its order is the order the file system saw.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ._fs import FileSystem, PathLike

__all__ = ["CrashImage", "CrashImageFileSystem"]

SECTOR_SIZES = (512, 4096)
"""The sector sizes a partial image tears and applies writes at."""
_MAX_DEPTH = 64


@dataclass
class _File:
    volatile: bytearray
    durable: bytes
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    """Writes since the last fsync, in order: (offset, bytes); a truncation is (size, b"") with offset -1 - size."""


@dataclass
class _Folder:
    volatile: dict[str, int]
    durable: dict[str, int]
    together: dict[str, int] = field(default_factory=dict)
    """Pending entry changes made by one rename share a number (in both folders): a cut applies both or neither."""


@dataclass(frozen=True)
class CrashImage:
    """What a power cut at one point leaves: ``tree`` maps root-relative paths to file bytes (None for a folder).

    ``position`` is the number of effects performed before the cut;
    ``label`` says how the image was made (``boundary``, or ``partial`` with
    what was applied).
    """

    position: int
    label: str
    tree: dict[str, bytes | None]

    def materialize(self, dest: PathLike) -> str:
        """Write the image into the new folder ``dest`` (created; it must not exist); return its path."""
        dest = os.fspath(dest)
        os.makedirs(dest)
        for rel in sorted(self.tree, key=lambda r: (r.count("/"), r)):
            data = self.tree[rel]
            path = os.path.join(dest, *rel.split("/"))
            if data is None:
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        return dest


class CrashImageFileSystem(FileSystem):
    """Performs every effect under ``root`` like :class:`FileSystem`, and models what is durable (see the module).

    ``root`` must exist; what is in it when this is created counts as durable.
    :attr:`position` counts effects; :attr:`boundaries` lists the positions
    right after each durability point.
    """

    def __init__(self, root: PathLike, *, sync: bool = True) -> None:
        super().__init__(sync=sync)
        self.root = os.path.realpath(os.fspath(root))
        self._mutex = threading.RLock()
        self._files: dict[int, _File] = {}
        self._folders: dict[int, _Folder] = {}
        self._ids = iter(range(1, 1 << 62))
        self._fds: dict[int, int] = {}
        self.position = 0
        """Effects performed so far (each primitive call that changes something or syncs counts one)."""
        self.boundaries: list[int] = []
        """:attr:`position` right after each fsync, fdatasync and folder fsync, in order."""
        self.on_sync: Callable[[CrashImageFileSystem, bool], None] | None = None
        """Called under the lock at every durability point, ``(fs, before)``: once before the sync takes effect
        (``before=True``: the most pending state, for :meth:`partial_image`) and once after (for :meth:`image`).
        The crash harness takes its images there; it must not call back into the file system's effects."""
        self._root_id = self._scan(self.root)

    # -- the model ---------------------------------------------------------------------

    def _scan(self, path: str) -> int:
        """Model what is on disk at ``path`` as durable; return its inode id."""
        st = os.lstat(path)
        ident = next(self._ids)
        if stat.S_ISDIR(st.st_mode):
            entries = {name: self._scan(os.path.join(path, name)) for name in sorted(os.listdir(path))}
            self._folders[ident] = _Folder(dict(entries), dict(entries))
        else:
            with open(path, "rb") as f:
                data = f.read()
            self._files[ident] = _File(bytearray(data), data)
        return ident

    def _parts(self, path: PathLike) -> list[str] | None:
        """The components of ``path`` under the root, or None for a path outside it (not modelled)."""
        full = os.path.abspath(os.fspath(path))
        parent = os.path.realpath(os.path.dirname(full))
        full = os.path.join(parent, os.path.basename(full))
        if full == self.root:
            return []
        if not full.startswith(self.root + os.sep):
            return None
        return full[len(self.root) + 1 :].split(os.sep)

    def _folder_of(self, parts: list[str]) -> _Folder | None:
        """The folder holding ``parts[-1]`` (by volatile entries), or None when a component is missing."""
        node = self._root_id
        for name in parts[:-1]:
            folder = self._folders.get(node)
            if folder is None or name not in folder.volatile:
                return None
            node = folder.volatile[name]
        return self._folders.get(node)

    def _lookup(self, parts: list[str]) -> int | None:
        if not parts:
            return self._root_id
        folder = self._folder_of(parts)
        return None if folder is None else folder.volatile.get(parts[-1])

    def _tick(self, boundary: bool = False) -> None:
        self.position += 1
        if boundary:
            self.boundaries.append(self.position)

    # -- primitives ----------------------------------------------------------------------

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        with self._mutex:
            parts = self._parts(path)
            existed = parts is not None and self._lookup(parts) is not None
            on_disk = os.path.lexists(path) and not os.path.isdir(path)
            fd = super().open(path, flags, mode)
            if parts is None:
                return fd
            ident = self._lookup(parts)
            if ident is None:
                folder = self._folder_of(parts)
                if folder is None:
                    raise OSError(errno.EIO, f"the crash-image model lost track of the folder of {os.fspath(path)}")
                ident = next(self._ids)
                # a file another writer put there (outside this file system) is pending as a whole until synced
                found = self._read_fd(fd) if on_disk else b""
                self._files[ident] = _File(bytearray(found), b"", [(0, found)] if found else [])
                folder.volatile[parts[-1]] = ident
                self._tick()
            elif existed and flags & os.O_TRUNC and ident in self._files:
                self._truncate(self._files[ident], 0)
                self._tick()
            self._fds[fd] = ident
            return fd

    @staticmethod
    def _read_fd(fd: int) -> bytes:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0) if size else b""

    def close(self, fd: int) -> None:
        with self._mutex:
            self._fds.pop(fd, None)
            super().close(fd)

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        with self._mutex:
            super().write_all(fd, data, offset)
            ident = self._fds.get(fd)
            if ident is None or ident not in self._files:
                return
            raw = bytes(memoryview(data).cast("B"))
            # a write at the file position (O_APPEND: at the end) leaves the position right after it
            start = offset if offset is not None else os.lseek(fd, 0, os.SEEK_CUR) - len(raw)
            f = self._files[ident]
            end = start + len(raw)
            if len(f.volatile) < end:
                f.volatile.extend(bytes(end - len(f.volatile)))
            f.volatile[start:end] = raw
            f.pending.append((start, raw))
            self._tick()

    def _truncate(self, f: _File, size: int) -> None:
        if len(f.volatile) > size:
            del f.volatile[size:]
        else:
            f.volatile.extend(bytes(size - len(f.volatile)))
        f.pending.append((-1 - size, b""))

    def truncate(self, fd: int, size: int) -> None:
        with self._mutex:
            super().truncate(fd, size)
            ident = self._fds.get(fd)
            if ident is not None and ident in self._files:
                self._truncate(self._files[ident], size)
                self._tick()

    def preallocate(self, fd: int, size: int) -> bool:
        with self._mutex:
            done = super().preallocate(fd, size)
            ident = self._fds.get(fd)
            if done and ident is not None and ident in self._files and len(self._files[ident].volatile) < size:
                self._truncate(self._files[ident], size)  # reads back as zeros; durable only with the next fsync
                self._tick()
            return done

    def _sync(self, fd: int) -> None:
        ident = self._fds.get(fd)
        if ident is None:
            return
        if self.on_sync is not None:
            self.on_sync(self, True)
        if ident in self._files:
            f = self._files[ident]
            f.durable = bytes(f.volatile)
            f.pending.clear()
        elif ident in self._folders:
            folder = self._folders[ident]
            folder.durable = dict(folder.volatile)
            folder.together.clear()
        self._tick(boundary=True)
        if self.on_sync is not None:
            self.on_sync(self, False)

    def fsync(self, fd: int) -> None:
        with self._mutex:
            super().fsync(fd)
            self._sync(fd)

    def fdatasync(self, fd: int) -> None:
        with self._mutex:
            super().fdatasync(fd)
            self._sync(fd)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        with self._mutex:
            src_parts, dst_parts = self._parts(src), self._parts(dst)
            super().replace(src, dst)
            if src_parts is None or dst_parts is None:
                return
            src_folder, dst_folder = self._folder_of(src_parts), self._folder_of(dst_parts)
            if src_folder is None or dst_folder is None or src_parts[-1] not in src_folder.volatile:
                raise OSError(errno.EIO, f"the crash-image model lost track of {os.fspath(src)} -> {os.fspath(dst)}")
            dst_folder.volatile[dst_parts[-1]] = src_folder.volatile.pop(src_parts[-1])
            # one rename is one operation: until a folder fsync makes a side durable on its own, a cut applies
            # both of its entry changes or neither (never neither name after the cut, never both in one folder)
            src_folder.together[src_parts[-1]] = dst_folder.together[dst_parts[-1]] = self.position
            self._tick()

    def mkdir(self, path: PathLike) -> None:
        with self._mutex:
            parts = self._parts(path)
            super().mkdir(path)
            if not parts:
                return
            folder = self._folder_of(parts)
            if folder is None:
                raise OSError(errno.EIO, f"the crash-image model lost track of the folder of {os.fspath(path)}")
            ident = next(self._ids)
            self._folders[ident] = _Folder({}, {})
            folder.volatile[parts[-1]] = ident
            self._tick()

    def _remove(self, path: PathLike) -> None:
        parts = self._parts(path)
        if not parts:
            return
        folder = self._folder_of(parts)
        if folder is not None:
            folder.volatile.pop(parts[-1], None)
        self._tick()

    def unlink(self, path: PathLike) -> None:
        with self._mutex:
            super().unlink(path)
            self._remove(path)

    def rmdir(self, path: PathLike) -> None:
        with self._mutex:
            super().rmdir(path)
            self._remove(path)

    # -- images --------------------------------------------------------------------------

    def _tree(self, pick_entries: dict[int, dict[str, int]], pick_bytes: dict[int, bytes]) -> dict[str, bytes | None]:
        tree: dict[str, bytes | None] = {}
        stack: list[tuple[int, str, int]] = [(self._root_id, "", 0)]
        while stack:
            ident, rel, depth = stack.pop()
            if depth > _MAX_DEPTH:
                raise OSError(errno.ELOOP, f"the crash-image model nests deeper than {_MAX_DEPTH} folders at {rel}")
            for name, child in pick_entries.get(ident, {}).items():
                child_rel = f"{rel}/{name}" if rel else name
                if child in self._folders:
                    tree[child_rel] = None
                    stack.append((child, child_rel, depth + 1))
                elif child in pick_bytes:
                    tree[child_rel] = pick_bytes[child]
        return tree

    def image(self) -> CrashImage:
        """The image of a power cut now: every pending change dropped."""
        with self._mutex:
            entries = {ident: folder.durable for ident, folder in self._folders.items()}
            data = {ident: f.durable for ident, f in self._files.items()}
            return CrashImage(self.position, "boundary", self._tree(entries, data))

    def partial_image(self, rng: random.Random) -> CrashImage:
        """One image of a power cut now in which each pending change is applied or not (seeded by ``rng``).

        Folder entries: each name whose entry differs between the durable and
        the current state takes either value.  Files: a random prefix of the
        pending writes and truncations is considered, each write applied at a
        sector size of 512 B or 4 KiB sector by sector or not; with some
        probability one applied sector is torn (zeros or random bytes); the
        file's length is anything from its durable length to its current one.
        """
        with self._mutex:
            entries: dict[int, dict[str, int]] = {}
            applied: list[str] = []
            decided: dict[int, bool] = {}
            for ident, folder in self._folders.items():
                chosen = dict(folder.durable)
                for name in sorted(set(folder.durable) | set(folder.volatile)):
                    if folder.durable.get(name) == folder.volatile.get(name):
                        continue
                    group = folder.together.get(name)
                    if group is None:
                        take = rng.random() < 0.5
                    else:
                        take = decided.setdefault(group, rng.random() < 0.5)
                    if not take:
                        continue
                    applied.append(name)
                    if name in folder.volatile:
                        chosen[name] = folder.volatile[name]
                    else:
                        chosen.pop(name, None)
                entries[ident] = chosen
            data = {ident: self._partial_bytes(f, rng) if f.pending else f.durable for ident, f in self._files.items()}
            label = f"partial: {len(applied)} pending entr(ies) applied"
            return CrashImage(self.position, label, self._tree(entries, data))

    @staticmethod
    def _partial_bytes(f: _File, rng: random.Random) -> bytes:
        sector = rng.choice(SECTOR_SIZES)
        out = bytearray(f.durable)
        touched: list[int] = []
        for offset, raw in f.pending[: rng.randint(0, len(f.pending))]:
            if offset < 0:  # a truncation (or a reservation: zeros)
                size = -1 - offset
                if len(out) > size:
                    del out[size:]
                else:
                    out.extend(bytes(size - len(out)))
                continue
            end = offset + len(raw)
            if len(out) < end:
                out.extend(bytes(end - len(out)))
            first = offset - offset % sector
            for start in range(first, end, sector):
                if rng.random() < 0.5:
                    lo, hi = max(start, offset), min(start + sector, end)
                    out[lo:hi] = raw[lo - offset : hi - offset]
                    touched.append(lo)
        if touched and rng.random() < 0.2:
            lo = rng.choice(touched)
            hi = min(len(out), lo - lo % sector + sector)
            out[lo:hi] = bytes(hi - lo) if rng.random() < 0.5 else rng.randbytes(hi - lo)
        low = min(len(f.durable), len(out))
        return bytes(out[: rng.randint(low, len(out))])
