"""Tensor files in the safetensors format, written directly and checksummed in the same pass.

Format of one file (the safetensors format, readable by ``safetensors.torch.load_file``)::

    u64 little-endian N | N bytes of JSON header (padded with spaces so 8 + N is a multiple of 8) | data

The header maps ``"__metadata__"`` to a ``{str: str}`` dict and every tensor
name to ``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}``
(offsets relative to the start of the data section).  The data section holds
each tensor's raw little-endian bytes, back to back with no gaps, ordered by
element size (largest first) so that every tensor starts at an offset aligned
to its element size; the header keeps the caller's order of names.

What :func:`save_state_dict` writes into ``folder`` (``P`` is ``prefix``):

* ``P.safetensors`` when every tensor fits one shard of ``shard_bytes``;
  otherwise ``P-00001-of-0000N.safetensors`` ... plus ``P.safetensors.index.json``
  (the Hugging Face layout: ``{"metadata": {"total_size": ...},
  "weight_map": {tensor name: shard file}}``);
* ``P.tree.json`` only when the state is not a flat ``{str: Tensor}`` dict: it
  records the whole nested structure (dicts and OrderedDicts with str or int
  keys, lists, tuples, None/bool/int/float/str leaves, numpy arrays), with each tensor
  replaced by a reference to its flat name, so that :func:`load_state_dict`
  returns the same structure.  A flat model state dict therefore gives a
  folder any safetensors tool can read (it loads back as a plain dict in the
  saved order, even when it was an OrderedDict).

Flat tensor names join the keys of the path with ``"."`` (list and tuple items
by their index); two paths that give the same name are refused before
anything is written.  Every file written is returned as a
:class:`shipslog.engine.FileEntry` whose size and CRC-32 were computed from
the bytes as they were written (a second thread checksums each block while the
writing thread writes it), ready for a manifest.

Only little-endian hosts are supported (the format is little-endian and the
bytes are written straight from the tensors' memory).

Every byte read back is untrusted, and every decoder here is bounded: a
header is at most ``_MAX_HEADER_BYTES`` (checked on its length prefix before
it is read) and nests at most 3 levels (the decode schema admits nothing
deeper); a shape has at most ``_MAX_RANK`` dimensions, each below ``2**63``;
byte counts are computed with Python ints; a ``tree.json`` or shard index is
at most ``_MAX_JSON_BYTES`` and nests at most ``_MAX_TREE_JSON_DEPTH`` /
``_MAX_INDEX_JSON_DEPTH`` levels (checked iteratively).  A file that breaks
any rule raises :class:`TensorFileError` naming the file (and the tensor or
place in the tree), never ``RecursionError``, ``TypeError`` or a msgspec
error.  The writer refuses (:class:`StateDictError`, before any file is
written) a state that would break them: more than ``_MAX_RANK`` dimensions,
containers nested more than ``_MAX_STATE_DEPTH`` deep, or a header or JSON
file over its size limit.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pickle
import queue
import reprlib
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import torch

from shipslog.engine import FileEntry, IntegrityError, crc32_file, decode_json_within
from shipslog.journal import OS_FS, FileSystem, crc32, open_regular

from ._errors import PickleRefusedError, StateDictError, TensorFileError, TensorFileNotFoundError

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "DTYPES",
    "INDEX_SUFFIX",
    "SAFETENSORS_SUFFIX",
    "TREE_SUFFIX",
    "load_state_dict",
    "load_tensor_file",
    "save_state_dict",
    "save_tensor_file",
    "shard_file_name",
    "tensor_file_metadata",
]

_log = logging.getLogger("shipslog.gpu.tensorfile")

DEFAULT_SHARD_BYTES = 2 << 30
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
TREE_SUFFIX = ".tree.json"
TREE_FORMAT = "shipslog.state-tree"
TREE_VERSION = 1
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
_BLOCK = 16 << 20
_METADATA_KEY = "__metadata__"

# Bounds on what is read back from disk (every byte read is untrusted).  The
# writer refuses, before writing anything, a state that would exceed them, so
# everything this module saves loads back.
_MAX_HEADER_BYTES = 100 << 20
"""The largest safetensors JSON header accepted (checked on the length prefix, before the header is read)."""
_MAX_HEADER_DEPTH = 3
"""JSON nesting of a valid header: the root object, a tensor's object, its shape or data_offsets list."""
_MAX_RANK = 64
"""The most dimensions a tensor in a tensor file may have."""
_DIM_LIMIT = 1 << 63
"""Every dimension, and the product of the non-zero dimensions (torch's strides), is below this."""
_MAX_JSON_BYTES = 64 << 20
"""The largest ``P.tree.json`` or ``P.safetensors.index.json`` accepted (checked on the file size, before reading)."""
_MAX_STATE_DEPTH = 64
"""The deepest nesting of containers (dicts, lists, tuples) a saved state may have; the root dict counts as 1."""
_MAX_TREE_JSON_DEPTH = 2 + 3 * _MAX_STATE_DEPTH
"""The JSON nesting of the tree.json of a state nested ``_MAX_STATE_DEPTH`` deep: the document, the root node, then
per container its item list, an item's [key, node] pair and the item's node object."""
_MAX_INDEX_JSON_DEPTH = 16
"""The JSON nesting accepted in a shard index (its own structure nests 3 levels)."""


def _dtype_table() -> dict[str, torch.dtype]:
    names = {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U64": "uint64",
        "U32": "uint32",
        "U16": "uint16",
        "U8": "uint8",
        "BOOL": "bool",
        "C64": "complex64",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
    }
    table: dict[str, torch.dtype] = {}
    for code, attr in names.items():
        dtype = getattr(torch, attr, None)
        if isinstance(dtype, torch.dtype):
            table[code] = dtype
    return table


