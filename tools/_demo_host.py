"""The demo's training host: a small but real training daemon built on the engine.

Run as ``python -m shipslog.tools._demo_host DIR``.  For each JSONL file in
``DIR/inbox`` (in name order) that no finished run has consumed, it validates
the file through ``engine.run``, trains a small torch regression model on the
CPU, journals progress, checkpoints model + optimizer state through the
:class:`~shipslog.gpu.AsyncCheckpointer` every ``CHECKPOINT_EVERY`` steps,
moves the ``current`` pointer to the newest checkpoint and keeps the last
three.  On start it resumes from the newest committed checkpoint (weights,
optimizer state, global step), so a crash loses no committed learning.  Each
step's loss goes to ``DIR/loss.tsv`` (global step, loss, process id).
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["CHECKPOINT_EVERY", "STEPS_PER_FILE", "main", "train"]

_log = logging.getLogger("shipslog.demo")

STEPS_PER_FILE = 200
CHECKPOINT_EVERY = 50
FEATURES = 8


def _model_and_optimizer() -> tuple[object, object]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, optimizer


def _load_batch(path: str) -> tuple[object, object]:
    import msgspec
    import torch

    xs, ys = [], []
    with open(path, "rb") as f:
        for line in f:
            row = msgspec.json.decode(line)
            xs.append(row["x"])
            ys.append([row["y"]])
    return torch.tensor(xs, dtype=torch.float32), torch.tensor(ys, dtype=torch.float32)


def train(root: str) -> int:
    """Train over every unconsumed inbox file; return the global step reached."""
    import torch

    import shipslog
    from shipslog.gpu import AsyncCheckpointer, load_state_dict
    from shipslog.engine import read_manifest

    model, optimizer = _model_and_optimizer()
    inbox = os.path.join(root, "inbox")
    with shipslog.Engine.open(os.path.join(root, "host")) as engine, AsyncCheckpointer(engine, pin_memory=False) as saver:
        latest = engine.latest_checkpoint(deep=True)
        if latest is not None:
            folder = engine.path(latest.path)
            state = load_state_dict(folder, entries=read_manifest(folder).files)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _log.info("resumed from %s at global step %d", latest.path, latest.step)
        done = {os.path.basename(r.data_file) for r in engine.state.runs.values() if r.state == "finished"}
        step = engine.state.global_step
        for name in sorted(os.listdir(inbox)):
            if name in done:
                continue
            x, y = _load_batch(os.path.join(inbox, name))
            with engine.run(os.path.join(inbox, name), required_fields=["x", "y"]) as run:
                step = run.start_step
                first = (step // STEPS_PER_FILE) * STEPS_PER_FILE
                target = first + STEPS_PER_FILE if step < first + STEPS_PER_FILE else step
                with open(os.path.join(root, "loss.tsv"), "a", encoding="utf-8") as losses:
                    while step < target:
                        optimizer.zero_grad()
                        loss = torch.nn.functional.mse_loss(model(x), y)
                        loss.backward()
                        optimizer.step()
                        step += 1
                        losses.write(f"{step}\t{loss.item():.6f}\t{os.getpid()}\n")
                        losses.flush()
                        if step % CHECKPOINT_EVERY == 0:
                            run.progress(step)
                            saver.save(f"step-{step}", {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, step)
                            info = saver.wait()
                            if info is not None:
                                engine.set_pointer("current", info.path)
                                engine.retain(keep_last=3)
                run.finish(step)
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
