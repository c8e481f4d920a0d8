"""Manifests: the list of files (names, sizes, CRC-32 checksums) that makes a folder complete.

A checkpoint or model folder is complete only when its ``MANIFEST`` exists,
and the manifest is always written last (atomically, after every file it
lists is fsynced).  Verifying a folder compares every file on disk with its
entry: a missing file, a different size, a different checksum or a file the
manifest does not list raises :class:`IntegrityError` naming the file.

The checksum is CRC-32 (zlib's, computed by ISA-L at ~14 GB/s here when installed): it catches torn
writes, truncation and bit rot at close to the speed of writing, which is what
a checkpoint on the critical path of training can afford.  It is not a
defence against deliberate tampering.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from shipslog.journal import FileSystem, UnsupportedFormatError, crc32, is_temp_name, read_limited

from ._errors import IntegrityError, InvalidFieldError, InvalidNameError
from ._fields import (
    MAX_NESTING,
    decode_json_within,
    expect_count,
    expect_name,
    expect_nested_within,
    reject,
)
from ._layout import ARTIFACT_FOLDERS
from ._names import MAX_RELPATH_PARTS, check_relpath

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "FileEntry",
    "Manifest",
    "check_manifest",
    "checksum_file",
    "crc32_file",
    "new_manifest",
    "read_manifest",
    "scan_folder",
    "verify_folder",
    "write_manifest",
]

MANIFEST_NAME = "MANIFEST"
MANIFEST_VERSION = 1
_CHUNK = 4 << 20


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of a folder: its path relative to the folder ('/'-separated), size in bytes, CRC-32."""

    path: str
    size: int
    crc32: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a complete checkpoint or model folder holds.

    ``kind`` is ``"checkpoint"`` or ``"model"``; ``step`` the global training
    step (checkpoints); ``meta`` small JSON-able metadata given by the caller.
    """

    version: int = MANIFEST_VERSION
    kind: str
    name: str
    step: int | None = None
    created_ns: int = 0
    meta: dict[str, Any] = {}
    files: list[FileEntry] = []

    @property
    def total_bytes(self) -> int:
        """The sum of the listed files' sizes."""
        return sum(f.size for f in self.files)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Manifest)

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""The largest MANIFEST read (about half a million files); a longer one is refused before it is read whole."""


def check_manifest(manifest: Manifest) -> None:
    """Raise :class:`InvalidFieldError` unless every field of a manifest read from disk is one shipslog writes.

    ``kind`` a known artifact kind, ``name`` a plain name, ``step`` and every
    size non-negative, every CRC-32 in range, every file path a safe relative
    path (never ``..``, never absolute, never the MANIFEST) listed once, and
    ``meta`` nested at most :data:`MAX_NESTING` levels (one more for a merged
    model's, which holds the merge report).  So verifying a folder
    never reads a file outside it.
    """
    if manifest.kind not in ARTIFACT_FOLDERS:
        reject("kind", manifest.kind, f"one of {sorted(ARTIFACT_FOLDERS)}")
    expect_name("name", manifest.name, manifest.kind)
    if manifest.step is not None:
        expect_count("step", manifest.step)
    expect_nested_within("meta", manifest.meta, MAX_NESTING + 1)  # a merged model's meta holds its merge report
    seen: set[str] = set()
    for i, entry in enumerate(manifest.files):
        try:
            check_relpath("file", entry.path)
        except ValueError as exc:
            reject(f"files[{i}].path", entry.path, f"a safe path inside the folder ({exc})")
        if entry.path == MANIFEST_NAME or entry.path in seen:
            reject(f"files[{i}].path", entry.path, "a file listed once, other than the MANIFEST")
        seen.add(entry.path)
        expect_count(f"files[{i}].size", entry.size)
        if not 0 <= entry.crc32 <= 0xFFFFFFFF:
            reject(f"files[{i}].crc32", entry.crc32, "a CRC-32 (0 to 2**32 - 1)")


def crc32_file(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Return ``(size, crc32)`` of the file at ``path``, read in 4 MiB chunks."""
    crc = 0
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            crc = crc32(view[:n], crc)
            size += n
    return size, crc


def checksum_file(folder: str | os.PathLike[str], relpath: str) -> FileEntry:
    """The :class:`FileEntry` of ``folder/relpath`` as it is on disk now."""
    size, crc = crc32_file(os.path.join(os.fspath(folder), *relpath.split("/")))
    return FileEntry(relpath, size, crc)


def scan_folder(folder: str | os.PathLike[str]) -> list[str]:
    """Every regular file under ``folder`` as a sorted '/'-separated relative path, without the manifest.

    Raises :class:`IntegrityError` for anything that is neither a folder nor a
    regular file (a symlink, a device): the engine never follows links out of
    its folders.  Temporary names left by an interrupted atomic write are
    reported too, since they are not results; so is a name a manifest could
    not list (:func:`check_relpath`) and a folder nested deeper than
    :data:`MAX_RELPATH_PARTS`.  Iterative: any depth on disk is refused
    without recursion.
    """
    folder = os.fspath(folder)
    found: list[str] = []
    pending: list[tuple[str, str]] = [(folder, "")]
    while pending:
        dirpath, rel_dir = pending.pop()
        for name in os.listdir(dirpath):
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}{name}"
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                if rel.count("/") + 2 > MAX_RELPATH_PARTS:
                    raise IntegrityError(full, f"files at most {MAX_RELPATH_PARTS} folders deep", "a deeper folder")
                pending.append((full, f"{rel}/"))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(full, "a regular file or folder", "a symlink or special file")
            if rel == MANIFEST_NAME:
                continue
            if is_temp_name(name):
                raise IntegrityError(full, "only complete files", "a temporary file left by an interrupted write")
            try:
                check_relpath("file", rel)
            except InvalidNameError as exc:
                raise IntegrityError(full, "a file name a manifest can list", exc.reason) from None
            found.append(rel)
    return sorted(found)