DTYPES: dict[str, torch.dtype] = _dtype_table()
"""safetensors dtype code -> torch dtype, for every dtype these files may hold."""

_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}
_ITEMSIZE: dict[str, int] = {code: torch.empty((), dtype=dtype).element_size() for code, dtype in DTYPES.items()}
_NO_NUMPY: frozenset[Any] = frozenset(getattr(torch, n, None) for n in ("bfloat16", "float8_e4m3fn", "float8_e5m2"))
"""Dtypes numpy cannot hold: a tree's ``N`` (numpy array) reference may not name a tensor of one of them."""

_HeaderScalar = str | int | float | bool | None
_HeaderValue = str | int | float | bool | None | list[_HeaderScalar]
_HEADER_DECODER = msgspec.json.Decoder(dict[str, dict[str, _HeaderValue] | None])
"""Decodes a safetensors header with its nesting bounded by the schema: an object of objects whose values are
scalars or flat lists of scalars (or null, which only ``__metadata__`` may be).  msgspec refuses a deeper value where it meets it, without descending into it,
so no header nests more than ``_MAX_HEADER_DEPTH`` levels and none can exhaust the stack."""
_ENTRY_DECODER = msgspec.json.Decoder(dict[str, _HeaderValue] | None)
_RAW_ENTRIES_DECODER = msgspec.json.Decoder(dict[str, msgspec.Raw])

_json_encoder = msgspec.json.Encoder()


def shard_file_name(prefix: str, index: int, count: int) -> str:
    """The file name of shard ``index`` (1-based) of ``count``: ``P-00001-of-00003.safetensors``.

    A single shard is named ``P.safetensors``.
    """
    if count == 1:
        return f"{prefix}{SAFETENSORS_SUFFIX}"
    return f"{prefix}-{index:05d}-of-{count:05d}{SAFETENSORS_SUFFIX}"


def _check_host() -> None:
    if sys.byteorder != "little":
        raise TensorFileError(
            "<host>", "a little-endian host", f"a {sys.byteorder}-endian host",
            hint="safetensors bytes are little-endian and are written straight from memory; use a little-endian host",
        )


def _check_prefix(prefix: str) -> None:
    if not prefix or "/" in prefix or "\\" in prefix or prefix.startswith(".") or "\x00" in prefix:
        raise StateDictError(
            "<prefix>", "a plain file name prefix (no separators, not starting with '.')", repr(prefix),
            hint="pass a prefix such as 'model' or 'optimizer'",
        )


class _ShortRepr(reprlib.Repr):
    """``reprlib.Repr`` that shows a huge int by its size (its digits could exceed Python's int-to-str limit)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = limit
        self.maxother = limit
        self.maxlong = 80

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


def _show(value: object, limit: int = 200) -> str:
    """A repr of ``value`` for an error message: at most ``limit`` characters, never raising.

    Containers are shown only to a few levels and items (``reprlib``), so a
    value nested arbitrarily deep or holding a huge int cannot make building
    the message fail or run long.
    """
    text = _ShortRepr(limit).repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- flattening


class _Flattened:
    """A state split into its tensors (by flat name, in order) and the tree that rebuilds it."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.numpy_names: set[str] = set()
        self.flat = True


def _key_part(key: object, path: str) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise StateDictError(
            f"{path}[{key!r}]" if path else repr(key), "dict keys that are str or int", f"a key of type {type(key).__name__}",
            hint="use str or int keys",
        )
    return str(key)


def _add_tensor(flat: _Flattened, name: str, tensor: torch.Tensor) -> None:
    if name in ("", _METADATA_KEY):
        raise StateDictError(name, "a tensor name that is not empty and not '__metadata__'", repr(name))
    if name in flat.tensors:
        raise StateDictError(
            name, "each tensor to flatten to a distinct name",
            "two entries whose keys joined with '.' give the same name",
            hint="rename one of the keys (a key containing '.' collides with a nested dict of the same path)",
        )
    if tensor.layout != torch.strided:
        raise StateDictError(name, "a dense (strided) tensor", f"a tensor with layout {tensor.layout}", hint="convert it with .to_dense() before saving")
    if tensor.dtype not in _CODES:
        raise StateDictError(
            name, f"a tensor of one of the dtypes {', '.join(str(d) for d in _CODES)}", f"dtype {tensor.dtype}",
            hint="convert the tensor to a supported dtype before saving",
        )
    if tensor.device.type == "meta":
        raise StateDictError(name, "a tensor with data", "a tensor on the meta device", hint="materialize the tensor before saving")
    if tensor.dim() > _MAX_RANK:
        raise StateDictError(name, f"a tensor of at most {_MAX_RANK} dimensions", f"{tensor.dim()} dimensions", hint="reshape it before saving")
    flat.tensors[name] = tensor


def _encode(value: Any, parts: list[str], flat: _Flattened, depth: int = 1) -> Any:
    """The tree node of ``value`` (``depth``: containers on its path, itself included when it is one).

    Raises :class:`StateDictError` for a value that cannot be saved, and for
    containers nested more than ``_MAX_STATE_DEPTH`` deep (which a reader
    would refuse; this also stops a state that contains itself).
    """
    name = ".".join(parts)
    if isinstance(value, (Mapping, list, tuple)) and depth > _MAX_STATE_DEPTH:
        raise StateDictError(
            name or "<root>", f"a state nested at most {_MAX_STATE_DEPTH} containers deep",
            "a deeper nesting (or a container that contains itself)", hint="flatten the state before saving",
        )
    if isinstance(value, torch.Tensor):
        _add_tensor(flat, name, value)
        return {"T": name}
    if isinstance(value, np.ndarray):
        if value.dtype.byteorder == ">" or value.dtype.kind not in "biufc":
            raise StateDictError(name, "a numeric numpy array in native byte order", f"a numpy array of dtype {value.dtype}")
        _add_tensor(flat, name, torch.from_numpy(np.ascontiguousarray(value)))
        flat.numpy_names.add(name)
        return {"N": name}
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            part = _key_part(key, name)
            items.append([key, _encode(item, [*parts, part], flat, depth + 1)])
        return {"O": items} if isinstance(value, OrderedDict) else {"D": items}
    if isinstance(value, (list, tuple)):
        nodes = [_encode(item, [*parts, str(i)], flat, depth + 1) for i, item in enumerate(value)]
        return {"U": nodes} if isinstance(value, tuple) else {"L": nodes}
    if value is None or isinstance(value, (bool, str)):
        return {"S": value}
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise StateDictError(name, "an int that fits 64 bits", f"{value}", hint="store it as a string or a tensor")
        return {"S": value}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"S": value}
        return {"F": repr(value)}
    raise StateDictError(
        name or "<root>",
        "a tensor, numpy array, dict, list, tuple, None, bool, int, float or str",
        f"a value of type {type(value).__module__}.{type(value).__qualname__}",
    )


