"""``shipslog torture --training``: kill a training process at every file event of its saves, resume, compare.

A child process trains a small deterministic model (dropout and random
batches, so the RNG states matter), saving a training checkpoint every few
steps through :mod:`shipslog.gpu` (or Lightning, the HF Trainer or
Accelerate through their integrations) and keeping the newest two.  The
harness counts the file events of the run under the child's folders and
kills the process with SIGKILL:

* ``before`` mode: just before the k-th file create (a file or a folder),
  rename or remove;
* ``half`` mode: in the k-th write, after half of its bytes.

The events are counted in libc (:mod:`._libc_kill`, a preloaded library
built with the system C compiler), so the files the frameworks write from
native code (torch's zip writer, safetensors) are cut too, and the
baselines are killed at exactly the same kinds of points as shipslog.
Where no C compiler is found the harness falls back to Python-level
killers: a :class:`KillingFileSystem` under the engine (every file effect
of shipslog's own code) and an :class:`AuditKiller` for the baselines
(creates, renames and removes seen through Python's audit events).

For every k the harness runs the child killed at k in a fresh root, then the
child again without a kill, and requires: the resumed child started from the
newest committed checkpoint (after recovery) and no older than the newest
save the killed child saw acknowledged, and its final weights equal those of
an uninterrupted run bit for bit.  ``--quick`` tries a seeded sample of the
points.  Imports torch (in the children only).

With ``ranks=2`` (the HF Trainer and Lightning) each child is a DDP job of
two processes on gloo (the engine on rank 0 only; Lightning through
:class:`~shipslog.gpu.lightning.ShipslogDDPStrategy`): the file events of
each rank are counted separately, and every event of every rank is a kill
point.  When one rank is killed the others are given a few seconds to fail
on their own and are then killed too, as a job scheduler tears a job down;
the job is then started again on both ranks.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shipslog.journal import OS_FS, DelegatingFileSystem, FileSystem, PathLike

from . import _libc_kill

__all__ = ["FRAMEWORKS", "TEARDOWN_ABORT", "AuditKiller", "KillingFileSystem", "aborted_after_result", "run_training_torture"]

_log = logging.getLogger("shipslog.tools.torture")

FRAMEWORKS = ("plain", "lightning", "hf", "accelerate")
INTERCEPTS = ("auto", "libc", "python")
_MODULE = "shipslog.tools._training_kill"
_STEPS = 12
_SAVE_EVERY = 4
_QUICK_POINTS = 6
_CHILD_TIMEOUT_S = 300
DISTRIBUTED_FRAMEWORKS = ("hf", "lightning")
"""The frameworks ``ranks=2`` runs (DDP on gloo)."""
_TEARDOWN_S = 20.0
"""How long the other ranks of a job get to end on their own after one was killed, before they are killed too."""


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


class AuditKiller:
    """The same kill points for code that writes without shipslog (the frameworks' own checkpointing, the baseline):
    counted from Python's audit events, so nothing is patched.  ``open`` for writing, ``os.mkdir``, ``os.rename`` (and replace),
    ``os.remove``, ``os.rmdir`` and ``shutil.rmtree``; files opened by native code (torch's own zip writer,
    safetensors) raise no audit event, so kills before and after them stand for them.  Installed for the
    process's life (audit hooks cannot be removed)."""

    def __init__(self, kill_at: int = 0) -> None:
        self.kill_at = kill_at
        self.events = 0
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            mode, flags = args[1], args[2]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writes:
                return
        elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            return
        self.events += 1
        if self.events == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


# -- the child --------------------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shipslog-training-child")
    parser.add_argument("root")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="plain")
    parser.add_argument("--mode", choices=["before", "half"], default="before")
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--result", required=True)
    parser.add_argument("--acks", required=True)
    parser.add_argument("--baseline", action="store_true", help="the framework's own checkpointing, without shipslog")
    parser.add_argument("--intercept", choices=["libc", "python"], default="python",
                        help="libc: counted and killed by the preloaded library; python: by the Python-level killers")
    parser.add_argument("--rank", type=int, default=0, help="this process's rank in a DDP job (RANK and WORLD_SIZE are set)")
    args = parser.parse_args(argv)
    python_counter: Callable[[], int] | None = None
    if args.baseline:
        if args.intercept == "python":
            killer = AuditKiller(args.kill_at)
            python_counter = lambda: killer.events  # noqa: E731
        start, newest, digest = _BASELINES[args.framework](args.root, args.acks)
    else:
        fs: FileSystem = OS_FS
        if args.intercept == "python":
            killing = fs = KillingFileSystem(OS_FS, mode=args.mode, kill_at=args.kill_at)
            python_counter = lambda: killing.events  # noqa: E731
        train = {"plain": _train_plain, "lightning": _train_lightning, "hf": _train_hf, "accelerate": _train_accelerate}[args.framework]
        start, newest, digest = train(args.root, fs, args.acks, args.rank)
    counted = python_counter() if python_counter is not None else _libc_kill.kill_library_events()
    if counted is None:
        raise RuntimeError("--intercept libc: the kill library is not preloaded (LD_PRELOAD)")
    if _world() > 1:
        _leave_process_group()
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump({"start": start, "newest_at_open": newest, "digest": digest, "events": counted}, f)
    if _world() > 1:
        # torch's gloo threads can still abort the interpreter's teardown of a DDP process after its work is done
        # (TEARDOWN_ABORT, exit -6); the result is written, so this rank ends here, without a teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


