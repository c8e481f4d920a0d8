"""``shipslog torture --training``: kill a training process at every file event of its saves, resume, compare.

A child process trains a small deterministic model (dropout and random
batches, so the RNG states matter), saving a training checkpoint every few
steps through :mod:`shipslog.gpu` (or Lightning through
:mod:`shipslog.gpu.lightning`) and keeping the newest two.  Its engine runs on
a :class:`KillingFileSystem`, which counts the file events of the run and
kills the process with SIGKILL:

* ``before`` mode: just before the k-th file create, rename or remove;
* ``half`` mode: in the k-th write, after half of its bytes.

For every k the harness runs the child killed at k in a fresh root, then the
child again without a kill, and requires: the resumed child started from the
newest committed checkpoint (after recovery) and no older than the newest
save the killed child saw acknowledged, and its final weights equal those of
an uninterrupted run bit for bit.  ``--quick`` tries a seeded sample of the
points.  Imports torch (in the children only).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from shipslog.journal import OS_FS, DelegatingFileSystem, FileSystem, PathLike

__all__ = ["FRAMEWORKS", "KillingFileSystem", "run_training_torture"]

_log = logging.getLogger("shipslog.tools.torture")

FRAMEWORKS = ("plain", "lightning", "hf", "accelerate")
_MODULE = "shipslog.tools._training_kill"
_STEPS = 12
_SAVE_EVERY = 4
_QUICK_POINTS = 6
_CHILD_TIMEOUT_S = 300


class KillingFileSystem(DelegatingFileSystem):
    """Counts file events and kills this process at the ``kill_at``-th one of ``mode`` (see the module).

    ``before``: creates (an ``open`` with ``O_CREAT``), renames and removes,
    killed before the call.  ``half``: writes, killed after half of the bytes
    were written.  ``kill_at`` 0 only counts.
    """

    def __init__(self, inner: FileSystem, *, mode: str = "before", kill_at: int = 0) -> None:
        super().__init__(inner)
        if mode not in ("before", "half"):
            raise ValueError(f"mode is 'before' or 'half', got {mode!r}")
        self.mode = mode
        self.kill_at = kill_at
        self.events = 0

    def _event(self, kind: str) -> bool:
        """Count an event of ``kind``; True when this is the one to die at."""
        if (kind == "write") != (self.mode == "half"):
            return False
        self.events += 1
        return self.events == self.kill_at

    @staticmethod
    def _die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT and self._event("create"):
            self._die()
        return super().open(path, flags, mode)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        if self._event("rename"):
            self._die()
        super().replace(src, dst)

    def unlink(self, path: PathLike) -> None:
        if self._event("remove"):
            self._die()
        super().unlink(path)

    def rmdir(self, path: PathLike) -> None:
        if self._event("remove"):
            self._die()
        super().rmdir(path)

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        if self._event("write"):
            half = memoryview(data)[: max(1, len(data) // 2)]
            super().write_all(fd, half, offset)
            self._die()
        super().write_all(fd, data, offset)


# -- the child --------------------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shipslog-training-child")
    parser.add_argument("root")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="plain")
    parser.add_argument("--mode", choices=["before", "half"], default="before")
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--result", required=True)
    parser.add_argument("--acks", required=True)
    args = parser.parse_args(argv)
    fs = KillingFileSystem(OS_FS, mode=args.mode, kill_at=args.kill_at)
    train = {"plain": _train_plain, "lightning": _train_lightning, "hf": _train_hf, "accelerate": _train_accelerate}[args.framework]
    start, newest, digest = train(args.root, fs, args.acks)
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump({"start": start, "newest_at_open": newest, "digest": digest, "events": fs.events}, f)
    return 0


def _digest(params: Any) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ack(path: str, step: int) -> None:
    """Record that the save at ``step`` returned (it is acknowledged), durably."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{step}\n")
        f.flush()
        os.fsync(f.fileno())


def _newest(engine: Any) -> int | None:
    steps = [a.step for a in engine.state.checkpoints.values() if a.step is not None]
    return max(steps) if steps else None