def _flatten(state: Mapping[str, Any]) -> tuple[_Flattened, Any]:
    if not isinstance(state, Mapping):
        raise StateDictError("<root>", "a mapping (a state dict)", f"a value of type {type(state).__name__}")
    flat = _Flattened()
    tree = _encode(state, [], flat)
    flat.flat = not flat.numpy_names and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    )
    return flat, tree


def _decode(node: Any, tensors: Mapping[str, torch.Tensor], path: str, where: str = "tree") -> Any:
    """Rebuild the value of tree node ``node`` (from ``path``, at ``where`` in its tree).

    Guarantee: returns the value, or raises :class:`TensorFileError` naming
    the file, the place in the tree, what was expected and what was found.
    The caller bounds the nesting first (``_MAX_TREE_JSON_DEPTH``), so the
    recursion here is bounded too.
    """
    if not isinstance(node, dict) or len(node) != 1:
        raise TensorFileError(path, "a tree node (an object with one key)", f"{_show(node)} at {where}")
    ((kind, body),) = node.items()
    if kind in {"T", "N"}:
        if not isinstance(body, str) or body not in tensors:
            raise TensorFileError(path, "a reference to a tensor the tensor files hold", f"a reference to {_show(body)} at {where}")
        tensor = tensors[body]
        if kind == "N":
            if tensor.dtype in _NO_NUMPY:
                raise TensorFileError(path, "a numpy array reference to a tensor of a dtype numpy holds", f"a reference to {body!r} of dtype {tensor.dtype} at {where}")
            return tensor.cpu().numpy()
        return tensor
    if kind in {"D", "O"}:
        if not isinstance(body, list):
            raise TensorFileError(path, "a list of [key, node] pairs", f"{_show(body)} at {where}")
        out: dict[Any, Any] = OrderedDict() if kind == "O" else {}
        for pair in body:
            if not isinstance(pair, list) or len(pair) != 2 or isinstance(pair[0], bool) or not isinstance(pair[0], (str, int)):
                raise TensorFileError(path, "a [key, node] pair with a str or int key", f"{_show(pair)} at {where}")
            out[pair[0]] = _decode(pair[1], tensors, path, f"{where}[{_show(pair[0], 80)}]")
        return out
    if kind in {"L", "U"}:
        if not isinstance(body, list):
            raise TensorFileError(path, "a list of tree nodes", f"{_show(body)} at {where}")
        items = [_decode(item, tensors, path, f"{where}[{i}]") for i, item in enumerate(body)]
        return tuple(items) if kind == "U" else items
    if kind == "S":
        if body is not None and not isinstance(body, (bool, int, float, str)):
            raise TensorFileError(path, "a JSON scalar", f"{_show(body)} at {where}")
        return body
    if kind == "F":
        if body not in ("nan", "inf", "-inf"):
            raise TensorFileError(path, "'nan', 'inf' or '-inf'", f"{_show(body)} at {where}")
        return float(body)
    raise TensorFileError(path, "a tree node of kind T, N, D, O, L, U, S or F", f"kind {_show(kind)} at {where}")


# --------------------------------------------------------------------------- writing


class _CrcPipe:
    """Computes the CRC-32 (:func:`shipslog.journal.crc32`) of the blocks fed to it, in order, on a second thread.

    The checksum and os.write both release the GIL, so checksumming overlaps the
    writing.  The queue is bounded, so at most a few blocks are held.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=8)
        self._crc = 0
        self._thread = threading.Thread(target=self._run, name="shipslog-crc32", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        crc = 0
        while True:
            block = self._queue.get()
            if block is None:
                break
            crc = crc32(block, crc)
        self._crc = crc

    def feed(self, block: memoryview) -> None:
        self._queue.put(block)

    def finish(self) -> int:
        self._queue.put(None)
        self._thread.join()
        return self._crc


def _byte_view(tensor: torch.Tensor) -> memoryview:
    """The bytes of ``tensor`` as stored in safetensors: CPU, contiguous, little-endian."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return t.view(torch.uint8).numpy().data.cast("B")


