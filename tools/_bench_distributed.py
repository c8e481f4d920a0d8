"""``shipslog bench distributed``: a multi-rank save and load+verify through shipslog beside DCP's own, in one run.

``ranks`` gloo processes on CPU share ``mib`` MiB of float32 (16 MiB
tensors, each sharded by rows over the ranks as a ``DTensor``), so each rank
writes ``mib / ranks`` MiB.  Round by round, in alternating order:

* ``dcp_save_s``: ``dcp.save`` with DCP's ``FileSystemWriter(sync_files=True)``
  into a new folder (its files fsynced; ``.metadata`` written and renamed);
* ``shipslog_save_s``: :func:`~shipslog.gpu.distributed.save_distributed`,
  the whole operation (begun, every rank's files checksummed as written and
  fsynced with their folder, ``.metadata``, MANIFEST, durable, rename,
  committed);
* ``dcp_load_s``: ``dcp.load`` with DCP's ``FileSystemReader``;
* ``shipslog_load_verify_s``: :func:`~shipslog.gpu.distributed.load_distributed`
  (every file a rank reads checked against the MANIFEST's size and CRC-32).

Each time runs from a barrier on every rank to a barrier after the call (the
slowest rank's time), measured on rank 0; the figure is the median of
``repeats`` rounds, each running both sides back to back in alternating
order, and a ratio is the median of the rounds' ratios.  The page cache is
not dropped (that needs root): loads read from memory, where a verifier's
cost shows most.  Targets: save <= 1.1x DCP's, load+verify <= 1.25x DCP's
load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._bench_targets import Target, judge

__all__ = ["LOAD_TARGET", "SAVE_TARGET", "TARGETS", "run_distributed_bench"]

_MODULE = "shipslog.tools._bench_distributed"
SAVE_TARGET = 1.1
LOAD_TARGET = 1.25
_TENSOR_MIB = 16
TARGETS = (
    Target(f"save_le_{SAVE_TARGET}x", "save_ratio", "<=", SAVE_TARGET, "distributed save / DCP save"),
    Target(f"load_verify_le_{LOAD_TARGET}x", "load_verify_ratio", "<=", LOAD_TARGET, "distributed load+verify / DCP load"),
)
"""What ``shipslog bench distributed`` must show."""


def run_distributed_bench(folder: str | None = None, *, ranks: int = 2, mib: int = 256, repeats: int = 5, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run the benchmark (see the module) in a new folder under ``folder``; return the result object."""
    if ranks < 1 or mib < _TENSOR_MIB or repeats < 1:
        raise ValueError(f"ranks >= 1, mib >= {_TENSOR_MIB} and repeats >= 1 are needed; got {ranks}, {mib}, {repeats}")
    work = os.path.abspath(tempfile.mkdtemp(prefix="shipslog-bench-distributed-", dir=folder))  # the ranks run in it
    try:
        store = os.path.join(work, "store")
        report = os.path.join(work, "report.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPSLOG_CRASH", "SHIPSLOG_KILL"))}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", _MODULE, "--rank", str(rank), "--ranks", str(ranks), "--mib", str(mib), "--repeats",
                 str(repeats), "--store", store, "--work", work, "--report", report],
                cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for rank in range(ranks)
        ]
        deadline = time.monotonic() + timeout_s
        errors = []
        for proc in procs:
            try:
                _out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
            if proc.returncode != 0:
                errors.append(err.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
        if errors or not os.path.exists(report):
            raise RuntimeError(f"the benchmark's ranks failed: {errors[0][0] if errors else 'no report'}")
        with open(report, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
        result["dir"] = os.path.dirname(work)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rank(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shipslog-bench-distributed-rank")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--mib", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args(argv)

    import warnings

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from shipslog import Engine
    from shipslog.gpu.distributed import load_distributed, save_distributed

    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=args.ranks)
    mesh = init_device_mesh("cpu", (args.ranks,))
    rows = _TENSOR_MIB * (1 << 20) // 4 // 1024
    count = args.mib // _TENSOR_MIB

    def state(fill: float | None) -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        out = {}
        for i in range(count):
            full = torch.rand(rows, 1024, generator=g) if fill is None else torch.full((rows, 1024), fill)
            out[f"layer{i}.weight"] = distribute_tensor(full, mesh, [Shard(0)])
        return {"model": out}

    def timed(call: Any) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        call()
        dist.barrier()
        return time.perf_counter() - t0

    saved = state(None)
    engine = Engine.open(os.path.join(args.work, "root")) if args.rank == 0 else None
    times: dict[str, list[float]] = {"dcp_save_s": [], "shipslog_save_s": [], "dcp_load_s": [], "shipslog_load_verify_s": []}
    same = True
    try:
        for i in range(args.repeats):
            folder = os.path.join(args.work, f"dcp-{i}")

            def ours(step: int = i) -> None:
                save_distributed(engine, saved, step=step)

            def theirs(path: str = folder) -> None:
                dcp_save(saved, storage_writer=FileSystemWriter(path, sync_files=True))

            for key, call in (("dcp_save_s", theirs), ("shipslog_save_s", ours)) if i % 2 == 0 else (("shipslog_save_s", ours), ("dcp_save_s", theirs)):
                times[key].append(timed(call))
            target = state(0.0)
            loads = (
                ("dcp_load_s", lambda path=folder, into=target: dcp_load(into, storage_reader=FileSystemReader(path))),
                ("shipslog_load_verify_s", lambda step=i, into=target: load_distributed(engine, into, name=f"step-{step}")),
            )
            for key, call in loads if i % 2 == 0 else tuple(reversed(loads)):
                for t in target["model"].values():
                    t.to_local().zero_()
                times[key].append(timed(call))
                same = same and all(torch.equal(target["model"][k].to_local(), saved["model"][k].to_local()) for k in saved["model"])
    finally:
        if engine is not None:
            engine.close()
    if args.rank == 0:
        medians = {key: round(statistics.median(values), 4) for key, values in times.items()}
        # Each repeat runs both sides back to back (in alternating order): the median of the repeats'
        # ratios is what a disk whose speed drifts between repeats leaves intact.
        save_ratio = statistics.median(o / t for o, t in zip(times["shipslog_save_s"], times["dcp_save_s"]))
        load_ratio = statistics.median(o / t for o, t in zip(times["shipslog_load_verify_s"], times["dcp_load_s"]))
        result = {
            "ranks": args.ranks,
            "mib": args.mib,
            **medians,
            "save_ratio": round(save_ratio, 3),
            "load_verify_ratio": round(load_ratio, 3),
            "loads_equal": same,
            "repeats": args.repeats,
            "statistic": f"median of {args.repeats}; ratios: the median of the repeats' ratios",
        }
        judge(TARGETS, result)
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(result, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_rank(sys.argv[1:]))
