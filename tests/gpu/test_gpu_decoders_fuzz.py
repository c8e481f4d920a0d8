"""Fuzzing the gpu decoders with hostile bytes: each returns a valid value or raises its format's error.

Every byte read from disk is untrusted.  For each decoder (safetensors
headers, the state tree ``P.tree.json``, adapter configs and their
``target_modules`` regexes) these tests feed random bytes, random JSON and
near-valid documents with mutated fields, and check the one property that
matters: the decoder returns a value that passes its own guarantees, or raises
the format's :class:`shipslog.gpu.GpuError` subclass; never ``TypeError``,
``RecursionError``, ``re.error`` or any other exception.  Hypothesis runs
derandomized (tests/conftest.py), so the examples are the same on every run.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings
from hypothesis import strategies as st

from shipslog.gpu import (
    DTYPES,
    AdapterError,
    LoraConfig,
    TensorFileError,
    load_state_dict,
    load_tensor_file,
    parse_adapter_config,
    save_state_dict,
)

# --------------------------------------------------------------------- strategies

_INTS = st.one_of(
    st.integers(min_value=-4, max_value=64),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**40]),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=16,
)
_NESTING = st.integers(min_value=1, max_value=3000)


def _deep(depth: int, opener: str = "[") -> str:
    closer = "]" if opener == "[" else "}"
    inner = '"k": ' if opener == "{" else ""
    return (opener + inner) * depth + "0" + closer * depth


def _safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _check_tensor_file(path: Path) -> None:
    """The property: a valid, self-consistent result, or TensorFileError."""
    try:
        tensors = load_tensor_file(path)
    except TensorFileError as exc:
        assert str(path) in str(exc)
        return
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    for name, tensor in tensors.items():
        assert isinstance(name, str) and name and name != "__metadata__"
        info = header[name]
        assert DTYPES[info["dtype"]] == tensor.dtype and list(tensor.shape) == info["shape"]
        begin, end = info["data_offsets"]
        assert tensor.numel() * tensor.element_size() == end - begin


# --------------------------------------------------------------------- safetensors headers


@settings(max_examples=250)
@given(raw=st.binary(max_size=200))
def test_random_header_bytes_are_valid_or_a_tensor_file_error(tmp_path: Path, raw: bytes) -> None:
    _check_tensor_file(_safetensors(tmp_path / "x.safetensors", raw))


@settings(max_examples=250)
@given(value=_JSON, data=st.binary(max_size=32))
def test_random_json_headers_are_valid_or_a_tensor_file_error(tmp_path: Path, value: Any, data: bytes) -> None:
    _check_tensor_file(_safetensors(tmp_path / "x.safetensors", json.dumps(value).encode(), data))


@settings(max_examples=60)
@given(depth=_NESTING, where=st.sampled_from(["root", "entry", "shape", "metadata"]))
def test_deeply_nested_headers_are_a_tensor_file_error(tmp_path: Path, depth: int, where: str) -> None:
    nested = _deep(depth, "[" if depth % 2 else "{")
    header = {
        "root": nested,
        "entry": '{"w": ' + nested + "}",
        "shape": '{"w": {"dtype": "F32", "shape": [' + nested + '], "data_offsets": [0, 0]}}',
        "metadata": '{"__metadata__": {"a": ' + nested + "}}",
    }[where]
    path = _safetensors(tmp_path / "x.safetensors", header.encode())
    with pytest.raises(TensorFileError, match=re.escape(str(path))):
        load_tensor_file(path)


_DTYPE_CODES = st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(["F4", "", "f32", "F8_E8M0"]), _SCALARS)
_DIMS = st.one_of(st.integers(min_value=0, max_value=4), _INTS, _SCALARS)
_EDGE_DIMS = st.sampled_from([0, 1, 2, -1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30])
_SHAPES = st.one_of(
    st.lists(_DIMS, max_size=70),
    st.lists(_EDGE_DIMS, max_size=4).map(lambda dims: [0, *dims]),
    st.lists(st.just(0), min_size=60, max_size=70),
    _JSON,
)


@st.composite
def _near_valid_headers(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid header of 1-3 tensors, then some of its fields replaced by hostile values."""
    count = draw(st.integers(min_value=1, max_value=3))
    header: dict[str, Any] = {}
    pos = 0
    for i in range(count):
        code = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(min_value=0, max_value=3), max_size=3))
        size = math.prod(shape) * torch.empty((), dtype=DTYPES[code]).element_size()
        header[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + size]}
        pos += size
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        header["__metadata__"] = draw(st.one_of(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), _JSON))
    if draw(st.booleans()):
        # An empty tensor (no bytes, so the data section still fits) with a hostile shape.
        shape = draw(st.one_of(st.lists(_EDGE_DIMS, max_size=4).map(lambda dims: [0, *dims]), _SHAPES))
        header["z"] = {"dtype": draw(st.sampled_from(sorted(DTYPES))), "shape": shape, "data_offsets": [0, 0]}
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        name = draw(st.sampled_from(sorted(header)))
        entry = header[name]
        if not isinstance(entry, dict):
            continue
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "extra", "name", "replace"]))
        if field == "dtype":
            entry["dtype"] = draw(_DTYPE_CODES)
        elif field == "shape":
            entry["shape"] = draw(_SHAPES)
        elif field == "data_offsets":
            entry["data_offsets"] = draw(st.one_of(st.lists(_DIMS, max_size=3), _JSON))
        elif field == "drop" and entry:
            del entry[draw(st.sampled_from(sorted(entry)))]
        elif field == "extra":
            entry[draw(st.text(max_size=6))] = draw(_JSON)
        elif field == "name":
            header[draw(st.sampled_from(["", "__metadata__", "t0", "\x00", "a.b"]))] = header.pop(name)
        else:
            header[name] = draw(_JSON)
    data_len = max(0, pos + draw(st.one_of(st.just(0), st.integers(min_value=-4, max_value=4))))
    return json.dumps(header).encode(), draw(st.binary(min_size=data_len, max_size=data_len))