def _header_bytes(names: Sequence[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """The padded header (with its u64 length prefix) and the order of the data section.

    Raises :class:`StateDictError` when the header would exceed
    ``_MAX_HEADER_BYTES`` (a reader refuses such a file).
    """
    order = sorted(names, key=lambda n: -tensors[n].element_size())
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        offsets[name] = (pos, pos + size)
        pos += size
    header: dict[str, Any] = {_METADATA_KEY: dict(metadata)}
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": list(offsets[name])}
    body = _json_encoder.encode(header)
    body += b" " * (-(8 + len(body)) % 8)
    if len(body) > _MAX_HEADER_BYTES:
        raise StateDictError(
            f"<header of {len(names)} tensors>", f"a safetensors header of at most {_MAX_HEADER_BYTES} bytes", f"{len(body)} bytes",
            hint="save with a smaller shard_bytes, or with fewer (larger) tensors or less metadata",
        )
    return len(body).to_bytes(8, "little") + body, order


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise StateDictError(
                f"metadata[{key!r}]", "str keys and str values (safetensors metadata)", f"{type(key).__name__}: {type(value).__name__}",
                hint="put other values into the state itself",
            )
        out[key] = value
    return out


def _write_file(fs: FileSystem, path: str, blocks: Sequence[bytes | memoryview], *, fsync: bool) -> tuple[int, int]:
    """Write ``blocks`` to a new file at ``path``; return ``(size, crc32)`` computed while writing."""
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    size = 0
    crc = 0
    try:
        for block in blocks:
            crc = crc32(block, crc)
            fs.write_all(fd, block)
            size += len(block)
        if fsync:
            fs.fsync(fd)
    finally:
        fs.close(fd)
    return size, crc


def _write_shard(fs: FileSystem, path: str, header: bytes, order: Sequence[str], tensors: Mapping[str, torch.Tensor], *, fsync: bool) -> tuple[int, int]:
    """Write one safetensors file: ``header`` (from :func:`_header_bytes`), then the tensors in ``order``."""
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pipe = _CrcPipe()
    size = 0
    try:
        try:
            pipe.feed(memoryview(header))
            fs.write_all(fd, header)
            size += len(header)
            for name in order:
                view = _byte_view(tensors[name])
                for start in range(0, len(view), _BLOCK):
                    block = view[start : start + _BLOCK]
                    pipe.feed(block)
                    fs.write_all(fd, block)
                size += len(view)
        finally:
            crc = pipe.finish()
        if fsync:
            fs.fsync(fd)
    finally:
        fs.close(fd)
    return size, crc


def _plan_shards(names: Sequence[str], tensors: Mapping[str, torch.Tensor], shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        if shards[-1] and used + size > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def save_state_dict(
    state: Mapping[str, Any],
    folder: str | os.PathLike[str],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    prefix: str = "model",
    metadata: dict[str, str] | None = None,
    fsync: bool = True,
    fs: FileSystem | None = None,
) -> list[FileEntry]:
    """Write ``state`` (a possibly nested state dict) into ``folder`` as safetensors shards.

    Guarantee: when it returns, every file it lists was written completely
    and (with ``fsync=True``) fsynced, as was ``folder`` itself; each returned
    :class:`FileEntry` (path relative to ``folder``, size, CRC-32) describes the
    bytes exactly as written, computed in the same pass as the write.  The
    files are only the results of this call; writing the manifest that makes
    the folder complete is the caller's job.  Tensors on any device are copied
    to the CPU one at a time.  Invalid input (an unsupported value, a name
    collision, a bad prefix or metadata, a state over the bounds a reader
    enforces; see the module docstring) raises :class:`StateDictError` before
    any file is written.  Files of the same names are overwritten; pass a
    fresh (staging) folder.  See the module docstring for the layout.
    """
    _check_host()
    _check_prefix(prefix)
    if shard_bytes <= 0:
        raise StateDictError("<shard_bytes>", "a positive shard size in bytes", str(shard_bytes))
    fs = fs or OS_FS
    meta = _check_metadata(metadata)
    flat, tree = _flatten(state)
    folder = os.fspath(folder)

    names = list(flat.tensors)
    shards = _plan_shards(names, flat.tensors, shard_bytes)
    # Everything a reader bounds is built and checked before the first file is written.
    planned: list[tuple[str, bytes, list[str]]] = []
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        fname = shard_file_name(prefix, i, len(shards))
        header, order = _header_bytes(shard, flat.tensors, meta)
        planned.append((fname, header, order))
        for name in shard:
            weight_map[name] = fname
            t = flat.tensors[name]
            total += t.numel() * t.element_size()
    small: list[tuple[str, bytes]] = []
    if len(shards) > 1:
        index = {"metadata": {"total_size": total, **meta}, "weight_map": weight_map}
        small.append((f"{prefix}{INDEX_SUFFIX}", _json_encoder.encode(index)))
    if not flat.flat:
        doc = {"format": TREE_FORMAT, "version": TREE_VERSION, "tree": tree}
        small.append((f"{prefix}{TREE_SUFFIX}", _json_encoder.encode(doc)))
    for fname, data in small:
        if len(data) > _MAX_JSON_BYTES:
            raise StateDictError(f"<{fname}>", f"a file of at most {_MAX_JSON_BYTES} bytes", f"{len(data)} bytes", hint="save fewer or larger entries")

    fs.ensure_dir(folder)
    entries: list[FileEntry] = []
    for fname, header, order in planned:
        size, crc = _write_shard(fs, os.path.join(folder, fname), header, order, flat.tensors, fsync=fsync)
        entries.append(FileEntry(fname, size, crc))
    for fname, data in small:
        size, crc = _write_file(fs, os.path.join(folder, fname), [data], fsync=fsync)
        entries.append(FileEntry(fname, size, crc))
    if fsync:
        fs.fsync_dir(folder)
    _log.debug("saved %d tensors (%d bytes) into %s as %s", len(names), total, folder, [e.path for e in entries])
    return entries


def save_tensor_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: dict[str, str] | None = None,
    fsync: bool = True,
    fs: FileSystem | None = None,
) -> FileEntry:
    """Write one safetensors file holding the flat ``{name: tensor}`` dict ``tensors``.

    Guarantee: as :func:`save_state_dict` for one file (complete and fsynced
    when it returns; the folder is not fsynced); the returned entry's path is
    the file's base name.
    """
    _check_host()
    fs = fs or OS_FS
    meta = _check_metadata(metadata)
    flat = _Flattened()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise StateDictError(str(name), "a str name mapped to a tensor", f"{type(name).__name__} -> {type(tensor).__name__}")
        _add_tensor(flat, name, tensor)
    path = os.fspath(path)
    header, order = _header_bytes(list(flat.tensors), flat.tensors, meta)
    size, crc = _write_shard(fs, path, header, order, flat.tensors, fsync=fsync)
    return FileEntry(os.path.basename(path), size, crc)


# --------------------------------------------------------------------------- reading


def _open_read(path: str) -> int:
    try:
        return open_regular(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TensorFileError(path, "a regular file", "a symlink", hint="shipslog never follows symlinks in its folders") from None
        if exc.errno in (errno.EINVAL, errno.EISDIR):
            raise TensorFileError(path, "a regular file", "a folder or a special file (FIFO, socket, device)") from None
        raise


def _read_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    """Fill ``view`` from ``fd`` at ``offset`` (pread, in blocks)."""
    done = 0
    total = len(view)
    while done < total:
        block = view[done : min(total, done + _BLOCK)]
        got = 0
        while got < len(block):
            n = os.preadv(fd, [block[got:]], offset + done + got)
            if n <= 0:
                raise TensorFileError(path, f"{total} bytes at offset {offset}", f"the file ending after {offset + done + got} bytes", hint="the file is truncated or shrank while it was read")
            got += n
        done += len(block)


_Spec = tuple[str, torch.dtype, list[int], int, int]


def _first_bad_entry(raw: bytes | bytearray) -> str | None:
    """The name of the first header entry that does not fit the header schema, when it can be told.

    Only for an error message: ``None`` when the header's top level itself
    does not decode (as an object of JSON values within msgspec's own depth).
    """
    try:
        entries = _RAW_ENTRIES_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    for name, value in entries.items():
        try:
            _ENTRY_DECODER.decode(value)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return name
    return None


def _decode_header(path: str, raw: bytes | bytearray) -> dict[str, Any]:
    """Decode header bytes against the header schema (nesting bounded to ``_MAX_HEADER_DEPTH`` levels).

    Guarantee: returns an object of objects whose values are scalars or flat
    lists of scalars, or raises :class:`TensorFileError` (never
    ``RecursionError``, ``UnicodeDecodeError`` or a msgspec error).
    """
    try:
        decoded: dict[str, Any] = _HEADER_DECODER.decode(raw)
        return decoded
    except msgspec.ValidationError as exc:
        bad = _first_bad_entry(raw)
        expected = (
            f"a JSON object of tensor entries, each an object of strings, numbers and flat lists "
            f"(nothing nested deeper than {_MAX_HEADER_DEPTH} levels)"
        )
        if bad == _METADATA_KEY:
            expected = "__metadata__ as a flat object of str -> str"
        raise TensorFileError(path, expected, f"JSON of another shape ({exc})", tensor=bad if bad != _METADATA_KEY else None) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise TensorFileError(path, "a JSON header", f"bytes that do not parse as JSON ({exc})") from None
    except RecursionError:
        raise TensorFileError(path, f"a JSON header nested at most {_MAX_HEADER_DEPTH} levels", "JSON nested too deeply to decode") from None


def _header_metadata(path: str, value: object) -> dict[str, str]:
    """Validate ``__metadata__``: absent or null (empty), else a flat object of str -> str."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorFileError(path, "__metadata__ as a flat object of str -> str", f"a JSON {type(value).__name__}: {_show(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TensorFileError(path, "__metadata__ as a flat object of str -> str", f"key {_show(key, 80)} mapped to {_show(item)}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_spec(path: str, name: str, info: object, data_len: int) -> _Spec:
    """Validate one header entry against the data section of ``data_len`` bytes.

    Guarantee: returns ``(name, dtype, shape, begin, end)`` only when the name
    is non-empty, the dtype is one of ``DTYPES``, the shape is a list of at most
    ``_MAX_RANK`` ints in ``[0, 2**63)`` whose non-zero product is below ``2**63``
    (so ``torch.empty(shape)`` cannot fail), and ``data_offsets`` is a pair of
    ints ``0 <= begin <= end <= data_len`` spanning exactly
    ``product(shape) * itemsize`` bytes (Python ints, no overflow); otherwise
    raises :class:`TensorFileError` naming the file and the tensor.
    """
    if not name:
        raise TensorFileError(path, "a non-empty tensor name", "an empty name", tensor=name)
    if not isinstance(info, dict):
        raise TensorFileError(path, "an object with dtype, shape and data_offsets", _show(info), tensor=name)
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise TensorFileError(path, "an object with dtype, shape and data_offsets", f"no {key} field in {_show(info)}", tensor=name)
    code = info["dtype"]
    if not isinstance(code, str) or code not in DTYPES:
        raise TensorFileError(path, f"a dtype among {', '.join(DTYPES)}", f"dtype {_show(code)}", tensor=name, hint="this build cannot read that dtype; convert the file")
    shape = info["shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_is_int(d) and 0 <= d < _DIM_LIMIT for d in shape):
        raise TensorFileError(path, f"a shape that is a list of at most {_MAX_RANK} ints, each in [0, 2**63)", f"shape {_show(shape)}", tensor=name)
    if math.prod(max(d, 1) for d in shape) >= _DIM_LIMIT:
        raise TensorFileError(path, "a shape whose non-zero dimensions multiply to less than 2**63", f"shape {_show(shape)}", tensor=name)
    offs = info["data_offsets"]
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs) or not 0 <= offs[0] <= offs[1] <= data_len:
        raise TensorFileError(path, f"data_offsets [begin, end] with 0 <= begin <= end <= {data_len} (the data section)", f"data_offsets {_show(offs)}", tensor=name)
    nbytes = math.prod(shape) * _ITEMSIZE[code]
    if offs[1] - offs[0] != nbytes:
        raise TensorFileError(path, f"{nbytes} bytes for shape {shape} of {code}", f"data_offsets {offs} ({offs[1] - offs[0]} bytes)", tensor=name)
    return name, DTYPES[code], list(shape), offs[0], offs[1]


def _parse_header(path: str, file_size: int, fd: int) -> tuple[bytes, dict[str, str], list[_Spec], list[str]]:
    """Read and validate the header of the open safetensors file ``fd`` of ``file_size`` bytes.

    Returns its raw bytes (with the length prefix), the metadata, the tensors
    in data order (name, dtype, shape, begin, end) and the names in header order.

    Guarantee: the length prefix is checked against the file size and
    ``_MAX_HEADER_BYTES`` before anything else is read; the JSON decodes
    against a schema that bounds its nesting; every entry passes
    :func:`_tensor_spec`; the tensors cover the data section exactly, back to
    back, without overlap or gap.  Anything else raises
    :class:`TensorFileError` naming the file (and the tensor where there is one).
    """
    if file_size < 8:
        raise TensorFileError(path, "at least 8 bytes (the header length)", f"a file of {file_size} bytes", hint="the file is truncated; restore it from a good copy")
    raw_len = os.pread(fd, 8, 0)
    if len(raw_len) != 8:
        raise TensorFileError(path, "8 bytes of header length", f"{len(raw_len)} bytes", hint="the file shrank while it was read")
    n = int.from_bytes(raw_len, "little")
    if n > file_size - 8:
        raise TensorFileError(path, f"a header of at most {file_size - 8} bytes (the file is {file_size} bytes)", f"a header length of {n} bytes, past the end of the file", hint="the file is truncated or its first 8 bytes are damaged")
    if n > _MAX_HEADER_BYTES:
        raise TensorFileError(path, f"a header of at most {_MAX_HEADER_BYTES} bytes", f"a header length of {n} bytes")
    raw = bytearray(n)
    _read_into(fd, memoryview(raw), 8, path)
    header = _decode_header(path, raw)
    metadata = _header_metadata(path, header.pop(_METADATA_KEY, None))
    data_len = file_size - 8 - n
    specs = [_tensor_spec(path, name, info, data_len) for name, info in header.items()]
    by_offset = sorted(specs, key=lambda s: (s[3], s[4]))
    pos = 0
    for name, _dtype, _shape, begin, end in by_offset:
        if begin != pos:
            what = "overlapping another tensor" if begin < pos else f"a gap of {begin - pos} bytes before it"
            raise TensorFileError(path, f"data that starts at offset {pos}, right after the previous tensor", f"offset {begin}, {what}", tensor=name)
        pos = end
    if pos != data_len:
        raise TensorFileError(path, f"tensors covering the whole data section of {data_len} bytes", f"{data_len - pos} bytes after the last tensor")
    return bytes(raw_len) + bytes(raw), metadata, by_offset, [s[0] for s in specs]


class _FileCrc:
    """Computes the CRC-32 of a whole open file on a second thread, reading it into one reused buffer.

    It runs while the loading thread copies the same bytes into the tensors:
    both read the same page-cache pages, and the caller checks with ``fstat``
    that the file did not change in between, so the checksum covers the bytes
    that were loaded.  On this kind of VM, checksumming freshly faulted tensor
    memory does not overlap with the copying, while this does.
    """

    def __init__(self, fd: int, size: int, path: str) -> None:
        self._fd = fd
        self._size = size
        self._path = path
        self._crc = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shipslog-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            buf = bytearray(min(self._size, 4 << 20) or 1)
            view = memoryview(buf)
            crc = 0
            pos = 0
            while pos < self._size:
                n = os.preadv(self._fd, [view[: min(len(buf), self._size - pos)]], pos)
                if n <= 0:
                    raise TensorFileError(self._path, f"{self._size} bytes", f"the file ending after {pos} bytes", hint="the file shrank while it was read")
                crc = crc32(view[:n], crc)
                pos += n
            self._crc = crc
        except BaseException as exc:  # noqa: BLE001  (not swallowed: finish() re-raises it in the loading thread)
            self._error = exc

    def finish(self) -> int:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._crc


def _stat_key(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_tensor_file(path: str, entry: FileEntry | None) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Read one safetensors file, checking ``entry`` (size, crc32) when given.

    Returns the tensors (in header order), the metadata and the header's
    names.  With ``entry`` the whole file's CRC-32 is computed concurrently
    with the copy into the tensors and checked, with the file unchanged
    between the start and the end of the read, before anything is returned.
    """
    fd = _open_read(path)
    try:
        before = _stat_key(fd)
        file_size = before[1]
        if entry is not None and file_size != entry.size:
            raise IntegrityError(path, f"{entry.size} bytes", f"{file_size} bytes")
        try:
            header_raw, metadata, specs, header_names = _parse_header(path, file_size, fd)
        except TensorFileError as exc:
            if entry is not None:
                size, crc = crc32_file(path)
                if crc != entry.crc32:
                    raise IntegrityError(path, f"crc32 {entry.crc32:08x} over {entry.size} bytes", f"crc32 {crc:08x} over {size} bytes ({exc.found})") from exc
            raise
        checker = _FileCrc(fd, file_size, path) if entry is not None else None
        tensors: dict[str, torch.Tensor] = {}
        data_start = len(header_raw)
        try:
            for name, dtype, shape, begin, end in specs:
                tensor = torch.empty(shape, dtype=dtype)
                if end > begin:
                    view = tensor.reshape(-1).view(torch.uint8).numpy().data.cast("B")
                    _read_into(fd, view, data_start + begin, path)
                tensors[name] = tensor
        finally:
            loaded_crc = checker.finish() if checker is not None else None
        if entry is not None:
            if loaded_crc != entry.crc32:
                raise IntegrityError(path, f"crc32 {entry.crc32:08x} over {entry.size} bytes", f"crc32 {loaded_crc:08x} over {file_size} bytes")
            if _stat_key(fd) != before:
                raise IntegrityError(path, "a file that does not change while it is loaded", "a file modified during the load", hint="stop whatever writes to it and load again")
    finally:
        os.close(fd)
    ordered = {name: tensors[name] for name in header_names}
    return ordered, metadata, header_names


def _read_small(path: str, entry: FileEntry | None, *, limit: int, what: str) -> bytes:
    """The whole content of the small file ``path`` (``what``), verified against ``entry`` when given.

    Guarantee: a file larger than ``limit`` bytes raises
    :class:`TensorFileError` before any of it is read; a size or CRC-32 that
    differs from ``entry`` raises :class:`IntegrityError`.
    """
    fd = _open_read(path)
    try:
        size = os.fstat(fd).st_size
        if entry is not None and size != entry.size:
            raise IntegrityError(path, f"{entry.size} bytes", f"{size} bytes")
        if size > limit:
            raise TensorFileError(path, f"{what} of at most {limit} bytes", f"a file of {size} bytes")
        data = bytearray(size)
        _read_into(fd, memoryview(data), 0, path)
    finally:
        os.close(fd)
    if entry is not None:
        crc = crc32(data)
        if crc != entry.crc32:
            raise IntegrityError(path, f"crc32 {entry.crc32:08x} over {entry.size} bytes", f"crc32 {crc:08x} over {size} bytes")
    return bytes(data)


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
    )


def _entry_for(folder: str, fname: str, listed: Mapping[str, FileEntry] | None) -> FileEntry | None:
    if listed is None:
        return None
    entry = listed.get(fname)
    if entry is None:
        raise IntegrityError(os.path.join(folder, fname), "a file listed in the manifest entries", "a file the entries do not list", hint="do not load it; the folder does not match its manifest")
    return entry


def _verify_others(folder: str, listed: Mapping[str, FileEntry], reads: set[str]) -> None:
    """Verify every listed file this load does not read itself (size, then CRC-32)."""
    for rel, entry in listed.items():
        if rel in reads:
            continue
        path = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(path):
            raise IntegrityError(path, f"a file of {entry.size} bytes", "no file")
        size = os.stat(path).st_size
        if size != entry.size:
            raise IntegrityError(path, f"{entry.size} bytes", f"{size} bytes")
        size, crc = crc32_file(path)
        if size != entry.size or crc != entry.crc32:
            raise IntegrityError(path, f"crc32 {entry.crc32:08x} over {entry.size} bytes", f"crc32 {crc:08x} over {size} bytes")


def _load_pickle(folder: str, fnames: list[str], prefix: str, listed: Mapping[str, FileEntry] | None, device: torch.device, allow_pickle: bool) -> dict[Any, Any]:
    paths = [os.path.join(folder, f) for f in fnames]
    if not allow_pickle:
        raise PickleRefusedError(
            paths[0] if len(paths) == 1 else f"{folder} ({', '.join(fnames)})",
            "it is a pickle file and allow_pickle was not given",
        )
    preferred = [f for f in fnames if os.path.splitext(f)[0] == prefix]
    if len(preferred) == 1:
        fname = preferred[0]
    elif len(fnames) == 1:
        fname = fnames[0]
    else:
        raise TensorFileNotFoundError(folder, f"{prefix}{SAFETENSORS_SUFFIX} or exactly one pickle file", fnames)
    path = os.path.join(folder, fname)
    if listed is not None:
        _entry_for(folder, fname, listed)
        _verify_others(folder, listed, set())
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = torch.load(path, map_location=device, weights_only=True)
        for warning in caught:
            _log.warning("torch.load(%s): %s", path, warning.message)
    except pickle.UnpicklingError as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise PickleRefusedError(
            path, f"torch.load(weights_only=True) rejected it ({first[:300]})",
            hint="the file holds objects other than tensors and plain containers (its unpickling could run code); "
            "do not load it; convert it with a trusted tool if you know where it came from",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TensorFileError(path, "a torch.save file", f"a file torch.load cannot read ({type(exc).__name__}: {str(exc)[:300]})") from exc
    if not isinstance(loaded, dict):
        raise TensorFileError(path, "a state dict (a dict)", f"a {type(loaded).__name__}")
    _log.info("loaded pickle file %s with torch.load(weights_only=True)", path)
    return loaded


def _read_json(path: str, entry: FileEntry | None, what: str, *, max_depth: int) -> Any:
    """Read and decode the JSON file ``path`` (``what``): at most ``_MAX_JSON_BYTES``, nested at most ``max_depth``.

    Guarantee: returns the decoded value or raises :class:`TensorFileError`
    (or :class:`IntegrityError` against ``entry``), never ``RecursionError``,
    ``UnicodeDecodeError`` or a msgspec error.  The size is checked before the
    file is read; the nesting is checked iteratively on the decoded value (a
    nesting too deep for msgspec itself is its ``RecursionError``, converted).
    """
    raw = _read_small(path, entry, limit=_MAX_JSON_BYTES, what=what)
    try:
        return decode_json_within(raw, max_depth)
    except msgspec.DecodeError as exc:
        raise TensorFileError(path, f"{what} nested at most {max_depth} levels deep", f"bytes that do not parse as JSON ({exc})") from None


def load_state_dict(
    folder: str | os.PathLike[str],
    *,
    entries: Sequence[FileEntry] | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    prefix: str = "model",
) -> dict[Any, Any]:
    """Load the state saved by :func:`save_state_dict` (prefix ``prefix``) from ``folder``.

    Guarantee: nothing is returned unless every check passed.  With
    ``entries`` (a manifest's file list), every listed file's size and CRC-32
    is verified over all its bytes, and every file read must be listed, before
    anything is returned; a mismatch raises :class:`IntegrityError` naming the
    file.  The safetensors headers are validated (truncation, header length,
    JSON and its nesting, dtypes, shapes, offsets, names), as are the index and
    the tree (size, nesting, references), and a bad one raises
    :class:`TensorFileError` naming the file and the tensor or tree place.
    Returns the same nested structure that was saved (a flat ``{name: tensor}``
    dict, in saved order, when no ``P.tree.json`` exists) with tensors on
    ``device``; each tensor has its own storage.

    Without a safetensors file for the prefix, a ``.pt``/``.pth``/``.bin``
    file is loaded only when ``allow_pickle=True``, and then only with
    ``torch.load(weights_only=True)``; otherwise, or when that load rejects
    the file, :class:`PickleRefusedError` is raised.
    """
    _check_host()
    _check_prefix(prefix)
    folder = os.fspath(folder)
    dev = torch.device(device)
    listed = {e.path: e for e in entries} if entries is not None else None
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        raise TensorFileNotFoundError(folder, "a folder of tensor files", []) from None
    index_name = f"{prefix}{INDEX_SUFFIX}"
    single_name = f"{prefix}{SAFETENSORS_SUFFIX}"
    tree_name = f"{prefix}{TREE_SUFFIX}"

    weight_map: dict[str, str] = {}
    if index_name in present:
        index_path = os.path.join(folder, index_name)
        index = _read_json(index_path, _entry_for(folder, index_name, listed), "a JSON shard index", max_depth=_MAX_INDEX_JSON_DEPTH)
        found_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(found_map, dict) or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in found_map.items()):
            raise TensorFileError(index_path, "an object with a 'weight_map' of (non-empty) tensor name -> shard file", _show(index))
        weight_map = found_map
        shard_names = list(dict.fromkeys(weight_map.values()))
        for shard in shard_names:
            if not _plain_name(shard):
                raise TensorFileError(index_path, "shard files named by plain file names inside the folder", repr(shard), hint="the index is damaged or crafted; do not load it")
    elif single_name in present:
        shard_names = [single_name]
    else:
        pickles = sorted(f for f in present if f.endswith(_PICKLE_SUFFIXES))
        if not pickles:
            raise TensorFileNotFoundError(folder, f"{single_name} or {index_name}", sorted(present))
        return _load_pickle(folder, pickles, prefix, listed, dev, allow_pickle)

    has_tree = tree_name in present
    if listed is not None:
        reads = {index_name, *shard_names} if weight_map else set(shard_names)
        if has_tree:
            reads.add(tree_name)
        for rel in sorted(reads):
            _entry_for(folder, rel, listed)
        _verify_others(folder, listed, reads)

    tree: Any = None
    if has_tree:
        tree_path = os.path.join(folder, tree_name)
        doc = _read_json(tree_path, _entry_for(folder, tree_name, listed), "a JSON state tree", max_depth=_MAX_TREE_JSON_DEPTH)
        if not isinstance(doc, dict) or doc.get("format") != TREE_FORMAT or "tree" not in doc:
            raise TensorFileError(tree_path, f"a {TREE_FORMAT!r} document", _show(doc))
        version = doc.get("version")
        if not _is_int(version) or version != TREE_VERSION:
            raise TensorFileError(tree_path, f"state tree version {TREE_VERSION}", f"version {_show(version)}", hint="use the shipslog release that wrote it")
        tree = doc["tree"]

    tensors: dict[str, torch.Tensor] = {}
    order: list[str] = list(weight_map)
    for shard in shard_names:
        path = os.path.join(folder, shard)
        if not os.path.lexists(path):
            if listed is not None:
                raise IntegrityError(path, f"a file of {listed[shard].size} bytes", "no file")
            raise TensorFileError(os.path.join(folder, index_name), f"shard file {shard} to exist", "no such file", hint="the checkpoint is incomplete; restore it from a good copy")
        got, _meta, names = _read_tensor_file(path, _entry_for(folder, shard, listed))
        for name in names:
            if weight_map and weight_map.get(name) != shard:
                raise TensorFileError(path, f"only tensors the index maps to {shard}", f"tensor {name!r} (mapped to {weight_map.get(name)!r})", tensor=name)
            tensors[name] = got[name]
        if not weight_map:
            order = names
    missing = [name for name in order if name not in tensors]
    if missing:
        raise TensorFileError(os.path.join(folder, index_name), "every tensor of the index in its shard", f"{len(missing)} missing, first {missing[0]!r}")
    tensors = {name: tensors[name] for name in order}

    if dev.type != "cpu":
        tensors = {name: t.to(dev) for name, t in tensors.items()}
    if tree is None:
        return tensors
    tree_path = os.path.join(folder, tree_name)
    result = _decode(tree, tensors, tree_path)
    if not isinstance(result, dict):
        raise TensorFileError(tree_path, "a dict at the root of the state tree", f"a {type(result).__name__}")
    return result


def load_tensor_file(
    path: str | os.PathLike[str],
    *,
    entry: FileEntry | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load one safetensors file as a flat ``{name: tensor}`` dict (in header order) on ``device``.

    Guarantee: with ``entry``, the file's size and CRC-32 are verified over
    every byte before anything is returned (:class:`IntegrityError`); a
    malformed file raises :class:`TensorFileError`.  Each tensor has its own
    storage (no view into a shared buffer).
    """
    _check_host()
    path = os.fspath(path)
    tensors, _meta, _names = _read_tensor_file(path, entry)
    dev = torch.device(device)
    if dev.type != "cpu":
        tensors = {name: t.to(dev) for name, t in tensors.items()}
    return tensors


def tensor_file_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (header validated, data not read or verified)."""
    path = os.fspath(path)
    fd = _open_read(path)
    try:
        _raw, metadata, _specs, _names = _parse_header(path, os.fstat(fd).st_size, fd)
    finally:
        os.close(fd)
    return dict(metadata)