TEARDOWN_ABORT = "terminate called without an active exception"
"""What torch's gloo threads print when they abort a DDP process's teardown (SIGABRT)."""


def aborted_after_result(returncode: int | None, stderr: str, result: str) -> bool:
    """Whether a training child ended in torch's teardown abort after its work was done and reported.

    True only for SIGABRT with :data:`TEARDOWN_ABORT` on stderr and a
    complete JSON ``result`` file: a child writes it after the training, its
    digest and the process group's teardown, so the abort cut nothing the
    harness checks.  The harness then takes the result as it would a clean
    exit's.  (A rank of a DDP job still aborts there about once in two hundred
    jobs, after the barrier and ``destroy_process_group``; the cause is inside
    torch and was not found.)"""
    if returncode != -signal.SIGABRT or TEARDOWN_ABORT not in stderr:
        return False
    try:
        with open(result, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def _leave_process_group() -> None:
    """Wait until every rank has finished its work, then tear the process group down, before any rank exits.

    No rank exits while a peer's gloo threads still hold connections to it,
    the documented way to end a job.  The teardown abort
    (:data:`TEARDOWN_ABORT`, exit -6) was still seen after it, once in a full
    2-rank sweep, as often as before it: see :func:`aborted_after_result`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _open_engine(root: str, fs: FileSystem, rank: int) -> Any:
    """The engine on rank 0 (a context manager); on the other ranks of a DDP job, None."""
    import contextlib

    from shipslog import Engine

    return Engine.open(root, fs=fs, segment_bytes=1 << 20) if rank == 0 else contextlib.nullcontext()


def _train_plain(root: str, fs: FileSystem, acks: str, rank: int = 0) -> tuple[int, int | None, str]:

    from shipslog import Engine
    from shipslog.gpu import restore_training, save_training

    model, optimizer, scheduler = _plain_objects()
    with Engine.open(root, fs=fs, segment_bytes=1 << 20) as engine:
        newest = _newest(engine)
        restored = restore_training(engine, model=model, optimizer=optimizer, scheduler=scheduler)
        if restored is None:
            _seed_fresh_run()
        start = restored.step or 0 if restored is not None else 0
        for step in range(start + 1, _STEPS + 1):
            _plain_step(model, optimizer, scheduler)
            if step % _SAVE_EVERY == 0:
                save_training(engine, step=step, model=model, optimizer=optimizer, scheduler=scheduler)
                _ack(acks, step)
                engine.retain(keep_last=2)
        return start, newest, _digest(model.parameters())


def _lightning_parts(acks: str) -> tuple[Any, Any]:
    """The Lightning module every Lightning run trains, and a callback that acknowledges each save that returned."""
    import lightning.pytorch as pl
    import torch

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

    return Regression(), Acks()


def _train_lightning(root: str, fs: FileSystem, acks: str, rank: int = 0) -> tuple[int, int | None, str]:
    import warnings

    import lightning.pytorch as pl

    from shipslog.gpu.lightning import (
        ShipslogCheckpointIO,
        ShipslogDDPStrategy,
        ShipslogModelCheckpoint,
    )

    model, ack_callback = _lightning_parts(acks)
    world = _world()
    ddp: dict[str, Any] = {"devices": world, "strategy": ShipslogDDPStrategy()} if world > 1 else {}
    with _open_engine(root, fs, rank) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        newest = _newest(engine) if engine is not None else None
        trainer = pl.Trainer(
            max_steps=_STEPS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=os.path.dirname(root), plugins=[ShipslogCheckpointIO(engine)],
            callbacks=[ShipslogModelCheckpoint(engine, every_n_train_steps=_SAVE_EVERY, save_top_k=2, monitor="step",
                                               mode="max", save_last=True), ack_callback],
            **ddp,
        )
        trainer.fit(model, ckpt_path="last")
        # the step it resumed at: its first step's, or (a finished run resumed: nothing trained) where it ended
        start = model.first_step if model.first_step is not None else int(trainer.global_step)
        return start, newest, _digest(model.parameters())


def _hf_parts(root: str, acks: str, *, output_dir: str) -> tuple[Any, Any, Any, Any]:
    """The tiny GPT-2 every HF run trains, its data, its TrainingArguments, and a callback acknowledging each save."""
    import torch
    import transformers

    class Acks(transformers.TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _ack(acks, int(state.global_step))  # called once the checkpoint is written (with shipslog: committed)

    torch.manual_seed(1)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    rows = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(3))
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = transformers.TrainingArguments(
        output_dir=output_dir, max_steps=_STEPS, save_steps=_SAVE_EVERY, save_total_limit=2, per_device_train_batch_size=4,
        report_to=[], use_cpu=True, seed=0, logging_steps=1000, disable_tqdm=True, lr_scheduler_type="constant",
    )
    return model, data, args, Acks()


def _train_hf(root: str, fs: FileSystem, acks: str, rank: int = 0) -> tuple[int, int | None, str]:
    import warnings

    from shipslog.gpu.hf import ShipslogTrainer

    model, data, args, ack_callback = _hf_parts(root, acks, output_dir=os.path.join(os.path.dirname(root), "hf-output"))
    with _open_engine(root, fs, rank) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        newest = _newest(engine) if engine is not None else None
        trainer = ShipslogTrainer(engine, model=model, args=args, train_dataset=data, callbacks=[ack_callback])
        trainer.train(resume_from_checkpoint=True)
        start = trainer.resumed_from.step or 0 if trainer.resumed_from is not None else 0
        return start, newest, _digest(model.parameters())


def _train_accelerate(root: str, fs: FileSystem, acks: str, rank: int = 0) -> tuple[int, int | None, str]:
    import warnings

    import accelerate  # type: ignore[import-untyped]
    import torch

    from shipslog import Engine
    from shipslog.gpu.accelerate import ShipslogAccelerate

    model, optimizer, scheduler = _plain_objects()
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
        _accelerate_steps(accelerator, model, optimizer, scheduler, start, lambda step: states.save_state(step=step), acks)
        return start, newest, _digest(model.parameters())


def _accelerate_steps(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, start: int, save: Callable[[int], object], acks: str) -> None:
    """The Accelerate runs' training from ``start``: ``save(step)`` every few steps, each acknowledged once it returned."""
    import torch

    for step in range(start + 1, _STEPS + 1):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        if step % _SAVE_EVERY == 0:
            save(step)
            _ack(acks, step)


# -- the same runs without shipslog: each framework's own checkpointing, used as its documentation shows --------


def _seed_fresh_run() -> None:
    import numpy as np
    import torch

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)


