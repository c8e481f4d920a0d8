"""Fuzzing two decoders of untrusted input: WorkerSpec.from_dict (plain data from a config file) and
validate_data_file (the bytes of a JSONL data file).

Properties: from_dict returns a valid WorkerSpec or raises WorkerConfigError, never anything else, and a
spec it returns can reach ``subprocess.Popen`` (no NUL, every string encodable, env names without '=');
validate_data_file returns a summary or raises DataFileError, never anything else, and on near-valid
files it names exactly the first bad line.  Hypothesis runs derandomized (tests/conftest.py).
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from shipslog.engine import (
    DataFileError,
    DataFileSummary,
    WorkerConfigError,
    WorkerSpec,
    validate_data_file,
)

FUZZ = settings(max_examples=200)

# -- worker specs -------------------------------------------------------------------------------------------

ODD_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=12),  # surrogates and control characters too
    st.sampled_from(["", "\x00", "a\x00b", "=", "A=B", "\ud800", "\udcff", "m:f\n", "é" * 40_000, "x" * 70_000, "..", "/"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80), st.floats(), ODD_TEXT)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(ODD_TEXT, children, max_size=4)),
    max_leaves=20,
)
FIELDS = [f.name for f in msgspec.structs.fields(WorkerSpec)]
KEYS = st.one_of(st.sampled_from(FIELDS), ODD_TEXT)


def _nest(depth: int, leaf: Any, as_dict: bool) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


DEEP = st.builds(_nest, st.integers(min_value=1, max_value=50_000), SCALARS, st.booleans())
VALUES = st.one_of(JSON_LIKE, DEEP)


def _check_spec_or_error(data: Any) -> None:
    """The property: a valid spec whose strings can reach a process, or WorkerConfigError; nothing else."""
    try:
        spec = WorkerSpec.from_dict(data)
    except WorkerConfigError as exc:
        assert str(exc) and len(str(exc)) < 2000
        return
    assert isinstance(spec, WorkerSpec)
    strings = [*spec.command(), *spec.env, *spec.env.values(), *([spec.cwd] if spec.cwd is not None else [])]
    for text in strings:
        assert "\x00" not in text
        os.fsencode(text)
    assert spec.command()[0]
    assert all(key and "=" not in key for key in spec.env)


@FUZZ
@given(st.one_of(JSON_LIKE, DEEP, st.dictionaries(KEYS, VALUES, max_size=8)))
def test_from_dict_over_arbitrary_plain_data(data: Any) -> None:
    _check_spec_or_error(data)


VALID_SPECS = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(["w", "loader", "a-1"]), "argv": st.just(["sleep", "1"])}),
    st.fixed_dictionaries(
        {"name": st.just("t"), "target": st.just("pkg.mod:main"), "args": st.just(["1"])},
        optional={"env": st.just({"A": "1"}), "cwd": st.just("/tmp"), "restart": st.just("always")},
    ),
)
FIELD_VALUES = st.one_of(
    ODD_TEXT,
    st.lists(ODD_TEXT, max_size=4),
    st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=3),
    st.lists(st.lists(ODD_TEXT, max_size=2), max_size=2),
    SCALARS,
    DEEP,
)


@FUZZ
@given(VALID_SPECS, st.lists(st.tuples(KEYS, FIELD_VALUES), min_size=1, max_size=3))
def test_from_dict_over_near_valid_specs(base: dict[str, Any], mutations: list[tuple[str, Any]]) -> None:
    data = {**base, **dict(mutations)}
    _check_spec_or_error(data)


@FUZZ
@given(VALID_SPECS, st.sampled_from(["argv", "args", "env-name", "env-value", "cwd"]), ODD_TEXT, st.integers(min_value=0, max_value=3))
def test_from_dict_over_valid_specs_with_one_odd_string(base: dict[str, Any], where: str, text: str, index: int) -> None:
    data = dict(base)
    if where in ("argv", "args"):
        items = list(data.get("argv", ["sleep", "1"]) if where == "argv" else data.get("args", ["1"]))
        items.insert(min(index, len(items)), text)
        data[where] = items
    elif where == "env-name":
        data["env"] = {text: "1"}
    elif where == "env-value":
        data["env"] = {"X": text}
    else:
        data["cwd"] = text
    _check_spec_or_error(data)


# -- data files ---------------------------------------------------------------------------------------------


def _summary_or_error(path: str, data: bytes, fields: list[str]) -> DataFileSummary | DataFileError:
    """The property: a summary that matches the bytes, or DataFileError; nothing else."""
    with open(path, "wb") as f:
        f.write(data)
    try:
        summary = validate_data_file(path, fields)
    except DataFileError as exc:
        assert exc.path == path and len(str(exc)) < 10_000
        return exc
    assert summary.size == len(data) and summary.crc32 == zlib.crc32(data)
    pieces = data.split(b"\n")
    assert summary.lines == max(i for i, piece in enumerate(pieces, start=1) if piece.strip())  # trailing blank lines are no records
    return summary


@FUZZ
@given(st.binary(max_size=600), st.lists(st.sampled_from(["text", "label", ""]), max_size=2))
def test_validate_data_file_over_arbitrary_bytes(tmp_path: Any, data: bytes, fields: list[str]) -> None:
    _summary_or_error(os.path.join(tmp_path, "fuzz.jsonl"), data, fields)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=12,
)
GOOD_LINES = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4).map(lambda obj: msgspec.json.encode({"text": "x", **obj}))


def _broken(line: bytes, how: str, at: int) -> bytes:
    """``line`` made certainly invalid in the way ``how`` names (at a position derived from ``at``)."""
    cut = at % (len(line) + 1)
    if how == "nul":
        return line[:cut] + b"\x00" + line[cut:]
    if how == "bad-utf8":
        return line[:cut] + b"\xff" + line[cut:]
    if how == "truncated":
        return line[:-1]
    if how == "not-object":
        return msgspec.json.encode([line.decode()]) if at % 2 else b"42"
    if how == "deep":
        return b'{"text": ' + b"[" * (65 + at % 1000) + b"]" * (65 + at % 1000) + b"}"
    return b" \t"  # blank


@FUZZ
@given(
    st.lists(
        st.tuples(GOOD_LINES, st.sampled_from([None, None, None, "nul", "bad-utf8", "truncated", "not-object", "deep", "blank"]), st.integers(0, 10_000)),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_validate_data_file_over_near_valid_lines(tmp_path: Any, lines: list[tuple[bytes, str | None, int]], final_newline: bool) -> None:
    encoded = [line if how is None else _broken(line, how, at) for line, how, at in lines]
    data = b"\n".join(encoded) + (b"\n" if final_newline else b"")
    outcome = _summary_or_error(os.path.join(tmp_path, "near.jsonl"), data, ["text"])
    last = max((i for i, (_line, how, _at) in enumerate(lines, start=1) if how != "blank"), default=0)
    bad = [i for i, (_line, how, _at) in enumerate(lines, start=1) if how is not None and not (how == "blank" and i > last)]
    if bad:
        assert isinstance(outcome, DataFileError) and outcome.line == bad[0] and f"line {bad[0]}" in str(outcome)
    elif last == 0:
        assert isinstance(outcome, DataFileError) and "empty" in str(outcome)  # blank lines only: no record
    else:
        assert isinstance(outcome, DataFileSummary) and outcome.lines == last  # blank lines may end the file
