"""A micro-benchmark of checkpoint bytes and LoRA merges on one disk.

:func:`bench_checkpoint` times, on the same folder and the same N MiB of
float32 tensors: a raw write + fsync of the bytes, ``torch.save`` + fsync,
:func:`save_state_dict`, :func:`load_state_dict` with verification beside
``torch.load(weights_only=True)`` (both touching every page of every tensor),
and :func:`merge_lora` beside a plain per-tensor ``W + scale * B @ A`` loop.
Each figure is the best of ``repeats`` runs.  The page cache is not dropped
(that needs root), so the loads read from memory; they compare parsing,
copying and checksumming, not the disk.  Before each load the C heap is
trimmed, so both loads pay for faulting in fresh memory, as a load in a
freshly started process does.  Importing this module has no side
effects; the command line wiring lives elsewhere.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch

from shipslog.journal import OS_FS, FileSystem

from ._lora import merge_lora
from ._tensorfile import load_state_dict, save_state_dict

__all__ = [
    "bench_checkpoint",
    "bench_merge",
    "make_bench_state",
    "peak_extra_bytes",
    "torch_save_fsync",
    "touch_every_byte",
    "trim_heap",
    "write_raw_fsync",
]

_log = logging.getLogger("shipslog.gpu.bench")

_TENSOR_MIB = 16


def make_bench_state(mib: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """``mib`` MiB of float32 tensors of 16 MiB each (the last one smaller), seeded."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    left = mib << 20
    i = 0
    while left > 0:
        n = min(left, _TENSOR_MIB << 20) // 4
        state[f"layers.{i}.weight"] = torch.randn(n // 1024, 1024, generator=gen) if n >= 1024 else torch.randn(n, generator=gen)
        left -= n * 4
        i += 1
    return state


def _rss_hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss_now() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc only), so that a peak measured next is not hidden.

    Also used before each timed load, so that every load pays for faulting in
    fresh memory, as a load in a freshly started process does.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)


