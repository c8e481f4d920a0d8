"""PyTorch Lightning through shipslog: checkpoints committed by the engine, ``last`` as a pointer, and
``fit(ckpt_path="last")`` resuming from the newest checkpoint that verifies, bit for bit."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from _engine_helpers import open_engine

from shipslog.engine import IntegrityError
from shipslog.gpu.lightning import LAST_POINTER, ShipslogCheckpointIO, ShipslogModelCheckpoint

BATCHES_PER_EPOCH = 4


class _Regression(pl.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.executed = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        self.executed += 1
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.05)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)}

    def train_dataloader(self) -> Any:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(BATCHES_PER_EPOCH * 8, 4, generator=g)
        y = x.sum(dim=1, keepdim=True)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(engine: Any, tmp: str, max_steps: int) -> Any:
    return pl.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp, plugins=[ShipslogCheckpointIO(engine)],
        callbacks=[ShipslogModelCheckpoint(engine, every_n_train_steps=BATCHES_PER_EPOCH, save_top_k=2, monitor="step",
                                           mode="max", save_last=True)],
    )


def _fit(root: str, tmp: str, max_steps: int, ckpt_path: str | None = None) -> tuple[list[Any], int]:
    """Train to ``max_steps``; the final parameters, and how many steps this call ran."""
    model = _Regression()
    with open_engine(root) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and the like
        _trainer(engine, tmp, max_steps).fit(model, ckpt_path=ckpt_path)
    return [p.detach().clone() for p in model.parameters()], model.executed


def test_fit_from_last_resumes_bit_for_bit_from_the_committed_checkpoint(root: str, tmp_path: Any) -> None:
    expected, _ = _fit(os.path.join(str(tmp_path), "other-root"), str(tmp_path), 3 * BATCHES_PER_EPOCH)
    _, ran = _fit(root, str(tmp_path), 2 * BATCHES_PER_EPOCH, ckpt_path="last")  # a fresh root: starts from scratch
    assert ran == 2 * BATCHES_PER_EPOCH
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
        assert e.state.pointers[LAST_POINTER].target == "checkpoints/epoch=1-step=8.ckpt"
    assert not os.path.lexists(os.path.join(root, "checkpoints", "last.ckpt"))  # a pointer, not a file or a link
    resumed, ran = _fit(root, str(tmp_path), 3 * BATCHES_PER_EPOCH, ckpt_path="last")
    assert ran == BATCHES_PER_EPOCH  # from step 8
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))
    with open_engine(root) as e:
        assert sorted(e.state.checkpoints) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]  # top 2, via retention
        assert e.state.pointers[LAST_POINTER].target == "checkpoints/epoch=2-step=12.ckpt"
        assert e.violations == []


def test_last_that_does_not_verify_resumes_from_the_checkpoint_before_it(root: str, tmp_path: Any) -> None:
    expected, _ = _fit(os.path.join(str(tmp_path), "other-root"), str(tmp_path), 3 * BATCHES_PER_EPOCH)
    _fit(root, str(tmp_path), 2 * BATCHES_PER_EPOCH)
    newest = os.path.join(root, "checkpoints", "epoch=1-step=8.ckpt", "lightning.safetensors")
    with open(newest, "r+b") as f:
        f.seek(os.path.getsize(newest) - 1)
        byte = f.read(1)
        f.seek(os.path.getsize(newest) - 1)
        f.write(bytes([byte[0] ^ 1]))
    resumed, ran = _fit(root, str(tmp_path), 3 * BATCHES_PER_EPOCH, ckpt_path="last")
    assert ran == 2 * BATCHES_PER_EPOCH  # from step 4: the checkpoint at step 8 did not verify
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))


def test_sigterm_during_fit_commits_a_final_checkpoint_and_exits_143(root: str, tmp_path: Any) -> None:
    from shipslog.gpu import Preemption
    from shipslog.gpu.lightning import ShipslogPreemption

    class SendTerm(pl.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    model = _Regression()
    with pytest.raises(SystemExit) as caught, open_engine(root) as engine, Preemption(grace_s=30) as preemption, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_steps=3 * BATCHES_PER_EPOCH, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(tmp_path), plugins=[ShipslogCheckpointIO(engine, preemption=preemption)],
            callbacks=[SendTerm(), ShipslogPreemption(preemption),
                       ShipslogModelCheckpoint(engine, every_n_train_steps=BATCHES_PER_EPOCH, save_top_k=-1, save_last=True)],
        )
        trainer.fit(model)
    assert caught.value.code == 128 + signal.SIGTERM
    with open_engine(root) as e:
        assert max(a.step or 0 for a in e.state.checkpoints.values()) == 6
        assert e.state.previous_session is not None and e.state.previous_session.state == "closed"  # closed cleanly
        assert e.violations == []
    _, ran = _fit(root, str(tmp_path), 3 * BATCHES_PER_EPOCH, ckpt_path="last")
    assert ran == 3 * BATCHES_PER_EPOCH - 6


def test_a_checkpoint_io_without_an_engine_refuses_to_save_and_writes_nothing(tmp_path: Any) -> None:
    io = ShipslogCheckpointIO(None)
    with pytest.raises(ValueError, match="has no engine"):
        io.save_checkpoint({"state_dict": {}}, str(tmp_path / "epoch=0-step=1.ckpt"))
    with pytest.raises(ValueError, match="has no engine"):
        io.remove_checkpoint(str(tmp_path / "epoch=0-step=1.ckpt"))
    assert os.listdir(tmp_path) == []


def test_a_process_without_an_engine_loads_the_folder_it_was_sent_verified_against_its_manifest(root: str, tmp_path: Any) -> None:
    with open_engine(root) as engine:
        ShipslogCheckpointIO(engine).save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, "x/epoch=0-step=2.ckpt")
        folder = engine.path("checkpoints", "epoch=0-step=2.ckpt")
    loaded = ShipslogCheckpointIO(None).load_checkpoint(folder)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(3)) and loaded["global_step"] == 2
    tensors = [n for n in os.listdir(folder) if n.endswith(".safetensors")]
    path = Path(folder) / tensors[0]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        ShipslogCheckpointIO(None).load_checkpoint(folder)


def test_preemption_under_ddp_without_the_shipslog_strategy_is_refused_naming_the_strategy() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from shipslog.gpu import Preemption
    from shipslog.gpu.lightning import ShipslogDDPStrategy, ShipslogPreemption

    callback = ShipslogPreemption(Preemption())
    with pytest.raises(ValueError, match="needs ShipslogDDPStrategy, not DDPStrategy"):
        callback.setup(SimpleNamespace(world_size=2, strategy=DDPStrategy()), None, "fit")
    callback.setup(SimpleNamespace(world_size=2, strategy=ShipslogDDPStrategy()), None, "fit")
    assert callback.distributed
    callback.setup(SimpleNamespace(world_size=1, strategy=DDPStrategy()), None, "fit")
    assert not callback.distributed