def write_manifest(fs: FileSystem, folder: str | os.PathLike[str], manifest: Manifest) -> bytes:
    """Write ``folder/MANIFEST`` atomically and durably (temp file, fsync, rename, fsync folder); return its bytes."""
    data = _encoder.encode(manifest) + b"\n"
    fs.write_file_atomic(os.path.join(os.fspath(folder), MANIFEST_NAME), data)
    return data


def new_manifest(kind: str, name: str, files: Iterable[FileEntry], *, step: int | None = None, meta: dict[str, Any] | None = None) -> Manifest:
    """A manifest for ``files`` (sorted by path), stamped with the current time."""
    return Manifest(
        kind=kind,
        name=name,
        step=step,
        created_ns=time.time_ns(),
        meta=dict(meta or {}),
        files=sorted(files, key=lambda f: f.path),
    )


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Read and parse ``folder/MANIFEST``; a missing or unreadable manifest is an :class:`IntegrityError`."""
    path = os.path.join(os.fspath(folder), MANIFEST_NAME)
    try:
        data = read_limited(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise IntegrityError(path, "a MANIFEST (written last, when the folder is complete)", "no MANIFEST") from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EINVAL, errno.EISDIR):
            raise
        raise IntegrityError(path, "a MANIFEST that is a regular file", "a symbolic link, a folder or a special file") from None
    if data is None:
        raise IntegrityError(path, f"a MANIFEST of at most {MAX_MANIFEST_BYTES} bytes", "a larger file")
    try:
        head = decode_json_within(data, MAX_NESTING + 3)  # the manifest, its meta (and a merge report in it), then their levels
    except msgspec.DecodeError as exc:
        raise IntegrityError(path, "a JSON manifest", f"bytes that do not parse ({exc})") from None
    if isinstance(head, dict) and isinstance(head.get("version"), int) and head["version"] > MANIFEST_VERSION:
        raise UnsupportedFormatError(path, "manifest", head["version"], MANIFEST_VERSION)
    try:
        manifest = _decoder.decode(data)
        check_manifest(manifest)
    except msgspec.ValidationError as exc:
        raise IntegrityError(path, "a valid manifest", f"a manifest that does not validate ({exc})") from None
    except InvalidFieldError as exc:
        raise IntegrityError(path, f"a valid manifest: {exc.field} {exc.expected}", f"{exc.field} = {exc.value!r:.200}") from None
    return manifest


def verify_folder(
    folder: str | os.PathLike[str],
    manifest: Manifest | None = None,
    *,
    deep: bool = True,
    on_file: Callable[[str, int], None] | None = None,
) -> Manifest:
    """Check that ``folder`` holds exactly the files its manifest lists, with their sizes and checksums.

    Returns the manifest.  ``deep=False`` checks presence and sizes only (fast;
    what ``latest_checkpoint`` trusts between full verifications).  Raises
    :class:`IntegrityError` naming the first file that differs.  With ``deep``,
    ``on_file`` (a progress hook) is called with each file's path and size
    once its checksum was computed and matches; it is never called without
    ``deep`` and changes nothing that is checked.
    """
    folder = os.fspath(folder)
    if manifest is None:
        manifest = read_manifest(folder)
    listed = {f.path: f for f in manifest.files}
    on_disk = scan_folder(folder)
    for rel in on_disk:
        if rel not in listed:
            raise IntegrityError(os.path.join(folder, rel), "only the files the manifest lists", "a file it does not list")
    present = set(on_disk)
    for entry in manifest.files:
        path = os.path.join(folder, *entry.path.split("/"))
        if entry.path not in present:
            raise IntegrityError(path, f"a file of {entry.size} bytes", "no file")
        size = os.stat(path).st_size
        if size != entry.size:
            raise IntegrityError(path, f"{entry.size} bytes", f"{size} bytes")
        if deep:
            size, crc = crc32_file(path)
            if size != entry.size or crc != entry.crc32:
                raise IntegrityError(path, f"crc32 {entry.crc32:08x} over {entry.size} bytes", f"crc32 {crc:08x} over {size} bytes")
            if on_file is not None:
                on_file(path, size)
    return manifest