def peak_extra_bytes(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """Run ``fn``; return its result and the growth of peak resident memory it caused.

    Linux only (``/proc/self/clear_refs`` resets the peak); ``None`` elsewhere.
    The figure counts host memory only, and pages the allocator already held
    are not counted again.
    """
    gc.collect()
    trim_heap()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return fn(), None
    before = _rss_now()
    result = fn()
    peak = _rss_hwm()
    if before is None or peak is None:
        return result, None
    return result, max(0, peak - before)


def touch_every_byte(value: Any) -> int:
    """Read every byte of every tensor in ``value`` (nested dicts, lists, tuples); return an integer sum over them.

    Loads that map files lazily are only comparable after this.
    """
    total = 0
    if isinstance(value, torch.Tensor):
        if value.numel():
            flat = value.detach().contiguous().reshape(-1).view(torch.uint8)
            whole = flat.numel() // 8 * 8
            total += int(flat[:whole].view(torch.int64).sum()) + int(flat[whole:].sum())
    elif isinstance(value, dict):
        for item in value.values():
            total += touch_every_byte(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            total += touch_every_byte(item)
    return total


def write_raw_fsync(state: dict[str, torch.Tensor], path: str, fs: FileSystem = OS_FS) -> None:
    """Write the raw bytes of every tensor of ``state`` into a new file at ``path`` with plain writes, then fsync.

    The floor any checkpoint format is measured against: no header, no checksum.
    ``fs`` (the operating system's by default) lets a test count its writes and syncs.
    """
    fd = fs.open(_fresh(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in state.values():
            fs.write_all(fd, t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data.cast("B"))
        fs.fsync(fd)
    finally:
        fs.close(fd)


def torch_save_fsync(state: Any, path: str, fs: FileSystem = OS_FS) -> None:
    """``torch.save(state)`` into a new file at ``path``, flushed and fsynced (through ``fs``, see :func:`write_raw_fsync`)."""
    fd = fs.open(_fresh(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with open(fd, "wb", closefd=False) as f:
            torch.save(state, f)
        fs.fsync(fd)
    finally:
        fs.close(fd)


def _best(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _fresh(path: str) -> str:
    if os.path.lexists(path):
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    return path


def bench_checkpoint(
    folder: str | os.PathLike[str],
    *,
    mib: int = 256,
    repeats: int = 3,
    rank: int = 16,
    merge_dim: int = 2048,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure checkpoint saves, loads and a LoRA merge of ``mib`` MiB under ``folder``.

    Guarantee: returns a dict of seconds (``*_s``, the best of ``repeats``),
    byte counts and ratios; everything it writes goes into
    ``folder/shipslog-bench`` and is removed before it returns.  Keys:
    ``raw_write_fsync_s``, ``torch_save_fsync_s``, ``tensorfile_save_s``,
    ``tensorfile_load_verify_s``, ``torch_load_s``, ``merge_s``,
    ``merge_reference_s``, ``merge_peak_extra_bytes``,
    ``merge_reference_peak_extra_bytes`` (None where not measurable),
    ``save_vs_raw``, ``save_vs_torch_save``, ``load_vs_torch_load``,
    ``merge_vs_reference``, ``merge_max_abs_diff``, ``mib``, ``merge_layers``.
    """
    work = os.path.join(os.fspath(folder), "shipslog-bench")
    os.makedirs(work, exist_ok=True)
    try:
        return _run(work, mib=mib, repeats=repeats, rank=rank, merge_dim=merge_dim, seed=seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: str, *, mib: int, repeats: int, rank: int, merge_dim: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"mib": mib, "repeats": repeats}
    out.update(_bench_files(work, make_bench_state(mib, seed=seed), repeats))
    gc.collect()
    out.update(bench_merge(mib=mib, repeats=repeats, rank=rank, merge_dim=merge_dim, seed=seed))
    out["save_vs_raw"] = out["tensorfile_save_s"] / out["raw_write_fsync_s"]
    out["save_vs_torch_save"] = out["tensorfile_save_s"] / out["torch_save_fsync_s"]
    out["load_vs_torch_load"] = out["tensorfile_load_verify_s"] / out["torch_load_s"]
    out["merge_vs_reference"] = out["merge_s"] / out["merge_reference_s"]
    _log.info("checkpoint bench: %s", out)
    return out


def _bench_files(work: str, state: dict[str, torch.Tensor], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    raw_path = os.path.join(work, "raw.bin")

    def raw() -> None:
        write_raw_fsync(state, raw_path)

    pt_path = os.path.join(work, "state.pt")

    def tsave() -> None:
        torch_save_fsync(state, pt_path)

    st_dir = os.path.join(work, "tensorfile")
    entries_box: list[Any] = []

    def tfsave() -> None:
        _fresh(st_dir)
        entries_box[:] = save_state_dict(state, st_dir)

    # Interleave the three writers so that drift of the disk hits them alike.
    times: dict[str, float] = {"raw": float("inf"), "torch": float("inf"), "tensorfile": float("inf")}
    for _ in range(repeats):
        for key, fn in (("raw", raw), ("torch", tsave), ("tensorfile", tfsave)):
            times[key] = min(times[key], _best(1, fn))
    out["raw_write_fsync_s"] = times["raw"]
    out["torch_save_fsync_s"] = times["torch"]
    out["tensorfile_save_s"] = times["tensorfile"]
    _fresh(raw_path)

    def tfload() -> None:
        touch_every_byte(load_state_dict(st_dir, entries=entries_box))

    def tload() -> None:
        touch_every_byte(torch.load(pt_path, weights_only=True))

    # Each load starts from a trimmed heap, so both pay for fresh memory as a load at start-up does.
    load_times = {"tensorfile": float("inf"), "torch": float("inf")}
    for _ in range(repeats):
        trim_heap()
        load_times["tensorfile"] = min(load_times["tensorfile"], _best(1, tfload))
        trim_heap()
        load_times["torch"] = min(load_times["torch"], _best(1, tload))
    out["tensorfile_load_verify_s"] = load_times["tensorfile"]
    out["torch_load_s"] = load_times["torch"]
    _fresh(pt_path)
    _fresh(st_dir)
    return out


def bench_merge(*, mib: int, repeats: int = 3, rank: int = 16, merge_dim: int = 2048, seed: int = 0) -> dict[str, Any]:
    """Time :func:`merge_lora` beside a plain per-tensor ``W + scale * B @ A`` loop on a model of ``mib`` MiB.

    The model is made of ``merge_dim`` x ``merge_dim`` float32 layers with a
    rank-``rank`` adapter on each.  Returns ``merge_s``, ``merge_reference_s``
    (best of ``repeats``), ``merge_peak_extra_bytes``,
    ``merge_reference_peak_extra_bytes`` (None where not measurable),
    ``merge_max_abs_diff``, ``merge_layers``, ``merge_dim`` and ``rank``.
    """
    out: dict[str, Any] = {}
    # A model of the same size made of merge_dim x merge_dim linear layers, a rank-`rank` adapter on each.
    gen = torch.Generator().manual_seed(seed + 1)
    layers = max(1, (mib << 20) // (merge_dim * merge_dim * 4))
    base = {f"layers.{i}.proj.weight": torch.randn(merge_dim, merge_dim, generator=gen) for i in range(layers)}
    adapter = {}
    for i in range(layers):
        adapter[f"base_model.model.layers.{i}.proj.lora_A.weight"] = torch.randn(rank, merge_dim, generator=gen) * 0.01
        adapter[f"base_model.model.layers.{i}.proj.lora_B.weight"] = torch.randn(merge_dim, rank, generator=gen) * 0.01
    config = {"r": rank, "lora_alpha": 2 * rank, "target_modules": ["proj"]}
    scale = 2.0

    def merge() -> Any:
        return merge_lora(base, adapter, config)

    def reference() -> dict[str, torch.Tensor]:
        merged = dict(base)
        for i in range(layers):
            a = adapter[f"base_model.model.layers.{i}.proj.lora_A.weight"]
            b = adapter[f"base_model.model.layers.{i}.proj.lora_B.weight"]
            key = f"layers.{i}.proj.weight"
            merged[key] = base[key] + scale * (b @ a)
        return merged

    merge_times = {"merge": float("inf"), "reference": float("inf")}
    for _ in range(repeats):
        merge_times["merge"] = min(merge_times["merge"], _best(1, merge))
        merge_times["reference"] = min(merge_times["reference"], _best(1, reference))
    out["merge_s"] = merge_times["merge"]
    out["merge_reference_s"] = merge_times["reference"]
    result, out["merge_peak_extra_bytes"] = peak_extra_bytes(merge)
    del result
    gc.collect()
    ref, out["merge_reference_peak_extra_bytes"] = peak_extra_bytes(reference)
    merged = merge().state
    out["merge_max_abs_diff"] = max(float((merged[k] - ref[k]).abs().max()) for k in ref)
    out["merge_layers"] = layers
    out["merge_dim"] = merge_dim
    out["rank"] = rank
    return out