def _train_plain(root: str, fs: FileSystem, acks: str) -> tuple[int, int | None, str]:
    import numpy as np
    import torch

    from shipslog import Engine
    from shipslog.gpu import restore_training, save_training

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(0.25), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
    with Engine.open(root, fs=fs, segment_bytes=1 << 20) as engine:
        newest = _newest(engine)
        restored = restore_training(engine, model=model, optimizer=optimizer, scheduler=scheduler)
        if restored is None:
            random.seed(7)
            np.random.seed(7)
            torch.manual_seed(7)
        start = restored.step or 0 if restored is not None else 0
        for step in range(start + 1, _STEPS + 1):
            x = torch.randn(16, 8) + float(np.random.rand()) + random.random()
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if step % _SAVE_EVERY == 0:
                save_training(engine, step=step, model=model, optimizer=optimizer, scheduler=scheduler)
                _ack(acks, step)
                engine.retain(keep_last=2)
        return start, newest, _digest(model.parameters())


def _train_lightning(root: str, fs: FileSystem, acks: str) -> tuple[int, int | None, str]:
    import warnings

    import lightning.pytorch as pl
    import torch

    from shipslog import Engine
    from shipslog.gpu.lightning import ShipslogCheckpointIO, ShipslogModelCheckpoint

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.layer = torch.nn.Linear(8, 1)
            self.first_step: int | None = None

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.first_step is None:
                self.first_step = int(self.global_step)
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=0.05)

        def train_dataloader(self) -> Any:
            g = torch.Generator().manual_seed(3)
            x = torch.randn(_SAVE_EVERY * 8, 8, generator=g)
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)

    class Acks(pl.Callback):
        pending: int | None = None

        def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: Any) -> None:
            self.pending = int(trainer.global_step)

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            # Lightning runs checkpoint callbacks last: a save begun in one batch's end has returned by the next one's
            if self.pending is not None:
                _ack(acks, self.pending)
                self.pending = None

    model = Regression()
    with Engine.open(root, fs=fs, segment_bytes=1 << 20) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        newest = _newest(engine)
        trainer = pl.Trainer(
            max_steps=_STEPS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=os.path.dirname(root), plugins=[ShipslogCheckpointIO(engine)],
            callbacks=[ShipslogModelCheckpoint(engine, every_n_train_steps=_SAVE_EVERY, save_top_k=2, monitor="step",
                                               mode="max", save_last=True), Acks()],
        )
        trainer.fit(model, ckpt_path="last")
        return model.first_step or 0, newest, _digest(model.parameters())


def _train_hf(root: str, fs: FileSystem, acks: str) -> tuple[int, int | None, str]:
    import warnings

    import torch
    import transformers

    from shipslog import Engine
    from shipslog.gpu.hf import ShipslogTrainer

    class Acks(transformers.TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _ack(acks, int(state.global_step))  # called once the checkpoint is committed

    torch.manual_seed(1)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    rows = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(3))
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = transformers.TrainingArguments(
        output_dir=os.path.join(os.path.dirname(root), "hf-output"), max_steps=_STEPS, save_steps=_SAVE_EVERY,
        save_total_limit=2, per_device_train_batch_size=4, report_to=[], use_cpu=True, seed=0, logging_steps=1000,
        disable_tqdm=True, lr_scheduler_type="constant",
    )
    acked = Acks()
    with Engine.open(root, fs=fs, segment_bytes=1 << 20) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        newest = _newest(engine)
        trainer = ShipslogTrainer(engine, model=model, args=args, train_dataset=data, callbacks=[acked])
        trainer.train(resume_from_checkpoint=True)
        start = trainer.resumed_from.step or 0 if trainer.resumed_from is not None else 0
        return start, newest, _digest(model.parameters())


def _train_accelerate(root: str, fs: FileSystem, acks: str) -> tuple[int, int | None, str]:
    import warnings

    import accelerate  # type: ignore[import-untyped]
    import torch

    from shipslog import Engine
    from shipslog.gpu.accelerate import ShipslogAccelerate

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(0.25), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerator = accelerate.Accelerator(cpu=True)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    with Engine.open(root, fs=fs, segment_bytes=1 << 20) as engine:
        newest = _newest(engine)
        states = ShipslogAccelerate(accelerator, engine, total_limit=2)
        loaded = states.load_state()
        if loaded is None:
            torch.manual_seed(7)
        start = loaded.step or 0 if loaded is not None else 0
        for step in range(start + 1, _STEPS + 1):
            loss = model(torch.randn(16, 8)).pow(2).mean()
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            if step % _SAVE_EVERY == 0:
                states.save_state(step=step)
                _ack(acks, step)
        return start, newest, _digest(model.parameters())


