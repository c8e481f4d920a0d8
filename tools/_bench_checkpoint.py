"""``shipslog bench checkpoint``: the whole checkpoint operation, loads, the async save and a merge, beside baselines.

One run, in one temporary folder on the disk under test, with the same
``mib`` MiB of float32 tensors (16 MiB each) for every measure:

* ``raw_write_fsync_s``: the tensors' raw bytes written to one file + fsync
  (the floor: no format, no checksum);
* ``torch_save_fsync_s``: ``torch.save`` + fsync;
* ``shipslog_save_s``: the FULL engine checkpoint operation on an
  :class:`~shipslog.Engine` opened with fsync on: ``engine.checkpoint``
  (``checkpoint.begun``, staging folder), :func:`~shipslog.gpu.save_state_dict`
  into the staging folder (CRC-32 computed while writing, files and folder
  fsynced), ``add_file`` for each file, and ``commit`` (manifest written last
  and fsynced, ``checkpoint.durable`` fdatasynced, rename into
  ``checkpoints/``, ``checkpoint.committed`` fdatasynced);
* ``shipslog_load_verify_s``: read the manifest and
  :func:`~shipslog.gpu.load_state_dict` with its entries (every file's CRC-32
  checked over all its bytes), then touch every byte; beside
  ``torch_load_s``: ``torch.load(weights_only=True)``, then touch every byte.
  The same two cold (``shipslog_load_verify_cold_s``, ``torch_load_cold_s``):
  the files' pages dropped from the page cache first with
  ``posix_fadvise(DONTNEED)`` (no root needed; ``cold`` says whether it was
  available, else the cold figures repeat hot loads).
  The page cache is not dropped (that needs root): both read from memory;
  each starts from a trimmed heap;
* ``async_blocking_s``: how long :meth:`AsyncCheckpointer.save` blocks its
  caller with nothing in flight and its host buffers already allocated
  (``async_blocking_first_s``: the first save, which allocates them);
  ``async_persist_s``: the background part of that save;
* ``merge_s`` beside ``merge_reference_s``: :func:`~shipslog.gpu.merge_lora`
  beside a plain ``W + scale * B @ A`` loop over a model of ``mib`` MiB, with
  the peak extra host memory of each.

Each time is the median of ``repeats`` rounds (the merge: the best of
``repeats``, as :func:`~shipslog.gpu._bench.bench_merge` measures it); the
three writers, and the two loads, are interleaved round by round so that
drift of the disk hits them alike.  Medians, because on a noisy (virtual)
disk a single lucky write decides a best-of figure.  Nothing
here prints; progress is logged at INFO.  Importing this module imports torch.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from shipslog import Engine
from shipslog.engine import read_manifest
from shipslog.gpu import (
    EXPECTED_BYTES_MARGIN,
    AsyncCheckpointer,
    bench_merge,
    load_state_dict,
    make_bench_state,
    save_state_dict,
    torch_save_fsync,
    touch_every_byte,
    trim_heap,
    write_raw_fsync,
)

from ._bench_targets import Target, judge

__all__ = ["TARGETS", "run_checkpoint_bench"]

TARGETS = (
    Target("save_le_1_1x_raw", "ratios.save_vs_raw", "<=", 1.1, "checkpoint / raw write + fsync"),
    Target("save_le_torch_save", "ratios.save_vs_torch_save", "<=", 1.0, "checkpoint / torch.save + fsync"),
    Target("load_le_torch_load", "ratios.load_vs_torch_load", "<=", 1.0, "verified load / torch.load (hot)"),
    Target("load_cold_le_torch_load_cold", "ratios.load_cold_vs_torch_load_cold", "<=", 1.0, "verified load / torch.load (cold)"),
    Target("async_blocking_le_0_1x_save", "ratios.async_blocking_vs_save", "<=", 0.1, "async save blocking / checkpoint"),
    Target("merge_le_1_2x_reference", "ratios.merge_vs_reference", "<=", 1.2, "merge_lora / plain merge loop"),
)
"""What ``shipslog bench checkpoint`` must show."""

_log = logging.getLogger("shipslog.tools.bench")


def _shipslog_save(engine: Engine, name: str, step: int, state: dict[str, torch.Tensor], nbytes: int) -> str:
    """One full checkpoint operation; returns the committed folder."""
    with engine.checkpoint(name, step=step, expected_bytes=nbytes + EXPECTED_BYTES_MARGIN) as writer:
        for entry in save_state_dict(state, writer.path, fs=engine.fs):
            writer.add_file(entry)
    assert writer.info is not None
    return engine.path(writer.info.path)


def _shipslog_load(folder: str) -> int:
    manifest = read_manifest(folder)
    return touch_every_byte(load_state_dict(folder, entries=manifest.files))


def _torch_load(path: str) -> int:
    return touch_every_byte(torch.load(path, weights_only=True))


def drop_cached_pages(paths: list[str]) -> bool:
    """Ask the kernel to drop the page-cache pages of ``paths`` (clean pages go; needs no root); False where unsupported."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def run_checkpoint_bench(folder: str, *, mib: int = 512, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Run every measurement in a temporary folder under ``folder`` (removed afterwards); return the result object.

    Keys: the measures named in the module docstring (seconds), the merge's
    ``merge_peak_extra_bytes`` / ``merge_reference_peak_extra_bytes`` (None
    where not measurable) and ``merge_max_abs_diff``, ``"ratios"``,
    ``"targets"`` (booleans: shipslog_save_s <= 1.1 x raw_write_fsync_s and
    <= torch_save_fsync_s; shipslog_load_verify_s <= torch_load_s;
    async_blocking_s <= 0.1 x shipslog_save_s; merge_s <= 1.2 x
    merge_reference_s), ``"mib"``, ``"repeats"``, ``"statistic"`` and ``"dir"``.
    """
    if mib < 1 or repeats < 1:
        raise ValueError(f"mib and repeats must be 1 or more, got mib={mib}, repeats={repeats}")
    work = tempfile.mkdtemp(prefix="shipslog-bench-checkpoint-", dir=folder)
    try:
        return _run(work, os.path.abspath(folder), mib=mib, repeats=repeats, seed=seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: str, folder: str, *, mib: int, repeats: int, seed: int) -> dict[str, Any]:
    state = make_bench_state(mib, seed=seed)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    raw_paths = [os.path.join(work, f"raw-{i}.bin") for i in range(repeats)]
    pt_paths = [os.path.join(work, f"state-{i}.pt") for i in range(repeats)]
    pt_path = pt_paths[-1]
    samples: dict[str, list[float]] = {
        key: []
        for key in ("raw", "torch_save", "shipslog_save", "shipslog_load", "torch_load", "shipslog_cold", "torch_cold", "async", "persist")
    }
    out: dict[str, Any] = {}
    with Engine.open(os.path.join(work, "root"), fsync=True) as engine:
        _log.info("timing saves of %d MiB: raw write, torch.save, shipslog checkpoint (%d rounds)", mib, repeats)
        committed = ""
        # Every writer writes new files each round and deletes nothing while timed, so all of them pay
        # alike for fresh blocks (on thin-provisioned virtual disks, rewriting freed blocks is faster).
        for i in range(repeats):
            samples["raw"].append(_timed(write_raw_fsync, state, raw_paths[i])[0])
            samples["torch_save"].append(_timed(torch_save_fsync, state, pt_paths[i])[0])
            seconds, committed = _timed(_shipslog_save, engine, f"bench-{i}", i, state, nbytes)
            samples["shipslog_save"].append(seconds)
        for path in raw_paths + pt_paths[:-1]:
            os.unlink(path)

        _log.info("timing loads: shipslog (verified) and torch.load(weights_only=True)")
        expected = touch_every_byte(state)
        for _ in range(repeats):
            trim_heap()
            seconds, total = _timed(_shipslog_load, committed)
            assert total == expected, "the checkpoint loaded back different bytes"
            samples["shipslog_load"].append(seconds)
            trim_heap()
            seconds, total = _timed(_torch_load, pt_path)
            assert total == expected, "torch.load gave back different bytes"
            samples["torch_load"].append(seconds)
        ours = [os.path.join(committed, name) for name in os.listdir(committed)]
        cold = True
        for _ in range(repeats):
            trim_heap()
            cold = drop_cached_pages(ours) and cold
            samples["shipslog_cold"].append(_timed(_shipslog_load, committed)[0])
            trim_heap()
            cold = drop_cached_pages([pt_path]) and cold
            samples["torch_cold"].append(_timed(_torch_load, pt_path)[0])
        out["cold"] = cold
        os.unlink(pt_path)

        _log.info("timing the blocking part of AsyncCheckpointer.save")
        with AsyncCheckpointer(engine, policy="wait") as ck:
            first = 0.0
            for i in range(repeats + 1):
                ck.wait()
                seconds, handle = _timed(ck.save, f"async-{i}", state, step=repeats + i)
                assert handle is not None
                handle.result()
                if i == 0:
                    first = seconds  # allocates the host buffers
                else:
                    samples["async"].append(seconds)
                    samples["persist"].append(handle.persist_s or 0.0)
            ck.wait()
        out["async_blocking_first_s"] = first

    del state
    _log.info("timing merge_lora beside a plain merge loop")
    merge = bench_merge(mib=mib, repeats=repeats, seed=seed)

    med = {key: statistics.median(values) for key, values in samples.items()}
    result: dict[str, Any] = {
        "raw_write_fsync_s": med["raw"],
        "torch_save_fsync_s": med["torch_save"],
        "shipslog_save_s": med["shipslog_save"],
        "shipslog_load_verify_s": med["shipslog_load"],
        "torch_load_s": med["torch_load"],
        "shipslog_load_verify_cold_s": med["shipslog_cold"],
        "torch_load_cold_s": med["torch_cold"],
        "async_blocking_s": med["async"],
        **out,
        "async_persist_s": med["persist"],
        "merge_s": merge["merge_s"],
        "merge_reference_s": merge["merge_reference_s"],
        "merge_peak_extra_bytes": merge["merge_peak_extra_bytes"],
        "merge_reference_peak_extra_bytes": merge["merge_reference_peak_extra_bytes"],
        "merge_max_abs_diff": merge["merge_max_abs_diff"],
    }
    ratios = {
        "save_vs_raw": result["shipslog_save_s"] / result["raw_write_fsync_s"],
        "save_vs_torch_save": result["shipslog_save_s"] / result["torch_save_fsync_s"],
        "load_vs_torch_load": result["shipslog_load_verify_s"] / result["torch_load_s"],
        "load_cold_vs_torch_load_cold": result["shipslog_load_verify_cold_s"] / result["torch_load_cold_s"],
        "async_blocking_vs_save": result["async_blocking_s"] / result["shipslog_save_s"],
        "merge_vs_reference": result["merge_s"] / result["merge_reference_s"],
    }
    peak, ref_peak = result["merge_peak_extra_bytes"], result["merge_reference_peak_extra_bytes"]
    if peak is not None and ref_peak:
        ratios["merge_peak_vs_reference"] = peak / ref_peak
    result = {key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}
    result["ratios"] = {key: round(value, 3) for key, value in ratios.items()}
    judge(TARGETS, result)
    result["mib"] = mib
    result["repeats"] = repeats
    result["statistic"] = f"median of {repeats} interleaved rounds (merge: best of {repeats})"
    result["dir"] = folder
    _log.info("checkpoint bench: %s", result)
    return result
