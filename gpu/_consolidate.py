"""The merge step of the engine's consolidation operation, on folders: verify, load, merge, write.

:func:`merge_folders` is the ``merge`` callable ``Engine.consolidate`` passes
to the engine: it loads the base model (every file verified against the base's
manifest first) and the adapter (likewise), merges with :func:`merge_lora`
(float32 row chunks, finite check before anything is written, out-of-memory
fallback), writes the merged state with :func:`save_state_dict` into the
staging folder, and copies the base's other files (``config.json``, a
tokenizer) beside it, checksumming them in the same pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from shipslog.engine import FileEntry
from shipslog.journal import OS_FS, FileSystem, crc32

from ._lora import ADAPTER_CONFIG_NAME, DEFAULT_MERGE_BUDGET_BYTES, load_adapter, merge_lora
from ._tensorfile import load_state_dict, save_state_dict

__all__ = ["merge_folders"]

_MODEL_PREFIX = "model"
_COPY_CHUNK = 8 << 20


def _is_tensor_file(rel: str) -> bool:
    return rel.startswith(_MODEL_PREFIX) and rel.endswith((".safetensors", ".index.json", ".tree.json"))


def _copy(fs: FileSystem, src: str, dst: str) -> FileEntry:
    """Copy ``src`` to the new file ``dst`` through ``fs``, checksumming in the same pass, and fsync it."""
    crc = 0
    size = 0
    with open(src, "rb") as fin:
        fd = fs.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while True:
                chunk = fin.read(_COPY_CHUNK)
                if not chunk:
                    break
                fs.write_all(fd, chunk)
                crc = crc32(chunk, crc)
                size += len(chunk)
            fs.fsync(fd)
        finally:
            fs.close(fd)
    return FileEntry(os.path.basename(dst), size, crc)


def merge_folders(
    base_folder: str,
    base_files: Sequence[FileEntry],
    adapter_folder: str,
    adapter_files: Sequence[FileEntry],
    out_folder: str,
    *,
    memory_budget_bytes: int = DEFAULT_MERGE_BUDGET_BYTES,
    fs: FileSystem = OS_FS,
) -> tuple[list[FileEntry], dict[str, Any]]:
    """Merge the adapter in ``adapter_folder`` into the model in ``base_folder``, writing ``out_folder``.

    Returns the entries of every file written and the merge report (scale,
    merged modules, out-of-memory retries, CPU fallback).  Raises
    :class:`~shipslog.engine.IntegrityError` for a file that does not match
    its manifest, :class:`AdapterError` for a bad config or mismatched shapes,
    :class:`NonFiniteError` when the result holds NaN/Inf; nothing it wrote is
    to be used then.  Every file is written and fsynced through ``fs`` (the
    engine passes its own).
    """
    base_tensor_files = [f for f in base_files if _is_tensor_file(f.path)]
    base_state = load_state_dict(base_folder, entries=base_tensor_files, prefix=_MODEL_PREFIX)
    adapter_state, config = load_adapter(adapter_folder, entries=adapter_files)
    result = merge_lora(base_state, adapter_state, config, memory_budget_bytes=memory_budget_bytes)
    entries = save_state_dict(result.state, out_folder, prefix=_MODEL_PREFIX, fs=fs)
    for extra in base_files:
        if _is_tensor_file(extra.path) or "/" in extra.path or extra.path == ADAPTER_CONFIG_NAME:
            continue
        entries.append(_copy(fs, os.path.join(base_folder, extra.path), os.path.join(out_folder, extra.path)))
    return entries, result.report()
