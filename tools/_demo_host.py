"""The demo's training host: a small but real training daemon built on the engine.

Run as ``python -m shipslog.tools._demo_host DIR``.  The host:

* opens the engine on ``DIR/host`` (which recovers whatever a crash cut off)
  and appends what recovery found and did to ``DIR/starts.jsonl``;
* starts two supervised **loader workers** (:class:`~shipslog.engine.Supervisor`)
  that turn each JSONL file of ``DIR/inbox`` into a validated float32 array in
  ``DIR/prepared`` (written to a temporary name, fsynced, renamed);
* trains, for each inbox file that no finished run consumed (in name order,
  ``STEPS_PER_FILE`` global steps per file), a **LoRA adapter** (rank
  ``RANK`` on both layers) over a frozen base model, with full-batch AdamW on
  the CPU; every ``CHECKPOINT_EVERY`` steps it journals progress and saves
  adapter + optimizer state through the :class:`~shipslog.gpu.AsyncCheckpointer`
  (training goes on while the checkpoint is written);
* every ``CONSOLIDATE_EVERY`` files **consolidates**: the adapter of the
  newest checkpoint is saved as ``adapters/lora-<step>``, merged into the
  base as ``models/base-<step>``, the ``current`` pointer moved to it, and
  training goes on with a fresh adapter on the merged base (the merged model
  computes the same function, so the loss curve is continuous);
* keeps the newest ``KEEP_CHECKPOINTS`` checkpoints and ``KEEP_MODELS``
  models (never the pointer's target).

Everything it resumes from is derived from the journal: the base is what
``current`` names, the adapter and optimizer state come from the newest
committed checkpoint when that checkpoint was trained on the same base, and
each file's target step follows from its place in the inbox.  So a crash at
any point loses no committed learning, and the steps redone after one
reproduce the same losses.  Each step's loss goes to ``DIR/loss.tsv``
(global step, loss, process id).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    import shipslog
    from shipslog.engine import ArtifactInfo, Supervisor

__all__ = [
    "ALPHA",
    "CHECKPOINT_EVERY",
    "CONSOLIDATE_EVERY",
    "FEATURES",
    "HIDDEN",
    "KEEP_CHECKPOINTS",
    "KEEP_MODELS",
    "LOADERS",
    "RANK",
    "STEPS_PER_FILE",
    "main",
    "prepare_inbox",
    "train",
]

_log = logging.getLogger("shipslog.demo")

FEATURES = 8
HIDDEN = 32
RANK = 4
ALPHA = 8.0
STEPS_PER_FILE = 200
CHECKPOINT_EVERY = 50
CONSOLIDATE_EVERY = 2
KEEP_CHECKPOINTS = 3
KEEP_MODELS = 2
LOADERS = 2
LEARNING_RATE = 0.01
POINTER = "current"
BASE_MODEL = "base-0"
_PREPARED_WAIT_S = 120.0
_LOADER_TARGET = "shipslog.tools._demo_host:prepare_inbox"
"""By name: this module runs as ``__main__`` in the host process."""


# -- the loader workers (numpy only: no torch in these processes) ---------------------------


class DemoDataError(ValueError):
    """A data file of the inbox that is not rows of ``{"x": [FEATURES numbers], "y": number}``."""


def _prepared_path(folder: str, name: str) -> str:
    return os.path.join(folder, "prepared", name.removesuffix(".jsonl") + ".npy")


def _parse(path: str) -> Any:
    import msgspec
    import numpy as np

    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = msgspec.json.decode(line)
                x, y = row["x"], row["y"]
                if len(x) != FEATURES:
                    raise ValueError(f"x has {len(x)} numbers")
                rows.append([*map(float, x), float(y)])
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                raise DemoDataError(
                    f"{path} line {number}: expected {{\"x\": [{FEATURES} numbers], \"y\": number}}, found {line[:60]!r} ({exc})"
                ) from None
    if not rows:
        raise DemoDataError(f"{path}: expected rows of training data, found an empty file")
    return np.asarray(rows, dtype=np.float32)


def _prepare(folder: str, name: str) -> None:
    """Parse and validate one inbox file whole; write it as float32 ``.npy``: temporary name, fsync, rename, folder fsync."""
    import numpy as np

    final = _prepared_path(folder, name)
    data = _parse(os.path.join(folder, "inbox", name))
    tmp = f"{final}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, data, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dfd = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def prepare_inbox(folder: str, shard: str, shards: str, interval: str = "0.05", idle_exit: str = "60") -> int:
    """Loader worker: prepare every inbox file of this shard as it appears, until stopped (SIGTERM).

    It also ends by itself (exit 0) after ``idle_exit`` seconds without a new
    file, so a loader whose host was killed and never restarted does not run forever.

    A prepared file is complete or absent whatever happens (see
    :func:`_prepare`); temporary files an earlier incarnation left are
    removed first (the supervisor runs one incarnation of a shard at a time).
    A file that is not valid data ends the worker with an error, so the
    supervisor journals the failure and restarts it within its budget.
    """
    index, count, pause, idle = int(shard), int(shards), float(interval), float(idle_exit)
    last_work = time.monotonic()
    out = os.path.join(folder, "prepared")
    os.makedirs(out, exist_ok=True)
    first = True
    while True:
        mine = [name for i, name in enumerate(sorted(os.listdir(os.path.join(folder, "inbox")))) if i % count == index]
        if first:
            prefixes = tuple(os.path.basename(_prepared_path(folder, name)) + "." for name in mine)
            for leftover in os.listdir(out):
                if leftover.endswith(".tmp") and leftover.startswith(prefixes):
                    os.unlink(os.path.join(out, leftover))
            first = False
        for name in mine:
            if not os.path.exists(_prepared_path(folder, name)):
                _prepare(folder, name)
                last_work = time.monotonic()
        if time.monotonic() - last_work > idle:
            return 0
        time.sleep(pause)


def _wait_prepared(folder: str, name: str, supervisor: Supervisor) -> Any:
    import numpy as np

    from shipslog.engine import Health

    path = _prepared_path(folder, name)
    deadline = time.monotonic() + _PREPARED_WAIT_S
    while not os.path.exists(path):
        if supervisor.health is Health.FAILED:
            failed = [f"{w.name} ({w.restarts} restarts, last {w.last_exit})" for w in supervisor.workers().values() if w.health is Health.FAILED]
            raise RuntimeError(f"a loader worker failed before {name} was prepared: {', '.join(failed)}; its error is in this log above")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not prepared within {_PREPARED_WAIT_S:.0f} s")
        time.sleep(0.01)
    return np.load(path, allow_pickle=False)


# -- the model: a frozen base with a LoRA adapter on both layers --------------------------------


def _modules() -> dict[str, tuple[int, int]]:
    """Module name -> (out features, in features) of the base model."""
    return {"hidden": (HIDDEN, FEATURES), "out": (1, HIDDEN)}


def _base_state() -> dict[str, torch.Tensor]:
    """The initial base model (seeded)."""
    import torch

    g = torch.Generator().manual_seed(0)
    state = {}
    for module, (n_out, n_in) in _modules().items():
        bound = 1 / math.sqrt(n_in)
        state[f"{module}.weight"] = (torch.rand(n_out, n_in, generator=g) * 2 - 1) * bound
        state[f"{module}.bias"] = (torch.rand(n_out, generator=g) * 2 - 1) * bound
    return state


def _fresh_adapter(seed: int) -> dict[str, torch.Tensor]:
    """A new adapter: A random (seeded), B zero, so it starts as the identity change."""
    import torch

    g = torch.Generator().manual_seed(seed)
    adapter = {}
    for module, (n_out, n_in) in _modules().items():
        adapter[f"{module}.lora_A.weight"] = torch.randn(RANK, n_in, generator=g) / math.sqrt(n_in)
        adapter[f"{module}.lora_B.weight"] = torch.zeros(n_out, RANK)
    return adapter


class _Model:
    """``out(tanh(hidden(x)))`` with ``W x + b + (alpha / r) * B A x`` in each layer; only A and B train."""

    def __init__(self, base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor]) -> None:
        import torch

        self.base = {k: v.clone() for k, v in base.items()}
        self.adapter = {k: torch.nn.Parameter(v.clone()) for k, v in adapter.items()}
        self.scale = ALPHA / RANK

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.adapter.values())

    def _layer(self, module: str, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        a, b = self.adapter[f"{module}.lora_A.weight"], self.adapter[f"{module}.lora_B.weight"]
        return F.linear(x, self.base[f"{module}.weight"], self.base[f"{module}.bias"]) + self.scale * F.linear(F.linear(x, a), b)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return self._layer("out", torch.tanh(self._layer("hidden", x)))

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.adapter.items()}


# -- the host -----------------------------------------------------------------------------------


def _model_files(folder: str) -> Any:
    from shipslog.engine import read_manifest

    return [e for e in read_manifest(folder).files if e.path.startswith("model")]


def _install_base(engine: shipslog.Engine) -> None:
    """Save the initial base model and point ``current`` at it, unless the journal says that was done."""
    from shipslog.gpu import save_state_dict

    if BASE_MODEL not in engine.state.models and POINTER not in engine.state.pointers:
        with engine.save_model(BASE_MODEL, meta={"step": 0}) as ck:
            for entry in save_state_dict(_base_state(), ck.path, prefix="model"):
                ck.add_file(entry)
            ck.write_json("config.json", {"features": FEATURES, "hidden": HIDDEN})
    if POINTER not in engine.state.pointers:
        engine.set_pointer(POINTER, f"models/{BASE_MODEL}")


def _consolidate_if_due(engine: shipslog.Engine, latest: ArtifactInfo | None) -> bool:
    """Merge the adapter of ``latest`` (the newest committed checkpoint) into the current base when its step ends a consolidation period.

    Idempotent and derived from the journal: due when the newest committed
    checkpoint's step is a multiple of ``CONSOLIDATE_EVERY * STEPS_PER_FILE``
    and ``models/base-<step>`` does not exist.  A consolidation a crash cut
    off was finished or rolled back by recovery; one rolled back is done again here.
    """
    from shipslog.gpu import ADAPTER_CONFIG_NAME, PEFT_PREFIX, load_state_dict, save_state_dict

    if latest is None or latest.step is None or latest.step == 0 or latest.step % (CONSOLIDATE_EVERY * STEPS_PER_FILE):
        return False
    into = f"base-{latest.step}"
    if into in engine.state.models:
        return False
    base = os.path.basename(engine.state.pointers[POINTER].target)
    if latest.meta.get("base") != base:
        raise RuntimeError(f"checkpoint {latest.name} was trained on {latest.meta.get('base')!r}, but {POINTER} names {base!r}")
    adapter = f"lora-{latest.step}"
    if adapter not in engine.state.adapters:
        folder = engine.path(latest.path)
        trained = load_state_dict(folder, entries=_model_files(folder))["adapter"]
        with engine.save_adapter(adapter, meta={"step": latest.step, "base": base}) as ck:
            for entry in save_state_dict({PEFT_PREFIX + k: v for k, v in trained.items()}, ck.path, prefix="adapter_model"):
                ck.add_file(entry)
            ck.write_json(ADAPTER_CONFIG_NAME, {"r": RANK, "lora_alpha": ALPHA, "target_modules": sorted(_modules())})
    merged = engine.consolidate(base=base, adapter=adapter, into=into, pointer=POINTER)
    _log.info("merged %s into %s as %s; %s -> %s", adapter, base, merged.path, POINTER, merged.path)
    return True


def _load_model(engine: shipslog.Engine, latest: ArtifactInfo | None) -> tuple[_Model, Any, str]:
    """The model to train: the base ``current`` names, with the adapter of ``latest`` (the newest committed checkpoint) when it was trained on it."""
    import torch

    from shipslog.gpu import load_state_dict

    target = engine.state.pointers[POINTER].target
    base_name = os.path.basename(target)
    folder = engine.path(target)
    base = load_state_dict(folder, entries=_model_files(folder), prefix="model")
    if latest is not None and latest.meta.get("base") == base_name:
        ck_folder = engine.path(latest.path)
        saved = load_state_dict(ck_folder, entries=_model_files(ck_folder))
        model = _Model(base, saved["adapter"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        optimizer.load_state_dict(saved["optimizer"])
        _log.info("resumed the adapter of %s (step %d) on %s", latest.path, latest.step, target)
    else:
        step = (latest.step or 0) if latest is not None else 0
        model = _Model(base, _fresh_adapter(step))
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        _log.info("a fresh adapter on %s at step %d", target, step)
    return model, optimizer, base_name


def _record_start(folder: str, engine: shipslog.Engine) -> None:
    report = engine.recovery
    line = {
        "pid": os.getpid(),
        "seq": engine.state.seq,
        "found": list(report.found),
        "did": [{"target": r.action.target, "action": r.action.kind, "outcome": r.outcome} for r in report.results],
        "quarantined": list(report.quarantined),
    }
    with open(os.path.join(folder, "starts.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train(folder: str) -> int:
    """Train over every unconsumed inbox file of ``folder``; return the global step reached."""
    import torch

    import shipslog
    from shipslog.engine import Supervisor, WorkerSpec
    from shipslog.gpu import AsyncCheckpointer

    torch.set_num_threads(1)  # the same arithmetic in every process: redone steps give the same losses
    inbox = os.path.join(folder, "inbox")
    names = sorted(os.listdir(inbox))
    loaders = [
        WorkerSpec.python(f"loader-{i}", _LOADER_TARGET, args=[folder, str(i), str(LOADERS)], restart="on-failure", max_restarts=3, stop_timeout=2.0)
        for i in range(LOADERS)
    ]
    with shipslog.Engine.open(os.path.join(folder, "host")) as engine:
        _record_start(folder, engine)
        with Supervisor(engine, loaders, seed=0) as supervisor, AsyncCheckpointer(engine, pin_memory=False) as saver:
            _install_base(engine)
            latest = engine.latest_checkpoint(deep=True)
            _consolidate_if_due(engine, latest)
            model, optimizer, base_name = _load_model(engine, latest)
            done = {os.path.basename(r.data_file) for r in engine.state.runs.values() if r.state == "finished"}
            step = engine.state.global_step
            for index, name in enumerate(names):
                if name in done:
                    continue
                data = torch.from_numpy(_wait_prepared(folder, name, supervisor))
                x, y = data[:, :FEATURES], data[:, FEATURES:]
                target = (index + 1) * STEPS_PER_FILE
                with engine.run(os.path.join(inbox, name), required_fields=["x", "y"]) as run:
                    step = run.start_step
                    with open(os.path.join(folder, "loss.tsv"), "a", encoding="utf-8") as losses:
                        while step < target:
                            optimizer.zero_grad()
                            loss = torch.nn.functional.mse_loss(model(x), y)
                            torch.autograd.backward(loss)  # loss.backward(), which is untyped
                            optimizer.step()
                            step += 1
                            losses.write(f"{step}\t{loss.item():.6f}\t{os.getpid()}\n")
                            losses.flush()
                            if step % CHECKPOINT_EVERY == 0:
                                run.progress(step)
                                state = {"adapter": model.adapter_state(), "optimizer": optimizer.state_dict()}
                                saver.save(f"step-{step}", state, step=step, meta={"base": base_name, "loss": round(loss.item(), 6)})
                    saver.wait()
                    run.finish(step)
                latest = engine.latest_checkpoint(deep=True)
                if _consolidate_if_due(engine, latest):
                    model, optimizer, base_name = _load_model(engine, latest)
                engine.retain(keep_last=KEEP_CHECKPOINTS, keep_models=KEEP_MODELS)
    return step


def main(argv: list[str] | None = None) -> int:
    """Entry point of the demo host process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m shipslog.tools._demo_host DIR\n")
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="host[%(process)d] %(name)s: %(message)s")
    step = train(args[0])
    _log.info("inbox done at global step %d", step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
