"""Manifests: names, sizes and CRC-32s of a folder; verify_folder names the first file that differs;
read_manifest refuses a missing, garbage or newer-version manifest."""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import pytest
from _engine_helpers import flip_bit, truncate, write_files

from shipslog.engine import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    FileEntry,
    IntegrityError,
    checksum_file,
    crc32_file,
    new_manifest,
    read_manifest,
    scan_folder,
    verify_folder,
    write_manifest,
)
from shipslog.journal import FileSystem, UnsupportedFormatError

FILES = {
    "model.bin": bytes(range(256)) * 50,
    "config.json": b'{"a": 1}',
    "sub/deeper/shard-0.bin": b"\x00" * 300,
    "empty.txt": b"",
}


@pytest.fixture
def folder(tmp_path: Any) -> str:
    path = os.path.join(tmp_path, "ckpt")
    write_files(path, FILES)
    entries = [checksum_file(path, rel) for rel in scan_folder(path)]
    write_manifest(FileSystem(sync=False), path, new_manifest("checkpoint", "ckpt", entries, step=7, meta={"k": "v"}))
    return path


def test_a_manifest_lists_every_file_with_size_and_crc32(folder: str) -> None:
    manifest = read_manifest(folder)
    assert manifest.version == MANIFEST_VERSION and manifest.kind == "checkpoint" and manifest.name == "ckpt"
    assert manifest.step == 7 and manifest.meta == {"k": "v"} and manifest.created_ns > 0
    assert manifest.files == [FileEntry(p, len(FILES[p]), zlib.crc32(FILES[p])) for p in sorted(FILES)]
    assert manifest.total_bytes == sum(len(v) for v in FILES.values())
    with open(os.path.join(folder, MANIFEST_NAME), "rb") as f:
        on_disk = json.loads(f.read())
    assert on_disk["files"][0] == {"path": "config.json", "size": 8, "crc32": zlib.crc32(b'{"a": 1}')}
    assert verify_folder(folder) == manifest
    assert verify_folder(folder, deep=False) == manifest
    assert [n for n in os.listdir(folder) if n.startswith(".")] == [], "write_manifest left a temporary file"


def test_crc32_file_matches_zlib(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "big.bin")
    data = bytes(range(256)) * (5 << 12)  # over one 4 MiB chunk
    with open(path, "wb") as f:
        f.write(data)
    assert crc32_file(path) == (len(data), zlib.crc32(data))


def test_scan_folder_lists_files_sorted_without_the_manifest(folder: str) -> None:
    assert scan_folder(folder) == sorted(FILES)


def test_a_missing_file_fails(folder: str) -> None:
    os.remove(os.path.join(folder, "sub", "deeper", "shard-0.bin"))
    with pytest.raises(IntegrityError) as info:
        verify_folder(folder, deep=False)
    assert info.value.path.endswith("shard-0.bin") and info.value.found == "no file"


def test_a_wrong_size_fails_even_shallow(folder: str) -> None:
    truncate(os.path.join(folder, "model.bin"), 100)
    with pytest.raises(IntegrityError) as info:
        verify_folder(folder, deep=False)
    assert info.value.path.endswith("model.bin")
    assert str(len(FILES["model.bin"])) in info.value.expected and "100 bytes" in info.value.found


def test_a_bit_flip_fails_deep_only(folder: str) -> None:
    flip_bit(os.path.join(folder, "model.bin"), 1234, 5)
    verify_folder(folder, deep=False)  # same size: the shallow check cannot see it
    with pytest.raises(IntegrityError) as info:
        verify_folder(folder)
    assert info.value.path.endswith("model.bin") and "crc32" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_an_extra_unlisted_file_fails(folder: str) -> None:
    with open(os.path.join(folder, "sub", "smuggled.pkl"), "wb") as f:
        f.write(b"x")
    with pytest.raises(IntegrityError) as info:
        verify_folder(folder, deep=False)
    assert info.value.path.endswith("smuggled.pkl") and "does not list" in info.value.found