@settings(max_examples=300)
@given(case=_near_valid_headers())
def test_mutated_headers_are_valid_or_a_tensor_file_error(tmp_path: Path, case: tuple[bytes, bytes]) -> None:
    header, data = case
    _check_tensor_file(_safetensors(tmp_path / "x.safetensors", header, data))


# --------------------------------------------------------------------- tree.json


_VALID_LEAVES = st.one_of(
    st.fixed_dictionaries({"S": _SCALARS}),
    st.fixed_dictionaries({"T": st.sampled_from(["w", "b"])}),
    st.fixed_dictionaries({"N": st.just("b")}),
    st.fixed_dictionaries({"F": st.sampled_from(["nan", "inf", "-inf"])}),
)
_VALID_KEYS = st.one_of(st.text(max_size=6), st.integers(min_value=-(2**63), max_value=2**63))


def _tree_nodes(keys: st.SearchStrategy[Any], children: st.SearchStrategy[Any]) -> list[st.SearchStrategy[Any]]:
    """The container nodes of a tree.json: dicts and ordered dicts of (key, child) pairs, lists and tuples."""
    pairs = st.lists(st.tuples(keys, children).map(list), max_size=3)
    items = st.lists(children, max_size=3)
    return [st.fixed_dictionaries({"D": pairs}), st.fixed_dictionaries({"O": pairs}),
            st.fixed_dictionaries({"L": items}), st.fixed_dictionaries({"U": items})]


_VALID_TREES = st.recursive(_VALID_LEAVES, lambda children: st.one_of(*_tree_nodes(_VALID_KEYS, children)), max_leaves=12)
_TREE_LEAVES = st.one_of(
    st.fixed_dictionaries({"S": _SCALARS}),
    st.fixed_dictionaries({"T": st.sampled_from(["w", "b", "missing", ""])}),
    st.fixed_dictionaries({"N": st.sampled_from(["w", "b", "missing"])}),
    st.fixed_dictionaries({"F": st.sampled_from(["nan", "inf", "-inf", "1.0", ""])}),
    _JSON,
)
_KEYS = st.one_of(st.text(max_size=6), st.integers(min_value=-3, max_value=3), st.booleans(), st.none())
_TREES = st.recursive(
    _TREE_LEAVES,
    lambda children: st.one_of(
        *_tree_nodes(_KEYS, children),
        st.dictionaries(st.sampled_from(["D", "L", "S", "Q"]), children, max_size=2),
    ),
    max_leaves=12,
)


def _tree_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    if not folder.exists():
        save_state_dict({"w": torch.ones(2, dtype=torch.bfloat16), "b": torch.arange(3)}, folder)
    return folder


def _check_state(folder: Path) -> None:
    try:
        state = load_state_dict(folder)
    except TensorFileError as exc:
        assert "model.tree.json" in str(exc)
        return
    assert isinstance(state, dict)


@settings(max_examples=250)
@given(tree=_TREES, version=st.one_of(st.just(1), _SCALARS))
def test_random_trees_are_valid_or_a_tensor_file_error(tmp_path: Path, tree: Any, version: Any) -> None:
    folder = _tree_folder(tmp_path)
    doc = {"format": "shipslog.state-tree", "version": version, "tree": tree}
    (folder / "model.tree.json").write_text(json.dumps(doc))
    _check_state(folder)