# -- the sweep --------------------------------------------------------------------------------


@dataclass
class _Outcome:
    mode: str
    point: int
    killed: bool
    start: int | None
    newest: int | None
    acked: int
    same_weights: bool
    problem: str


def run_training_torture(
    framework: str = "plain",
    *,
    folder: str | None = None,
    quick: bool = False,
    sample: int = _QUICK_POINTS,
    seed: int = 0,
    jobs: int = 2,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the sweep for ``framework`` (see the module) in a temporary folder; return the result object.

    ``quick`` tries ``sample`` seeded points of each mode instead of every
    one; ``jobs`` kill points run at a time.  ``violations`` lists every kill
    point whose resume failed a requirement.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework is one of {FRAMEWORKS}, got {framework!r}")
    work = tempfile.mkdtemp(prefix="shipslog-torture-training-", dir=folder)
    t0 = time.monotonic()
    try:
        clean = _run_child(work, "clean", framework, "before", 0)
        counts = {"before": clean["events"], "half": _run_child(work, "count-writes", framework, "half", 0)["events"]}
        if clean.get("error"):
            raise RuntimeError(f"the uninterrupted training run failed: {clean['error']}")
        rng = random.Random(seed)
        planned: list[tuple[str, int]] = []
        for mode, total in counts.items():
            points = list(range(1, total + 1))
            if quick:
                points = sorted(rng.sample(points, min(sample, len(points))))
            planned += [(mode, point) for point in points]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outcomes = list(pool.map(lambda job: _kill_and_resume(work, framework, job[0], job[1], clean["digest"]), planned))
        violations = [vars(o) for o in outcomes if o.problem]
        return {
            "framework": framework,
            "quick": quick,
            "seed": seed,
            "steps": _STEPS,
            "save_every": _SAVE_EVERY,
            "events": counts,
            "points": len(outcomes),
            "killed": sum(o.killed for o in outcomes),
            "resumed_from_newest": sum(not o.problem for o in outcomes),
            "violations": violations,
            "seconds": round(time.monotonic() - t0, 2),
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _kill_and_resume(work: str, framework: str, mode: str, point: int, digest: str) -> _Outcome:
    slot = f"{mode}-{point:04d}"
    first = _run_child(work, slot, framework, mode, point, expect_kill=True)
    acks = os.path.join(work, slot, "acks")
    acked = max((int(line) for line in _lines(acks)), default=0)
    second = _run_child(work, slot, framework, mode, 0)
    problems: list[str] = []
    start = second.get("start")
    newest = second.get("newest_at_open")
    if second.get("error"):
        problems.append(f"the resume failed: {second['error']}")
    else:
        if start != (newest or 0):
            problems.append(f"resumed at step {start}, but the newest committed checkpoint was at step {newest}")
        if (start or 0) < acked:
            problems.append(f"resumed at step {start}, older than the save at step {acked} that was acknowledged")
        if second.get("digest") != digest:
            problems.append("the final weights differ from an uninterrupted run")
    return _Outcome(mode, point, bool(first.get("killed")), start, newest, acked, second.get("digest") == digest, "; ".join(problems))


def _run_child(work: str, slot: str, framework: str, mode: str, kill_at: int, *, expect_kill: bool = False) -> dict[str, Any]:
    folder = os.path.join(work, slot)
    os.makedirs(folder, exist_ok=True)
    result = os.path.join(folder, f"result-{kill_at}.json")
    args = [sys.executable, "-m", _MODULE, os.path.join(folder, "root"), "--framework", framework, "--mode", mode,
            "--kill-at", str(kill_at), "--result", result, "--acks", os.path.join(folder, "acks")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPSLOG_CRASH")}
    # cwd: never the caller's folder, where a folder named shipslog would shadow the installed package
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, check=False)
    if done.returncode == -signal.SIGKILL:
        return {"killed": True}
    if done.returncode != 0 or not os.path.exists(result):
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        if expect_kill:
            return {"killed": False, "error": tail[0]}
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    with open(result, encoding="utf-8") as f:
        found: dict[str, Any] = json.load(f)
    found["killed"] = False
    return found


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().split() if line.isdigit()]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