def test_a_symlink_fails(folder: str, tmp_path: Any) -> None:
    outside = os.path.join(tmp_path, "outside.bin")
    with open(outside, "wb") as f:
        f.write(FILES["config.json"])
    os.remove(os.path.join(folder, "config.json"))
    os.symlink(outside, os.path.join(folder, "config.json"))
    with pytest.raises(IntegrityError, match="symlink"):
        verify_folder(folder)


def test_a_symlinked_folder_fails(folder: str, tmp_path: Any) -> None:
    os.symlink(tmp_path, os.path.join(folder, "escape"))
    with pytest.raises(IntegrityError, match="symlink"):
        verify_folder(folder)


def test_a_temporary_file_left_by_an_interrupted_write_fails(folder: str) -> None:
    with open(os.path.join(folder, ".model.bin.tmp-abcd1234"), "wb") as f:
        f.write(b"half")
    with pytest.raises(IntegrityError, match="temporary"):
        verify_folder(folder)


def test_a_file_replaced_by_a_folder_fails(folder: str) -> None:
    os.remove(os.path.join(folder, "empty.txt"))
    os.mkdir(os.path.join(folder, "empty.txt"))
    with pytest.raises(IntegrityError, match=r"empty\.txt"):
        verify_folder(folder)


def test_a_manifest_listing_a_path_outside_the_folder_fails(folder: str, tmp_path: Any) -> None:
    outside = os.path.join(tmp_path, "outside.bin")
    with open(outside, "wb") as f:
        f.write(b"o")
    manifest = read_manifest(folder)
    evil = new_manifest("checkpoint", "ckpt", [*manifest.files, FileEntry("../outside.bin", 1, zlib.crc32(b"o"))])
    with pytest.raises(IntegrityError, match=r"outside\.bin"):
        verify_folder(folder, evil)


# -- read_manifest -------------------------------------------------------------------------------------


def test_a_missing_manifest(tmp_path: Any) -> None:
    write_files(os.path.join(tmp_path, "f"), {"a": b"a"})
    with pytest.raises(IntegrityError) as info:
        read_manifest(os.path.join(tmp_path, "f"))
    assert info.value.path.endswith(MANIFEST_NAME) and info.value.found == "no MANIFEST"
    with pytest.raises(IntegrityError):
        verify_folder(os.path.join(tmp_path, "f"))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01garbage", b'{"version": 1, "kind": "checkpoint"', b"[1, 2, 3]", b'{"version": 1, "kind": "checkpoint", "name": "x", "files": [{"path": "a"}]}',
     b'{"version": 1, "kind": "checkpoint", "name": "x", "files": [{"path": "a", "size": "1", "crc32": 0}]}',
     b'{"version": 1, "kind": "checkpoint", "name": "x", "files": [{"path": "a", "size": 1, "crc32": 0, "extra": 1}]}',
     b'{"kind": "checkpoint"}'],
    ids=["empty", "binary", "truncated", "array", "entry-missing-fields", "size-not-int", "unknown-entry-field", "no-name"],
)
def test_a_garbage_manifest_is_an_integrity_error(tmp_path: Any, data: bytes) -> None:
    write_files(os.path.join(tmp_path, "f"), {MANIFEST_NAME: data})
    with pytest.raises(IntegrityError) as info:
        read_manifest(os.path.join(tmp_path, "f"))
    assert info.value.path.endswith(MANIFEST_NAME)


def test_a_newer_manifest_version_is_refused_by_name(folder: str) -> None:
    path = os.path.join(folder, MANIFEST_NAME)
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    doc["version"] = MANIFEST_VERSION + 1
    doc["something_new"] = {"x": 1}
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(UnsupportedFormatError) as info:
        read_manifest(folder)
    assert str(MANIFEST_VERSION + 1) in str(info.value) and str(MANIFEST_VERSION) in str(info.value)
    with pytest.raises(UnsupportedFormatError):
        verify_folder(folder)


def test_write_manifest_replaces_atomically(folder: str) -> None:
    m = new_manifest("model", "renamed", [])
    data = write_manifest(FileSystem(sync=False), folder, m)
    with open(os.path.join(folder, MANIFEST_NAME), "rb") as f:
        assert f.read() == data
    assert read_manifest(folder).name == "renamed"