def _plain_step(model: Any, optimizer: Any, scheduler: Any) -> None:
    """One step whose batch comes from all three generators (Python, numpy, torch), with dropout in the model."""
    import numpy as np
    import torch

    x = torch.randn(16, 8) + float(np.random.rand()) + random.random()
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _plain_objects() -> tuple[Any, Any, Any]:
    import torch

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(0.25), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)


def _baseline_plain(root: str, acks: str) -> tuple[int, int | None, str]:
    """``torch.save`` of the state to ``step-N.pt``, the two newest kept; resume from the highest-numbered file."""
    import torch

    from shipslog.gpu import capture_rng, restore_rng

    os.makedirs(root, exist_ok=True)
    model, optimizer, scheduler = _plain_objects()
    saved = sorted(int(n[5:-3]) for n in os.listdir(root) if n.startswith("step-") and n.endswith(".pt"))
    start = 0
    if saved:
        state = torch.load(os.path.join(root, f"step-{saved[-1]}.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        start = saved[-1]
    else:
        _seed_fresh_run()
    for step in range(start + 1, _STEPS + 1):
        _plain_step(model, optimizer, scheduler)
        if step % _SAVE_EVERY == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng()}
            torch.save(state, os.path.join(root, f"step-{step}.pt"))
            _ack(acks, step)
            for old in sorted(int(n[5:-3]) for n in os.listdir(root) if n.startswith("step-") and n.endswith(".pt"))[:-2]:
                os.remove(os.path.join(root, f"step-{old}.pt"))
    return start, None, _digest(model.parameters())


def _baseline_lightning(root: str, acks: str) -> tuple[int, int | None, str]:
    """Lightning's ``ModelCheckpoint`` (top 2, ``save_last=True``) and ``fit(ckpt_path="last")``."""
    import warnings

    import lightning.pytorch as pl

    module, ack_callback = _lightning_parts(acks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_steps=_STEPS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=os.path.dirname(root),
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=_SAVE_EVERY, save_top_k=2, monitor="step",
                                                    mode="max", save_last=True), ack_callback],
        )
        trainer.fit(module, ckpt_path="last")
    start = module.first_step if module.first_step is not None else int(trainer.global_step)
    return start, None, _digest(module.parameters())


