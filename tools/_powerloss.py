"""``shipslog torture --power-loss``: the workload under a modelled power cut at every durability point.

A process kill keeps the page cache; a power cut does not.  This harness:

1. **Records.**  A child runs the crash harness's workload (every built-in
   operation, or ``--ops``) with ``fsync`` on, on a
   :class:`~shipslog.journal.CrashImageFileSystem`.  At every durability
   point (each fsync, fdatasync and folder fsync) it keeps the image of a
   power cut right after it (everything not yet durable dropped) and, just
   before it, a few seeded *partial* images (each pending write applied or
   not at sector granularity, a sector torn, an append cut short, each
   pending folder entry applied or not).  Images are stored as trees of
   content-addressed blobs.  Every result the workload is told is done is
   stamped with the file system's position, so an image knows which
   acknowledgements came before its cut.
2. **Checks** every image in a fresh process (``jobs`` of them, each taking
   a share): the image is written out, opened (recovery runs), every
   invariant checked with every checksum, every result acknowledged before
   the cut checked still there and verifying, a ``durable`` record checked
   to have meant it (recovery never finds no copy of a folder journaled
   durable), and a second open checked to recover nothing.  An open that
   raises is ``refused``: a power cut must never make a root unopenable.
3. **Crashes recovery.**  For a sample of the images whose recovery had work
   to do, recovery itself runs on a crash-image file system and each image
   of a power cut during it is checked the same way.

:func:`run_power_loss` returns the JSON the command prints: ``crash_states``,
``boundaries``, ``recovered``, ``violations``, ``acknowledged_lost``,
``refused``, ``seconds`` and what was run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shipslog.journal import CrashImage, CrashImageFileSystem

from ._workload import ENGINE_OPTIONS, WORKLOAD_OPS, parse_ops

__all__ = ["ImageStore", "check_image", "record", "run_power_loss"]

_MODULE = "shipslog.tools._powerloss"
_CHILD_TIMEOUT_S = 1800
_DURABLE_LIED = ("no copy verifies", "no copy of the merged model verifies")
"""Outcomes of recovery that mean a record said ``durable`` and the folder was not."""


class ImageStore:
    """Crash images under ``folder``: ``images.jsonl`` (one line per image: ``n``, ``position``, ``label``,
    ``phase``, ``tree`` of root-relative path -> blob digest or null for a folder) and ``blobs/<sha256>``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.blobs = os.path.join(folder, "blobs")
        os.makedirs(self.blobs, exist_ok=True)
        self.index = os.path.join(folder, "images.jsonl")
        self._known: set[str] = set(os.listdir(self.blobs))
        self.count = 0

    def add(self, image: CrashImage, phase: str = "workload") -> None:
        """Store ``image`` (its bytes once per distinct content)."""
        tree: dict[str, str | None] = {}
        for rel, data in image.tree.items():
            if data is None:
                tree[rel] = None
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest not in self._known:
                with open(os.path.join(self.blobs, digest), "wb") as f:
                    f.write(data)
                self._known.add(digest)
            tree[rel] = digest
        line = {"n": self.count, "position": image.position, "label": image.label, "phase": phase, "tree": tree}
        with open(self.index, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        self.count += 1

    def images(self) -> Iterator[dict[str, Any]]:
        """Every stored image's line, in order."""
        if not os.path.exists(self.index):
            return
        with open(self.index, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    yield json.loads(line)

    def materialize(self, entry: dict[str, Any], dest: str) -> str:
        """Write the image ``entry`` into the new folder ``dest``; return it."""
        tree: dict[str, bytes | None] = {}
        for rel, digest in entry["tree"].items():
            if digest is None:
                tree[rel] = None
            else:
                with open(os.path.join(self.blobs, digest), "rb") as f:
                    tree[rel] = f.read()
        return CrashImage(entry["position"], entry["label"], tree).materialize(dest)


def _keep_images(fs: CrashImageFileSystem, store: ImageStore, rng: random.Random, partial: int, phase: str) -> None:
    """Have ``fs`` store a boundary image after each durability point and ``partial`` partial ones before it."""

    def on_sync(f: CrashImageFileSystem, before: bool) -> None:
        if before:
            for _ in range(partial):
                store.add(f.partial_image(rng), phase)
        else:
            store.add(f.image(), phase)

    fs.on_sync = on_sync


def record(workdir: str, ops: Sequence[str], seed: int, partial: int) -> dict[str, int]:
    """Run the workload on a crash-image file system in ``workdir/root``, storing images in ``workdir``."""
    from ._workload import run_workload

    root = os.path.join(workdir, "root")
    os.makedirs(root)
    fs = CrashImageFileSystem(root, sync=False)  # durability is modelled; the real disk need not wait for it
    store = ImageStore(workdir)
    _keep_images(fs, store, random.Random(seed), partial, "workload")
    run_workload(root, ops, seed, os.path.join(workdir, "acks"), fs=fs, stamp=lambda: fs.position)
    fs.on_sync = None
    return {"boundaries": len(fs.boundaries), "images": store.count}


def _acks_before(workdir: str, position: int) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "acks")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        acks = [json.loads(line) for line in f if line.endswith("\n")]
    return [a for a in acks if a["position"] <= position]


def check_image(root: str, acked: list[dict[str, Any]]) -> dict[str, Any]:
    """Recover ``root`` (an image) and check it: ``{"violations", "recovered", "refused"}``.

    ``acked`` are the results acknowledged before the image's cut.
    """
    from ._torture import check_root

    result = check_root(root, acked=acked)
    refused = [v for v in result["violations"] if v["invariant"] == "open"]
    violations = [v for v in result["violations"] if v["invariant"] != "open"]
    for line in result.get("outcomes", []):
        if any(mark in line for mark in _DURABLE_LIED):
            violations.append({"invariant": "durable-means-durable", "message": f"recovery found a durable record false: {line}"})
    return {"violations": violations, "refused": refused, "recovered": result["recovered"]}


def _recovery_images(root: str, store: ImageStore, rng: random.Random, partial: int) -> int:
    """Open ``root`` on a crash-image file system, keeping an image at each durability point of its recovery."""
    from shipslog import Engine

    fs = CrashImageFileSystem(root, sync=False)
    before = store.count
    _keep_images(fs, store, rng, partial, "recovery")
    options = {k: v for k, v in ENGINE_OPTIONS.items() if k != "fsync"}
    try:
        Engine.open(root, fs=fs, **options).close()
    except Exception as exc:  # noqa: BLE001 - the checker reports a refused open; here only the images matter
        logging.getLogger("shipslog.torture").debug("recovery under the crash-image file system raised %s", exc)
    fs.on_sync = None
    return store.count - before


def check_shard(workdir: str, shard: int, shards: int, recovery_sample: int, partial: int, seed: int) -> Iterator[dict[str, Any]]:
    """Check every ``shards``-th image from ``shard`` (see the module); yield one result per image."""
    store = ImageStore(workdir)
    scratch = tempfile.mkdtemp(prefix=f"check-{shard}-", dir=workdir)
    nested = ImageStore(os.path.join(workdir, f"recovery-{shard}"))
    rng = random.Random(seed * 1000 + shard)
    crashed_recoveries = 0
    try:
        for entry in store.images():
            if entry["n"] % shards != shard:
                continue
            acked = _acks_before(workdir, entry["position"])
            dest = store.materialize(entry, os.path.join(scratch, f"i{entry['n']}"))
            outcome = check_image(dest, acked)
            yield {"image": f"{entry['n']} ({entry['label']}, position {entry['position']})", **outcome}
            shutil.rmtree(dest)
            if outcome["recovered"] and crashed_recoveries < recovery_sample:
                crashed_recoveries += 1
                again = store.materialize(entry, os.path.join(scratch, f"r{entry['n']}"))
                start = nested.count
                _recovery_images(again, nested, rng, partial)
                shutil.rmtree(again)
                for inner in list(nested.images())[start:]:
                    dest = nested.materialize(inner, os.path.join(scratch, f"n{inner['n']}"))
                    outcome = check_image(dest, acked)
                    yield {"image": f"{entry['n']} then recovery cut at {inner['n']} ({inner['label']})", **outcome}
                    shutil.rmtree(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_power_loss(
    *,
    ops: Sequence[str] | None = None,
    seed: int = 0,
    quick: bool = False,
    workdir: str | None = None,
    jobs: int = 2,
    keep: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Record the workload's crash images, check them all, crash recovery too; return the result (see the module).

    ``quick`` keeps one partial image per durability point and crashes the
    recovery of a few images per checker; the full run keeps twenty and
    crashes the recovery of up to 40 images per checker.
    """
    started = time.monotonic()
    chosen = tuple(ops) if ops else WORKLOAD_OPS
    parse_ops(",".join(chosen))
    say = log or (lambda _msg: None)
    partial = 1 if quick else 20
    sample = 2 if quick else 40
    base = os.path.abspath(tempfile.mkdtemp(prefix="shipslog-power-loss-", dir=workdir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPSLOG_CRASH")}
    try:
        cmd = [sys.executable, "-m", _MODULE, "record", base, "--ops", ",".join(chosen), "--seed", str(seed), "--partial", str(partial)]
        # cwd: never the caller's folder, where a folder named shipslog would shadow the installed package
        proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the workload failed on the crash-image file system (exit {proc.returncode}): {proc.stderr[-2000:]}")
        recorded = json.loads(proc.stdout.strip().splitlines()[-1])
        say(f"{recorded['images']} crash image(s) recorded at {recorded['boundaries']} durability point(s) in {time.monotonic() - started:.1f} s")

        def shard(i: int) -> list[dict[str, Any]]:
            args = [sys.executable, "-m", _MODULE, "check", base, "--shard", str(i), "--of", str(jobs)]
            args += ["--recovery-sample", str(sample), "--partial", str(partial), "--seed", str(seed)]
            done = subprocess.run(args, cwd=base, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, check=False)
            results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0:
                results.append({"image": f"checker {i}", "violations": [{"invariant": "checker", "message": done.stderr[-1500:]}], "refused": [], "recovered": []})
            return results

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = [r for part in pool.map(shard, range(max(1, jobs))) for r in part]
        violations: list[dict[str, str]] = []
        lost: list[dict[str, str]] = []
        refused: list[dict[str, str]] = []
        for r in results:
            for v in r["violations"]:
                item = {"image": r["image"], "invariant": v["invariant"], "message": v["message"]}
                (lost if v["invariant"] == "no-acked-loss" else violations).append(item)
            refused.extend({"image": r["image"], "message": v["message"]} for v in r["refused"])
        return {
            "crash_states": len(results),
            "boundaries": recorded["boundaries"],
            "recovered": sum(1 for r in results if r["recovered"]),
            "recovery_crash_states": sum(1 for r in results if "then recovery" in r["image"]),
            "violations": violations,
            "acknowledged_lost": lost,
            "refused": refused,
            "ops": list(chosen),
            "seed": seed,
            "quick": quick,
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """The children: ``record WORKDIR ...`` and ``check WORKDIR --shard I --of N ...`` (see the module)."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("workdir")
    rec.add_argument("--ops", default=None)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--partial", type=int, default=1)
    chk = sub.add_parser("check")
    chk.add_argument("workdir")
    chk.add_argument("--shard", type=int, required=True)
    chk.add_argument("--of", type=int, required=True)
    chk.add_argument("--recovery-sample", type=int, default=2)
    chk.add_argument("--partial", type=int, default=1)
    chk.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # recovering thousands of images logs what it does; the results are the output
    if args.command == "record":
        counts = record(args.workdir, parse_ops(args.ops), args.seed, args.partial)
        sys.stdout.write(json.dumps(counts) + "\n")
        return 0
    for result in check_shard(args.workdir, args.shard, args.of, args.recovery_sample, args.partial, args.seed):
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
