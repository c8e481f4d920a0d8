"""Tensor files: safetensors written directly, checksummed while written, verified when loaded."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import numpy as np

from shipslog.engine import FileEntry, IntegrityError, crc32_file
from shipslog.gpu import (
    PickleRefusedError,
    StateDictError,
    TensorFileError,
    TensorFileNotFoundError,
    load_state_dict,
    load_tensor_file,
    save_state_dict,
    save_tensor_file,
    tensor_file_metadata,
)
from shipslog.journal import RecordingFileSystem

HEADER_LIMIT = 100 << 20
"""The documented bound on a safetensors JSON header (checked on its length prefix, before it is read)."""
JSON_LIMIT = 64 << 20
"""The documented bound on a ``P.tree.json`` or shard index (checked on the file size, before it is read)."""
STATE_DEPTH_LIMIT = 64
"""The documented bound on the nesting of containers in a saved state (the root dict counts as 1)."""


def _all_dtypes() -> dict[str, Any]:
    torch.manual_seed(0)
    return {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(4, 2).half(),
        "bf16": torch.randn(7).bfloat16(),
        "f64": torch.randn(2, 2, 2, dtype=torch.float64),
        "i64": torch.randint(-(2**40), 2**40, (6,)),
        "i32": torch.randint(-1000, 1000, (3, 3), dtype=torch.int32),
        "i16": torch.randint(-1000, 1000, (5,), dtype=torch.int16),
        "i8": torch.randint(-100, 100, (9,), dtype=torch.int8),
        "u8": torch.randint(0, 255, (11,), dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
    }


def _assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_flat_state_round_trips_every_dtype_in_order(tmp_path: Path) -> None:
    state = _all_dtypes()
    entries = save_state_dict(state, tmp_path)
    assert [e.path for e in entries] == ["model.safetensors"]
    loaded = load_state_dict(tmp_path, entries=entries)
    _assert_same(loaded, state)


def test_files_load_with_the_safetensors_library(tmp_path: Path) -> None:
    state = _all_dtypes()
    save_state_dict(state, tmp_path)
    loaded = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor)


def test_entries_match_the_bytes_on_disk(tmp_path: Path) -> None:
    entries = save_state_dict({"a": {"b": torch.arange(10), "c": torch.ones(3)}, "step": 3}, tmp_path, shard_bytes=16)
    assert len(entries) == 4
    for entry in entries:
        assert crc32_file(tmp_path / entry.path) == (entry.size, entry.crc32)
    assert sorted(e.path for e in entries) == sorted(os.listdir(tmp_path))


def test_header_is_padded_and_tensors_are_aligned(tmp_path: Path) -> None:
    state = {"byte": torch.ones(3, dtype=torch.uint8), "wide": torch.ones(5, dtype=torch.float64), "mid": torch.ones(3)}
    save_state_dict(state, tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["format"] == "pt"
    assert list(header)[1:] == ["byte", "wide", "mid"]
    for name, tensor in state.items():
        begin = header[name]["data_offsets"][0]
        assert (8 + n + begin) % tensor.element_size() == 0


def test_nested_state_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": {"last_epoch": 7, "base_lrs": [0.001], "warmup": None},
        "rng": {"torch": torch.get_rng_state(), "python": random.Random(5).getstate(), "numpy": np.random.default_rng(3).random(4)},
        "numbers": {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "big": 2**63 - 1, "flag": True, "name": "run-1"},
        "step": 1200,
    }
    entries = save_state_dict(state, tmp_path, prefix="trainer")
    assert sorted(e.path for e in entries) == ["trainer.safetensors", "trainer.tree.json"]
    loaded = load_state_dict(tmp_path, entries=entries, prefix="trainer")
    _assert_same(loaded, state)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert list(loaded["optimizer"]["state"]) == [0, 1]


def test_flat_state_writes_no_tree_file(tmp_path: Path) -> None:
    entries = save_state_dict({"w": torch.ones(2)}, tmp_path)
    assert [e.path for e in entries] == ["model.safetensors"]


def test_sharded_save_names_shards_and_index(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = {f"layer{i}.weight": torch.randn(64) for i in range(5)}  # 256 bytes each
    entries = save_state_dict(state, tmp_path, shard_bytes=600)
    names = [e.path for e in entries]
    assert names == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 256
    assert index["weight_map"]["layer4.weight"] == "model-00003-of-00003.safetensors"
    seen: dict[str, Any] = {}
    for name in names[:3]:
        seen.update(safetensors_torch.load_file(str(tmp_path / name)))
    _assert_same({k: seen[k] for k in state}, state)
    _assert_same(load_state_dict(tmp_path, entries=entries), state)


def test_tensors_on_other_layouts_are_saved_by_value(tmp_path: Path) -> None:
    torch.manual_seed(3)
    base = torch.randn(4, 6, requires_grad=True)
    state = {"t": base.t(), "slice": base[:, 1:3], "conj": torch.randn(3, dtype=torch.complex64).conj()}
    save_state_dict(state, tmp_path)
    loaded = load_state_dict(tmp_path)
    assert torch.equal(loaded["t"], base.detach().t())
    assert torch.equal(loaded["slice"], base.detach()[:, 1:3])
    assert torch.equal(loaded["conj"], state["conj"].resolve_conj())


def test_loaded_tensors_own_their_storage(tmp_path: Path) -> None:
    entries = save_state_dict({"a": torch.ones(10), "b": torch.zeros(3)}, tmp_path)
    loaded = load_state_dict(tmp_path, entries=entries)
    for t in loaded.values():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_colliding_names_are_refused_before_writing(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with pytest.raises(StateDictError, match=r"a\.b"):
        save_state_dict({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, folder)
    assert not folder.exists() or os.listdir(folder) == []


def test_unsupported_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateDictError, match=r"opt\.fn.*object"):
        save_state_dict({"opt": {"fn": object()}}, tmp_path)


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(StateDictError, match="metadata"):
        save_state_dict({"a": torch.ones(1)}, tmp_path, metadata={"step": 3})  # type: ignore[dict-item]


def test_fsync_covers_every_file_then_the_folder(tmp_path: Path) -> None:
    fs = RecordingFileSystem()
    entries = save_state_dict({"a": torch.ones(4), "b": {"c": 1}}, tmp_path, fs=fs)
    ops = [(o.op, o.path) for o in fs.ops]
    for entry in entries:
        path = str(tmp_path / entry.path)
        last_write = max(i for i, op in enumerate(ops) if op == ("write", path))
        assert ops.index(("fsync", path)) > last_write
    assert ops[-2:] == [("fsync", str(tmp_path)), ("close", str(tmp_path))]


def test_fsync_false_skips_fsync(tmp_path: Path) -> None:
    fs = RecordingFileSystem()
    save_state_dict({"a": torch.ones(4)}, tmp_path, fs=fs, fsync=False)
    assert fs.count("fsync") == 0


# --------------------------------------------------------------------- verification


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flip_in_data_section_is_caught(tmp_path: Path) -> None:
    torch.manual_seed(4)
    entries = save_state_dict({"w": torch.randn(256)}, tmp_path)
    path = tmp_path / "model.safetensors"
    _flip(path, path.stat().st_size - 5)
    with pytest.raises(IntegrityError, match=r"model\.safetensors") as info:
        load_state_dict(tmp_path, entries=entries)
    assert "crc32" in str(info.value)


def test_bit_flip_in_header_is_caught_as_integrity_error(tmp_path: Path) -> None:
    entries = save_state_dict({"w": torch.ones(8)}, tmp_path)
    _flip(tmp_path / "model.safetensors", 12)
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        load_state_dict(tmp_path, entries=entries)


def test_truncated_file_is_caught_by_size(tmp_path: Path) -> None:
    entries = save_state_dict({"w": torch.ones(8)}, tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(IntegrityError, match=r"expected \d+ bytes"):
        load_state_dict(tmp_path, entries=entries)


def test_bit_flip_in_tree_file_is_caught(tmp_path: Path) -> None:
    entries = save_state_dict({"w": torch.ones(2), "step": 5}, tmp_path)
    _flip(tmp_path / "model.tree.json", 3)
    with pytest.raises(IntegrityError, match=r"model\.tree\.json"):
        load_state_dict(tmp_path, entries=entries)


def test_file_not_in_entries_is_refused(tmp_path: Path) -> None:
    entries = save_state_dict({"w": torch.ones(2), "step": 5}, tmp_path)
    with pytest.raises(IntegrityError, match=r"model\.tree\.json"):
        load_state_dict(tmp_path, entries=[e for e in entries if e.path != "model.tree.json"])


def test_other_listed_files_are_verified_too(tmp_path: Path) -> None:
    entries = save_state_dict({"w": torch.ones(2)}, tmp_path)
    (tmp_path / "trainer.json").write_text('{"step": 1}')
    listed = [*entries, FileEntry("trainer.json", 11, zlib.crc32(b'{"step": 2}'))]
    with pytest.raises(IntegrityError, match=r"trainer\.json"):
        load_state_dict(tmp_path, entries=listed)


def test_missing_shard_is_an_integrity_error(tmp_path: Path) -> None:
    entries = save_state_dict({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path, shard_bytes=16)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(IntegrityError, match="00002-of-00002"):
        load_state_dict(tmp_path, entries=entries)


def test_index_naming_a_path_outside_the_folder_is_refused(tmp_path: Path) -> None:
    save_state_dict({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path, shard_bytes=16)
    index = tmp_path / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["b"] = "../evil.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(TensorFileError, match="evil"):
        load_state_dict(tmp_path)


# --------------------------------------------------------------------- malformed files


def _write_raw(path: Path, header: Any, data: bytes = b"", *, raw_header: bytes | None = None) -> Path:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def test_file_shorter_than_header_length(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(TensorFileError, match=r"x.safetensors.*at least 8 bytes.*3 bytes"):
        load_tensor_file(path)


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(TensorFileError, match="header length of 1000 bytes, past the end"):
        load_tensor_file(path)


def test_header_that_is_not_json(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", None, raw_header=b"{not json")
    with pytest.raises(TensorFileError, match="do not parse as JSON"):
        load_tensor_file(path)


def test_offsets_past_the_data_section(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 8)
    with pytest.raises(TensorFileError, match=r"tensor 'w'.*data_offsets"):
        load_tensor_file(path)


def test_offsets_that_disagree_with_shape(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8)
    with pytest.raises(TensorFileError, match=r"12 bytes for shape \[3\]"):
        load_tensor_file(path)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\x00")
    with pytest.raises(TensorFileError, match=r"tensor 'w'.*dtype 'F4'"):
        load_tensor_file(path)


def test_gap_between_tensors(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
        "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},
    }
    path = _write_raw(tmp_path / "x.safetensors", header, b"\x00" * 6)
    with pytest.raises(TensorFileError, match="gap of 2 bytes"):
        load_tensor_file(path)


def test_trailing_bytes_after_last_tensor(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x00" * 5)
    with pytest.raises(TensorFileError, match="3 bytes after the last tensor"):
        load_tensor_file(path)


def test_folder_without_tensor_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TensorFileNotFoundError, match=r"model\.safetensors"):
        load_state_dict(tmp_path)


def test_single_file_round_trip_with_metadata(tmp_path: Path) -> None:
    torch.manual_seed(5)
    tensors = {"x": torch.randn(3, 3).bfloat16(), "y": torch.tensor(7)}
    entry = save_tensor_file(tmp_path / "one.safetensors", tensors, metadata={"step": "9"})
    assert entry.path == "one.safetensors"
    assert crc32_file(tmp_path / "one.safetensors") == (entry.size, entry.crc32)
    _assert_same(load_tensor_file(tmp_path / "one.safetensors", entry=entry), tensors)
    assert tensor_file_metadata(tmp_path / "one.safetensors") == {"format": "pt", "step": "9"}


# --------------------------------------------------------------------- hostile headers and trees


def _entry(shape: Any, dtype: Any = "F32", offsets: Any = (0, 0)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


def test_shape_dimension_beyond_int64_is_a_tensor_file_error(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": _entry([0, 2**63])})
    with pytest.raises(TensorFileError, match=r"x\.safetensors \(tensor 'w'\): expected a shape .* \[0, 2\*\*63\), found shape \[0, 9223372036854775808\]"):
        load_tensor_file(path)


def test_shape_whose_strides_overflow_is_a_tensor_file_error(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": _entry([0, 2**62, 4])})
    with pytest.raises(TensorFileError, match=r"tensor 'w'.*non-zero dimensions multiply to less than 2\*\*63"):
        load_tensor_file(path)


def test_shape_of_more_than_64_dimensions_is_a_tensor_file_error(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": _entry([0] * 65)})
    with pytest.raises(TensorFileError, match=r"tensor 'w'.*at most 64 ints"):
        load_tensor_file(path)


@pytest.mark.parametrize("shape", [[1.0], [-1], [True], "4", None, [[1]]])
def test_malformed_shape_is_a_tensor_file_error(tmp_path: Path, shape: Any) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": _entry(shape)})
    with pytest.raises(TensorFileError, match=r"x\.safetensors.*tensor 'w'"):
        load_tensor_file(path)


def test_header_nested_deeply_is_a_tensor_file_error(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for raw in (deep, b'{"w": ' + deep + b"}", b'{"w": {"dtype": "F32", "shape": ' + deep + b', "data_offsets": [0, 0]}}'):
        path = _write_raw(tmp_path / "x.safetensors", None, raw_header=raw)
        with pytest.raises(TensorFileError, match=r"x\.safetensors.*nested deeper than 3 levels"):
            load_tensor_file(path)


def test_header_nested_four_levels_names_the_tensor(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"a": _entry([0]), "w": {"dtype": "F32", "shape": [[0]], "data_offsets": [0, 0]}})
    with pytest.raises(TensorFileError, match=r"x\.safetensors \(tensor 'w'\).*nested deeper than 3 levels"):
        load_tensor_file(path)


@pytest.mark.parametrize("metadata", [{"a": 1}, {"a": ["b"]}, ["a"], "a", 0])
def test_metadata_that_is_not_a_flat_string_map_is_a_tensor_file_error(tmp_path: Path, metadata: Any) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"__metadata__": metadata})
    with pytest.raises(TensorFileError, match=r"x\.safetensors.*__metadata__ as a flat object of str -> str"):
        load_tensor_file(path)


def test_null_metadata_reads_as_empty(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"__metadata__": None, "w": _entry([0])})
    assert tensor_file_metadata(path) == {}


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(["F32"], "a dtype among"), (3, "a dtype among"), (None, "a dtype among"), ({"a": 1}, "nested deeper than 3 levels")],
)
def test_dtype_that_is_not_a_string_is_a_tensor_file_error(tmp_path: Path, dtype: Any, expected: str) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": _entry([0], dtype)})
    with pytest.raises(TensorFileError, match=rf"tensor 'w'.*expected .*{expected}"):
        load_tensor_file(path)


@pytest.mark.parametrize("offsets", [[0], [0, 1, 2], [1, 0], [-4, 0], [0.0, 4.0], [False, True], "0,4", None])
def test_malformed_data_offsets_are_a_tensor_file_error(tmp_path: Path, offsets: Any) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"w": _entry([1], "F32", offsets)}, b"\x00" * 4)
    with pytest.raises(TensorFileError, match=r"tensor 'w'.*data_offsets"):
        load_tensor_file(path)


def test_overlapping_tensors_are_a_tensor_file_error(tmp_path: Path) -> None:
    header = {"a": _entry([4], "U8", (0, 4)), "b": _entry([2], "U8", (2, 4))}
    path = _write_raw(tmp_path / "x.safetensors", header, b"\x00" * 4)
    with pytest.raises(TensorFileError, match=r"tensor 'b'.*overlapping another tensor"):
        load_tensor_file(path)


def test_empty_tensor_name_is_a_tensor_file_error(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "x.safetensors", {"": _entry([0])})
    with pytest.raises(TensorFileError, match="a non-empty tensor name"):
        load_tensor_file(path)


@pytest.mark.parametrize("raw", [b'{"\xff": {}}', b'{"w": {"dtype": "\xed\xa0\x80"}}', b"\x00" * 8])
def test_header_that_is_not_utf8_json_is_a_tensor_file_error(tmp_path: Path, raw: bytes) -> None:
    path = _write_raw(tmp_path / "x.safetensors", None, raw_header=raw)
    with pytest.raises(TensorFileError, match=r"x\.safetensors.*do not parse as JSON"):
        load_tensor_file(path)


def test_header_length_over_the_limit_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.safetensors"
    claimed = HEADER_LIMIT + 1
    with open(path, "wb") as f:  # a length prefix one byte over the limit, and a (sparse) file long enough to hold it
        f.write(struct.pack("<Q", claimed))
        f.truncate(8 + claimed)
    reads: list[int] = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset, *a: reads.append(offset) or real(fd, buffers, offset, *a))
    with pytest.raises(TensorFileError, match=rf"x\.safetensors: expected a header of at most {HEADER_LIMIT} bytes"):
        load_tensor_file(path)
    assert [offset for offset in reads if offset >= 8] == []  # not a byte of the header was read


def _nested_state(depth: int) -> dict[str, Any]:
    state: dict[str, Any] = {"w": torch.ones(1)}
    for _ in range(depth - 1):
        state = {"n": state}
    return state


def _write_tree(folder: Path, tree: Any) -> None:
    save_state_dict({"w": torch.ones(1)}, folder)
    doc = {"format": "shipslog.state-tree", "version": 1, "tree": tree}
    (folder / "model.tree.json").write_text(json.dumps(doc))


def test_tree_json_nested_deeply_is_refused(tmp_path: Path) -> None:
    save_state_dict({"w": torch.ones(1)}, tmp_path)
    tree = tmp_path / "model.tree.json"
    tree.write_bytes(b'{"format": "shipslog.state-tree", "version": 1, "tree": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(TensorFileError, match=r"model\.tree\.json: expected a JSON state tree nested at most \d+ levels deep"):
        load_state_dict(tmp_path)
    # Deeper than the limit but shallow enough for the JSON decoder: refused by the explicit bound.
    tree.write_bytes(b'{"format": "shipslog.state-tree", "version": 1, "tree": ' + b"[" * 400 + b"]" * 400 + b"}")
    with pytest.raises(TensorFileError, match=r"model\.tree\.json.*nests more than \d+ levels deep"):
        load_state_dict(tmp_path)


def test_state_nested_to_the_limit_round_trips_and_deeper_is_refused_on_save(tmp_path: Path) -> None:
    state = _nested_state(STATE_DEPTH_LIMIT)
    entries = save_state_dict(state, tmp_path / "ok")
    _assert_same(load_state_dict(tmp_path / "ok", entries=entries), state)
    with pytest.raises(StateDictError, match=f"nested at most {STATE_DEPTH_LIMIT} containers deep"):
        save_state_dict(_nested_state(STATE_DEPTH_LIMIT + 1), tmp_path / "deep")
    assert not (tmp_path / "deep").exists()


def test_state_that_contains_itself_is_refused_on_save(tmp_path: Path) -> None:
    state: dict[str, Any] = {"w": torch.ones(1)}
    state["self"] = state
    with pytest.raises(StateDictError, match="contains itself"):
        save_state_dict(state, tmp_path)


def test_tensor_of_more_than_64_dimensions_is_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(StateDictError, match="at most 64 dimensions"):
        save_state_dict({"w": torch.ones([1] * 65)}, tmp_path)


def test_tree_json_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    save_state_dict({"w": torch.ones(1), "step": 3}, tmp_path)
    tree = tmp_path / "model.tree.json"
    with open(tree, "r+b") as f:  # one byte over the limit (sparse): refused on its size, before it is read
        f.truncate(JSON_LIMIT + 1)
    with pytest.raises(TensorFileError, match=rf"model\.tree\.json: expected a JSON state tree of at most {JSON_LIMIT} bytes"):
        load_state_dict(tmp_path)
    big = {"w": torch.ones(1), "note": "x" * JSON_LIMIT}  # its tree.json holds the note: over the limit
    with pytest.raises(StateDictError, match=f"at most {JSON_LIMIT} bytes"):
        save_state_dict(big, tmp_path / "again")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("tree", "found"),
    [
        ({"D": 5}, "5 at tree"),
        ({"D": [["a", {"L": 3}]]}, "3 at tree['a']"),
        ({"D": [["a", {"N": "w"}]]}, "of dtype torch.bfloat16 at tree['a']"),
        ({"D": [["a", {"T": ["w"]}]]}, "a reference to ['w'] at tree['a']"),
        ({"D": [["a", {"L": [{"S": [1]}]}]]}, "[1] at tree['a'][0]"),
        ({"D": [[True, {"S": 1}]]}, "[True, {'S': 1}] at tree"),
    ],
)
def test_malformed_tree_node_is_a_tensor_file_error_naming_its_place(tmp_path: Path, tree: Any, found: str) -> None:
    save_state_dict({"w": torch.ones(1, dtype=torch.bfloat16)}, tmp_path)
    (tmp_path / "model.tree.json").write_text(json.dumps({"format": "shipslog.state-tree", "version": 1, "tree": tree}))
    with pytest.raises(TensorFileError, match=r"model\.tree\.json") as caught:
        load_state_dict(tmp_path)
    assert found in str(caught.value)


def test_tree_json_that_is_not_utf8_is_a_tensor_file_error(tmp_path: Path) -> None:
    save_state_dict({"w": torch.ones(1)}, tmp_path)
    (tmp_path / "model.tree.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(TensorFileError, match=r"model\.tree\.json.*do not parse as JSON"):
        load_state_dict(tmp_path)


def test_index_nested_deeply_is_a_tensor_file_error(tmp_path: Path) -> None:
    save_state_dict({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path, shard_bytes=16)
    (tmp_path / "model.safetensors.index.json").write_bytes(b'{"weight_map": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    with pytest.raises(TensorFileError, match=r"model\.safetensors\.index\.json.*nested"):
        load_state_dict(tmp_path)


# --------------------------------------------------------------------- pickle files


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_file_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    with pytest.raises(PickleRefusedError, match=r"model.pt.*allow_pickle was not given"):
        load_state_dict(tmp_path)


def test_pickle_file_loads_with_weights_only_when_allowed(tmp_path: Path) -> None:
    torch.manual_seed(6)
    state = {"w": torch.randn(3), "step": 4}
    torch.save(state, tmp_path / "model.pt")
    loaded = load_state_dict(tmp_path, allow_pickle=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 4


@pytest.mark.parametrize("allow", [False, True])
def test_code_running_pickle_is_refused_and_runs_nothing(tmp_path: Path, allow: bool) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"w": torch.ones(1), "payload": _Evil(str(marker))}, folder / "model.pt")
    with pytest.raises(PickleRefusedError, match=r"model\.pt"):
        load_state_dict(folder, allow_pickle=allow)
    assert not marker.exists()


def test_raw_pickle_with_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.bin").write_bytes(pickle.dumps({"x": _Evil(str(marker))}))
    with pytest.raises(PickleRefusedError, match="weights_only"):
        load_state_dict(folder, allow_pickle=True)
    assert not marker.exists()


@pytest.mark.cuda
def test_cuda_tensors_save_and_load_on_device(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(7)
    state = {"w": torch.randn(64, 64, device="cuda").bfloat16(), "opt": {"step": torch.tensor(3, device="cuda")}}
    entries = save_state_dict(state, tmp_path)
    loaded = load_state_dict(tmp_path, entries=entries, device="cuda")
    assert loaded["w"].device.type == "cuda"
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["opt"]["step"], state["opt"]["step"])