@settings(max_examples=150)
@given(items=st.lists(st.tuples(_VALID_KEYS, _VALID_TREES).map(list), max_size=4), ordered=st.booleans())
def test_valid_trees_load_as_the_structure_they_describe(tmp_path: Path, items: list[Any], ordered: bool) -> None:
    folder = _tree_folder(tmp_path)
    doc = {"format": "shipslog.state-tree", "version": 1, "tree": {"O" if ordered else "D": items}}
    (folder / "model.tree.json").write_text(json.dumps(doc))
    state = load_state_dict(folder)
    assert isinstance(state, dict) and list(state) == list(dict(items))


@settings(max_examples=150)
@given(raw=st.one_of(st.binary(max_size=120), _JSON.map(lambda v: json.dumps(v).encode())))
def test_random_tree_bytes_are_valid_or_a_tensor_file_error(tmp_path: Path, raw: bytes) -> None:
    folder = _tree_folder(tmp_path)
    (folder / "model.tree.json").write_bytes(raw)
    _check_state(folder)


@settings(max_examples=60)
@given(depth=_NESTING, kind=st.sampled_from(["json", "tree"]))
def test_deeply_nested_trees_are_refused(tmp_path: Path, depth: int, kind: str) -> None:
    folder = _tree_folder(tmp_path)
    if kind == "json":
        tree = _deep(depth, "[" if depth % 2 else "{")
    else:
        tree = '{"L": [' * depth + '{"T": "w"}' + "]}" * depth
    (folder / "model.tree.json").write_text('{"format": "shipslog.state-tree", "version": 1, "tree": ' + tree + "}")
    _check_state(folder)


# --------------------------------------------------------------------- adapter configs


_FIELDS = ["peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "use_dora"]
_REGEX_ALPHABET = "ab_.*+?|()[]{}^$\\-,0123456789:=!<>P#idswDSWbBAZNxu"
_REGEX_PARTS = [
    "a", "q_proj", ".", r"\.", ".*", ".+", r"\d+", r"\w", "[a-z]", "[^.]", "(", ")", "(?:", "(?P<g>", "|", "*", "+", "?",
    "{2}", "{1,3}", "{2,}", "{,4}", "^", "$", r"\1", "(?=", "(?!", "(?<=", "(?i)", "(?#c)", "[", "]", "\\", "{", "}",
]
_PATTERNS = st.one_of(
    st.text(alphabet=_REGEX_ALPHABET, max_size=40),
    st.lists(st.sampled_from(_REGEX_PARTS), max_size=14).map("".join),
    st.text(max_size=20),
)
_MODULES = st.one_of(
    st.sampled_from(["q_proj", "model.layers.0.self_attn.q_proj", "a.b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", ""]),
    st.text(alphabet="ab._q0123456789", max_size=40),
)


def _check_config(config: Any, modules: list[str]) -> None:
    """The property: a LoraConfig honouring its guarantees, or AdapterError."""
    try:
        parsed = parse_adapter_config(config)
    except AdapterError:
        return
    assert isinstance(parsed, LoraConfig)
    assert parsed.r > 0 and math.isfinite(parsed.lora_alpha) and parsed.target_modules
    for module in modules:
        hit = parsed.targets(module)
        if isinstance(parsed.target_modules, str):
            assert hit == (re.fullmatch(parsed.target_modules, module) is not None)
        assert math.isfinite(parsed.scale_for(module)) and parsed.rank_for(module) > 0


@settings(max_examples=300)
@given(
    config=st.dictionaries(st.one_of(st.sampled_from(_FIELDS), st.text(max_size=6)), _JSON, max_size=8),
    base=st.booleans(),
    modules=st.lists(_MODULES, max_size=3),
)
def test_random_adapter_configs_are_valid_or_an_adapter_error(config: dict[str, Any], base: bool, modules: list[str]) -> None:
    if base:
        config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}
    _check_config(config, modules)


@settings(max_examples=300)
@given(pattern=_PATTERNS, modules=st.lists(_MODULES, max_size=3))
def test_random_target_modules_regexes_are_valid_or_an_adapter_error(pattern: str, modules: list[str]) -> None:
    _check_config({"r": 4, "lora_alpha": 8, "target_modules": pattern}, modules)


@settings(max_examples=200)
@given(
    raw=st.one_of(
        st.binary(max_size=120),
        _JSON.map(lambda v: json.dumps(v).encode()),
        _NESTING.map(lambda d: ('{"r": 4, "lora_alpha": 8, "target_modules": ' + _deep(d) + "}").encode()),
    )
)
def test_random_adapter_config_files_are_valid_or_an_adapter_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_bytes(raw)
    try:
        parse_adapter_config(path)
    except AdapterError as exc:
        assert str(path) in str(exc)
