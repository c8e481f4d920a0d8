"""Preemption in a distributed run: a SIGTERM to one of two gloo ranks stops both at the same step, and the final
save runs on both or on neither (``Preemption.agree``); the plain loop, the HF Trainer and Lightning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from _engine_helpers import open_engine

from shipslog.gpu import Preemption
from shipslog.tools import aborted_after_result

# Every child ends the same way: the process group is torn down on every rank (after a barrier, so no rank leaves
# while a peer's gloo threads still talk to it), then its report is written with the exit code the Preemption block
# chose, and that code is the process's.  A rank that torch's teardown aborts after its report (SIGABRT) is taken at
# its report, as the training kill harness does (see shipslog.tools.aborted_after_result).
_END = r'''
def _end(code, out, report):
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump({**report, "exit": code}, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
'''

PLAIN = r'''
import datetime, json, os, signal, sys
import torch
import torch.distributed as dist
import shipslog
from shipslog.gpu import Preemption
from shipslog.gpu.distributed import save_distributed
''' + _END + r'''
root, store, out, rank, grace = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
# a short collective timeout: ranks that fall out of step fail in a minute instead of hanging
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
torch.manual_seed(1)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
steps, saved = [], []
code = 0
try:
    with (shipslog.Engine.open(root, segment_bytes=1 << 20) if rank == 0 else open(os.devnull)) as handle, \
            Preemption(grace_s=grace) as preemption:
        engine = handle if rank == 0 else None

        def save(step):
            save_distributed(engine, {"model": model.state_dict()}, step=step)
            saved.append(step)

        for step in range(1, 1000):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append(step)
            if rank == 1 and step == 7:
                os.kill(os.getpid(), signal.SIGTERM)  # the scheduler reclaims this rank's machine only
            if step % 5 == 0:
                preemption.timed(lambda: save(step))
            elif preemption.agree():
                preemption.final_save(lambda: save(step))
            if preemption.requested:
                break
except SystemExit as exc:
    code = exc.code
_end(code, out, {"stopped_at": steps[-1], "saved": saved, "final_saved": preemption.final_saved, "signum": preemption.signum})
'''

HF = r'''
import json, os, signal, sys, warnings
import torch
import transformers
import shipslog
from shipslog.gpu import Preemption
from shipslog.gpu.hf import ShipslogTrainer
''' + _END + r'''
root, out, rank, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


class SendTerm(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if rank == 1 and state.global_step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # process 1 only
        return control


torch.manual_seed(1)
model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
rows = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(3))
data = [{"input_ids": r, "labels": r} for r in rows]
args = transformers.TrainingArguments(
    output_dir=os.path.join(os.path.dirname(root), "hf-output"), max_steps=steps, save_steps=4, save_total_limit=3,
    per_device_train_batch_size=4, report_to=[], use_cpu=True, seed=0, logging_steps=1000, disable_tqdm=True,
    lr_scheduler_type="constant", ddp_timeout=60,
)
code = 0
trainer = None
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        with (shipslog.Engine.open(root, segment_bytes=1 << 20) if rank == 0 else open(os.devnull)) as handle, \
                Preemption(grace_s=60) as preemption:
            trainer = ShipslogTrainer(handle if rank == 0 else None, model=model, args=args, train_dataset=data,
                                      callbacks=[SendTerm()], preemption=preemption)
            trainer.train(resume_from_checkpoint=True)
    except SystemExit as exc:
        code = exc.code
resumed = trainer.resumed_from.step if trainer is not None and trainer.resumed_from is not None else None
_end(code, out, {"global_step": trainer.state.global_step, "resumed_from": resumed,
                 "final_saved": preemption.final_saved, "signum": preemption.signum})
'''

LIGHTNING = r'''
import datetime, json, os, signal, sys, warnings
import torch
import lightning.pytorch as pl
import shipslog
from shipslog.gpu import Preemption
from shipslog.gpu.lightning import ShipslogCheckpointIO, ShipslogDDPStrategy, ShipslogModelCheckpoint, ShipslogPreemption
''' + _END + r'''
root, out, rank, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.layer = torch.nn.Linear(8, 1)
        self.first_step = None

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = int(self.global_step)
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)


class SendTerm(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if rank == 1 and trainer.global_step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # process 1 only


model = Regression()
code = 0
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        with (shipslog.Engine.open(root, segment_bytes=1 << 20) if rank == 0 else open(os.devnull)) as handle, \
                Preemption(grace_s=60) as preemption:
            engine = handle if rank == 0 else None
            trainer = pl.Trainer(
                max_steps=steps, accelerator="cpu", devices=2, strategy=ShipslogDDPStrategy(timeout=datetime.timedelta(seconds=60)),
                logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=os.path.dirname(root),
                plugins=[ShipslogCheckpointIO(engine, preemption=preemption)],
                callbacks=[SendTerm(), ShipslogPreemption(preemption),
                           ShipslogModelCheckpoint(engine, every_n_train_steps=4, save_top_k=-1, save_last=True)],
            )
            trainer.fit(model, ckpt_path="last")
    except SystemExit as exc:
        code = exc.code
_end(code, out, {"global_step": int(trainer.global_step), "first_step": model.first_step,
                 "final_saved": preemption.final_saved, "signum": preemption.signum})
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Ran = list[tuple[int, dict[str, Any], str]]
"""Per rank: its exit code, its report and its stderr."""


def _start_ranks(tmp_path: Path, argv_of: Any, env_of: Any = None) -> list[tuple[int, dict[str, Any] | None, str]]:
    """Start both ranks (``argv_of(rank, out)``) and wait for both; per rank its exit code, report (None when it
    wrote none) and stderr."""
    procs, outs = [], []
    for rank in (0, 1):
        out = tmp_path / f"out-{rank}.json"
        out.unlink(missing_ok=True)  # an earlier job's report is never taken for this one's
        outs.append(out)
        env = {**os.environ, **(env_of(rank) if env_of is not None else {})}
        procs.append(subprocess.Popen([sys.executable, "-c", *argv_of(rank, str(out))], cwd=tmp_path, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    ended: list[tuple[int, dict[str, Any] | None, str]] = []
    for p, out, err in zip(procs, outs, errs):
        report = json.loads(out.read_text(encoding="utf-8")) if out.exists() else None
        chosen = report.pop("exit") if report is not None else None
        ended.append((chosen if aborted_after_result(p.returncode, err, str(out)) else p.returncode, report, err))
    return ended


def _reported(results: list[tuple[int, dict[str, Any] | None, str]]) -> Ran:
    ran: Ran = []
    for code, report, err in results:
        assert report is not None, f"exit {code}: {err[-3000:]}"
        ran.append((code, report, err))
    return ran


def _ddp_job(tmp_path: Path, script: str, root: Path, steps: int) -> Ran:
    """A two-process job of a framework's script (``root``, report, rank, ``steps``), rendezvous by environment; run
    again on another port when the one chosen was taken before rank 0 could listen on it."""
    for _attempt in range(3):
        port = str(_free_port())
        results = _start_ranks(
            tmp_path, lambda rank, out: [script, str(root), out, str(rank), str(steps)],
            lambda rank, port=port: {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": "0"},
        )
        if not any("address already in use" in err.lower() for _code, _report, err in results):
            break
    return _reported(results)


def _plain(tmp_path: Path, graces: tuple[float, float]) -> Ran:
    root, store = tmp_path / "root", tmp_path / "store"
    return _reported(_start_ranks(tmp_path, lambda rank, out: [PLAIN, str(root), str(store), out, str(rank), str(graces[rank])]))


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_sigterm_to_one_rank_stops_both_at_its_step_with_one_final_checkpoint(tmp_path: Path) -> None:
    results = _plain(tmp_path, (30.0, 30.0))
    for code, report, err in results:
        assert code == 128 + signal.SIGTERM, err[-3000:]
        assert report == {"stopped_at": 7, "saved": [5, 7], "final_saved": True, "signum": signal.SIGTERM}
    with open_engine(tmp_path / "root") as e:
        assert sorted(e.state.checkpoints) == ["step-5", "step-7"]
        assert e.state.checkpoints["step-7"].step == 7
        assert e.violations == []


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_a_final_save_that_does_not_fit_on_one_rank_runs_on_neither(tmp_path: Path) -> None:
    results = _plain(tmp_path, (30.0, 0.0))  # rank 1's grace period is already over when its signal arrives
    for code, report, err in results:
        assert code == 128 + signal.SIGTERM, err[-3000:]
        assert report == {"stopped_at": 7, "saved": [5], "final_saved": False, "signum": signal.SIGTERM}
    with open_engine(tmp_path / "root") as e:
        assert sorted(e.state.checkpoints) == ["step-5"]
        assert e.violations == []


def test_agree_outside_a_distributed_run_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"needs an initialized torch\.distributed process group"):
        Preemption().agree()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(400)
def test_a_sigterm_to_one_hf_process_stops_both_at_its_step_with_a_final_checkpoint_and_the_resume_starts_there(
    tmp_path: Path,
) -> None:
    pytest.importorskip("transformers")
    root = tmp_path / "root"

    for code, report, err in _ddp_job(tmp_path, HF, root, 12):
        assert code == 128 + signal.SIGTERM, err[-3000:]
        assert report == {"global_step": 6, "resumed_from": None, "final_saved": True, "signum": signal.SIGTERM}
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["checkpoint-4", "checkpoint-6"]
        assert e.violations == []
    for code, report, err in _ddp_job(tmp_path, HF, root, 8):  # the resume, to the end (no signal: step 6 is behind)
        assert code == 0, err[-3000:]
        assert report == {"global_step": 8, "resumed_from": 6, "final_saved": False, "signum": None}


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(400)
def test_a_sigterm_to_one_lightning_process_stops_both_at_its_batch_with_a_final_checkpoint_and_the_resume_starts_there(
    tmp_path: Path,
) -> None:
    pytest.importorskip("lightning")
    root = tmp_path / "root"

    for code, report, err in _ddp_job(tmp_path, LIGHTNING, root, 12):
        assert code == 128 + signal.SIGTERM, err[-3000:]
        assert report == {"global_step": 6, "first_step": 0, "final_saved": True, "signum": signal.SIGTERM}
    with open_engine(root) as e:
        assert max(a.step or 0 for a in e.state.checkpoints.values()) == 6
        assert e.violations == []
    for code, report, err in _ddp_job(tmp_path, LIGHTNING, root, 8):
        assert code == 0, err[-3000:]
        assert report == {"global_step": 8, "first_step": 6, "final_saved": False, "signum": None}