def _baseline_hf(root: str, acks: str) -> tuple[int, int | None, str]:
    """The Trainer's own saves (``save_total_limit=2``) and ``resume_from_checkpoint`` = its newest ``checkpoint-N``."""
    import warnings

    import transformers
    from transformers.trainer_utils import get_last_checkpoint

    model, data, args, ack_callback = _hf_parts(root, acks, output_dir=root)
    os.makedirs(root, exist_ok=True)
    last: str | None = get_last_checkpoint(root)  # type: ignore[no-untyped-call]
    start = int(last.rsplit("-", 1)[-1]) if last else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[ack_callback])
        if last is not None and start >= _STEPS:  # as a careful user would: a finished run is loaded, not trained on
            trainer._load_from_checkpoint(last)
        else:
            trainer.train(resume_from_checkpoint=last)
    return start, None, _digest(model.parameters())


def _baseline_accelerate(root: str, acks: str) -> tuple[int, int | None, str]:
    """Accelerate's automatic checkpoint naming with ``total_limit=2``; ``load_state()`` of its newest folder."""
    import warnings

    import accelerate
    import torch

    model, optimizer, scheduler = _plain_objects()
    config = accelerate.utils.ProjectConfiguration(project_dir=root, automatic_checkpoint_naming=True, total_limit=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerator = accelerate.Accelerator(cpu=True, project_config=config)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    folder = os.path.join(root, "checkpoints")
    saved = sorted(int(n.rsplit("_", 1)[-1]) for n in os.listdir(folder)) if os.path.isdir(folder) else []
    start = 0
    if saved:
        accelerator.load_state()
        accelerator.project_configuration.iteration = saved[-1] + 1
        start = (saved[-1] + 1) * _SAVE_EVERY
    else:
        torch.manual_seed(7)
    _accelerate_steps(accelerator, model, optimizer, scheduler, start, lambda _step: accelerator.save_state(), acks)
    return start, None, _digest(model.parameters())


_BASELINES = {"plain": _baseline_plain, "lightning": _baseline_lightning, "hf": _baseline_hf, "accelerate": _baseline_accelerate}


# -- the sweep --------------------------------------------------------------------------------


@dataclass
class _Outcome:
    mode: str
    point: int
    rank: int
    killed: bool
    start: int | None
    newest: int | None
    acked: int
    verdict: str
    """``resumed`` (from the newest checkpoint, weights as uninterrupted), ``failed`` (the resume raised),
    ``lost-work`` (resumed older than a save that returned) or ``wrong-weights``."""
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
    baseline: bool = False,
    intercept: str = "auto",
    ranks: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the sweep for ``framework`` (see the module) in a temporary folder; return the result object.

    ``quick`` tries ``sample`` seeded points of each mode (and rank) instead
    of every one; ``jobs`` kill points run at a time.  ``baseline`` runs the
    framework's own checkpointing without shipslog.  ``intercept``: ``libc``
    counts and kills in the preloaded library (every file event, native
    writes included; RuntimeError when it cannot be built), ``python`` with
    the Python-level killers (the baselines then have no writes cut in half),
    ``auto`` the library when a C compiler is found (``intercept`` in the
    result says which ran).  ``ranks=2`` runs each child as a DDP job of two
    processes (``hf`` and ``lightning``, shipslog only): the events of each
    rank are kill points (``events`` then lists the counts by rank).
    ``violations`` lists every kill point whose resume failed a requirement;
    ``verdicts`` counts the outcomes.  ``log`` (optional) gets one line per
    kill point as it finishes, so a long sweep shows its progress.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework is one of {FRAMEWORKS}, got {framework!r}")
    if intercept not in INTERCEPTS:
        raise ValueError(f"intercept is one of {INTERCEPTS}, got {intercept!r}")
    if ranks not in (1, 2):
        raise ValueError(f"ranks is 1 or 2, got {ranks!r}")
    if ranks > 1 and (framework not in DISTRIBUTED_FRAMEWORKS or baseline):
        raise ValueError(f"ranks=2 runs shipslog's DDP path of {DISTRIBUTED_FRAMEWORKS}, not {framework!r}"
                         f"{' (baseline)' if baseline else ''}")
    # the real path: the library compares the paths it sees (some through /proc/self/fd) with the roots it is given
    work = os.path.realpath(tempfile.mkdtemp(prefix="shipslog-torture-training-", dir=folder))
    t0 = time.monotonic()
    try:
        library = _libc_kill.build_kill_library(work) if intercept != "python" else None
        if library is None and intercept == "libc":
            raise RuntimeError("intercept='libc': the kill library could not be built (no working C compiler: cc or gcc)")
        if library is None and ranks > 1:
            raise RuntimeError("ranks=2 counts every rank's file events in libc: the kill library could not be built "
                               "(no working C compiler: cc or gcc)")
        if library is None and intercept == "auto":
            _log.warning("no C compiler found: killing through Python-level hooks; native writes are not cut")
        run = _Runner(work, framework, baseline, library, ranks)
        clean = run.child("clean", "before", 0)
        if clean.get("error"):
            raise RuntimeError(f"the uninterrupted training run failed: {clean['error']}")
        by_rank = {"before": clean["events_by_rank"]}
        if not baseline or library is not None:
            writes = run.child("count-writes", "half", 0)
            if writes.get("error"):
                raise RuntimeError(f"the uninterrupted training run (counting writes) failed: {writes['error']}")
            by_rank["half"] = writes["events_by_rank"]
        if not all(all(v) for v in by_rank.values()):
            raise RuntimeError(f"the uninterrupted training run counted no file events ({by_rank}): the killer is not working")
        rng = random.Random(seed)
        planned: list[tuple[str, int, int]] = []
        for mode, totals in by_rank.items():
            points = []
            for rank, total in enumerate(totals):  # a quick run samples every rank's events
                of_rank = list(range(1, total + 1))
                if quick:
                    of_rank = sorted(rng.sample(of_rank, min(sample, total)))
                points += [(rank, point) for point in of_rank]
            planned += [(mode, rank, point) for rank, point in points]
        side = "its own checkpointing" if baseline else "shipslog"
        done = iter(range(1, len(planned) + 1))

        def one(job: tuple[str, int, int]) -> _Outcome:
            outcome = run.kill_and_resume(job[0], job[1], job[2], clean["digest"])
            if log is not None:
                where = f" rank {job[1]}" if ranks > 1 else ""
                log(f"{framework} ({side}):{where} {next(done)}/{len(planned)} {job[0]} #{job[2]}: {outcome.verdict}")
            return outcome

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outcomes = list(pool.map(one, planned))
        verdicts = {v: sum(o.verdict == v for o in outcomes) for v in ("resumed", "failed", "lost-work", "wrong-weights")}
        return {
            "framework": framework,
            "shipslog": not baseline,
            "intercept": "libc" if library is not None else "python",
            "ranks": ranks,
            "quick": quick,
            "seed": seed,
            "steps": _STEPS,
            "save_every": _SAVE_EVERY,
            "events": {mode: totals[0] if ranks == 1 else totals for mode, totals in by_rank.items()},
            "points": len(outcomes),
            "killed": sum(o.killed for o in outcomes),
            "resumed_from_newest": verdicts["resumed"],
            "verdicts": verdicts,
            "violations": [vars(o) for o in outcomes if o.problem],
            "seconds": round(time.monotonic() - t0, 2),
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Runner:
    work: str
    framework: str
    baseline: bool
    library: str | None
    ranks: int = 1

    def kill_and_resume(self, mode: str, rank: int, point: int, digest: str) -> _Outcome:
        slot = f"{mode}-{point:04d}" if self.ranks == 1 else f"{mode}-r{rank}-{point:04d}"
        first = self.child(slot, mode, point, kill_rank=rank, expect_kill=True)
        acked = max((int(line) for name in self._acks(slot) for line in _lines(name)), default=0)
        second = self.child(slot, mode, 0)
        start, newest = second.get("start"), second.get("newest_at_open")
        problems: list[str] = []
        verdict = "resumed"
        if first.get("error"):
            problems.append(f"the run to be killed failed on its own: {first['error']}")
            verdict = "failed"
        if second.get("error"):
            problems.append(f"the resume failed: {second['error']}")
            verdict = "failed"
        else:
            if not self.baseline and start != (newest or 0):
                problems.append(f"resumed at step {start}, but the newest committed checkpoint was at step {newest}")
            if (start or 0) < acked:
                problems.append(f"resumed at step {start}, older than the save at step {acked} that had returned")
                verdict = "lost-work"
            if second.get("digest") != digest or len(set(second.get("digests", [digest]))) != 1:
                problems.append("the final weights differ from an uninterrupted run")
                verdict = "wrong-weights" if verdict == "resumed" else verdict
            if problems and verdict == "resumed":
                verdict = "wrong-weights"
        return _Outcome(mode, point, rank, bool(first.get("killed")), start, newest, acked, verdict, "; ".join(problems))

    def _acks(self, slot: str) -> list[str]:
        return [os.path.join(self.work, slot, "acks" if r == 0 else f"acks-{r}") for r in range(self.ranks)]

    def child(self, slot: str, mode: str, kill_at: int, *, kill_rank: int = 0, expect_kill: bool = False,
              attempt: int = 1) -> dict[str, Any]:
        """Run the training job once (``ranks`` processes), killed at event ``kill_at`` of rank ``kill_rank`` (0: not
        killed); rank 0's result with ``events_by_rank`` and ``digests``, ``{"killed": True}``, or ``{"error": ...}``.

        A DDP job whose rendezvous port was taken meanwhile (another job's
        socket got it first) runs again on another port, from a fresh root
        when it started from one."""
        folder = os.path.join(self.work, slot)
        os.makedirs(folder, exist_ok=True)
        fresh = not os.path.exists(os.path.join(folder, "root"))
        port = _free_port() if self.ranks > 1 else 0
        procs: list[subprocess.Popen[bytes]] = []
        results: list[str] = []
        for rank, acks in enumerate(self._acks(slot)):
            result = os.path.join(folder, f"result-{kill_at}-{rank}.json")
            results.append(result)
            args = [sys.executable, "-m", _MODULE, os.path.join(folder, "root"), "--framework", self.framework, "--mode", mode,
                    "--kill-at", str(kill_at if rank == kill_rank else 0), "--result", result, "--acks", acks, "--rank", str(rank)]
            if self.baseline:
                args.append("--baseline")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPSLOG_CRASH", "SHIPSLOG_KILL"))}
            if self.ranks > 1:
                env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(self.ranks), LOCAL_WORLD_SIZE=str(self.ranks),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0")
            if self.library is not None:
                # the child's temporary files too (Lightning writes each checkpoint to one, then moves it into place)
                env["TMPDIR"] = os.path.join(folder, "tmp" if rank == 0 else f"tmp-{rank}")
                os.makedirs(env["TMPDIR"], exist_ok=True)
                args += ["--intercept", "libc"]
                roots = [os.path.join(folder, "root"), os.path.join(folder, "hf-output"), env["TMPDIR"]]
                env = _libc_kill.kill_library_env(env, self.library, roots, mode, kill_at if rank == kill_rank else 0)
            # cwd: never the caller's folder, where a folder named shipslog would shadow the installed package
            with open(os.path.join(folder, f"stderr-{kill_at}-{rank}.txt"), "w", encoding="utf-8") as err:
                procs.append(subprocess.Popen(args, cwd=self.work, env=env, stdout=subprocess.DEVNULL, stderr=err))
        codes, torn_down = _wait_job(procs)
        stderr = [_tail(os.path.join(folder, f"stderr-{kill_at}-{rank}.txt")) for rank in range(self.ranks)]
        for rank, code in enumerate(codes):
            if rank not in torn_down and aborted_after_result(code, stderr[rank], results[rank]):
                _log.warning("%s: rank %d aborted in torch's teardown after it wrote its result; the result stands", slot, rank)
                codes[rank] = 0
        if codes[kill_rank] == -signal.SIGKILL and expect_kill and kill_rank not in torn_down:
            return {"killed": True}
        if self.ranks > 1 and attempt < 3 and any("address already in use" in e.lower() for e in stderr):
            _log.warning("%s: the rendezvous port was taken; running the job again on another port", slot)
            if fresh:
                for name in os.listdir(folder):
                    path = os.path.join(folder, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
            return self.child(slot, mode, kill_at, kill_rank=kill_rank, expect_kill=expect_kill, attempt=attempt + 1)
        if torn_down:  # a rank hung (or outlived a failed one) and was killed by the harness: never a planned kill
            others = "; ".join(f"rank {r}: {(stderr[r].strip().splitlines() or ['(no output)'])[-1]}"
                               for r, code in enumerate(codes) if r not in torn_down and code != 0)
            why = f"rank(s) {sorted(torn_down)} did not end by themselves and were killed by the harness"
            return {"killed": False, "error": f"{why}{' after ' + others if others else ''}"}
        if any(code != 0 for code in codes) or not all(os.path.exists(r) for r in results):
            bad = next((r for r, code in enumerate(codes) if code != 0 or not os.path.exists(results[r])), 0)
            tail = stderr[bad].strip().splitlines()[-1:] or ["(no output)"]
            where = f"rank {bad}: " if self.ranks > 1 else ""
            if expect_kill:
                return {"killed": False, "error": f"{where}{tail[0]}"}
            wrote = " (its result written)" if os.path.exists(results[bad]) else ""
            return {"error": f"{where}exit {codes[bad]}{wrote}: {tail[0]}"}
        reports = []
        for result in results:
            with open(result, encoding="utf-8") as f:
                reports.append(json.load(f))
        found: dict[str, Any] = dict(reports[0])
        found.update(killed=False, events_by_rank=[r["events"] for r in reports], digests=[r["digest"] for r in reports])
        return found


def _free_port() -> int:
    """A TCP port free on this host now (the rendezvous of a DDP job)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_job(procs: list[subprocess.Popen[bytes]]) -> tuple[list[int], set[int]]:
    """Wait for a job's processes: their exit codes, and the ranks the harness killed.  Once any process ends
    killed by a signal, or failed, the others get :data:`_TEARDOWN_S` to end, then are killed (a scheduler
    tearing the job down); every process still running at the harness's deadline is killed too."""
    killed: set[int] = set()
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    teardown: float | None = None
    while None in [p.poll() for p in procs]:  # every process polled, each time
        now = time.monotonic()
        if teardown is None and any(p.returncode not in (None, 0) for p in procs):
            teardown = now + _TEARDOWN_S
        if now > deadline or (teardown is not None and now > teardown):
            for rank, p in enumerate(procs):
                if p.poll() is None:
                    p.kill()
                    killed.add(rank)
            break
        time.sleep(0.05)
    return [p.wait() for p in procs], killed


def _tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-4000:]


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().split() if line.isdigit()]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
