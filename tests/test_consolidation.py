"""The consolidation operation: merge an adapter into its base, install, point, and only then retire the adapter.

Crashes are simulated in-process at every consolidation crash point (the file system refuses every effect
after the crash), then the root is re-opened: recovery must leave the adapter or a committed merge of it,
every pointer verifying, and nothing to do on a second open.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from _engine_helpers import crash, journal_records, kind_of  # noqa: E402

from shipslog import Engine  # noqa: E402
from shipslog.engine import ConflictError, NotFoundError  # noqa: E402
from shipslog.gpu import NonFiniteError, load_state_dict, save_state_dict  # noqa: E402
from shipslog.journal import FileSystem, registered_crash_points, set_crash_hook  # noqa: E402
from shipslog.recovery import check_invariants, list_root, plan  # noqa: E402

R, ALPHA = 4, 8


def _tensors(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.q_proj.weight": torch.randn(16, 12, generator=g),
        "layers.0.k_proj.weight": torch.randn(16, 12, generator=g),
        "norm.weight": torch.ones(12),
    }


def _adapter(seed: int, *, nan: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(R, 12, generator=g)
    b = torch.randn(16, R, generator=g)
    if nan:
        b[0, 0] = float("nan")
    return {"base_model.model.layers.0.q_proj.lora_A.weight": a, "base_model.model.layers.0.q_proj.lora_B.weight": b}


def _install(engine: Engine, *, nan: bool = False) -> None:
    with engine.save_model("base") as ck:
        for entry in save_state_dict(_tensors(0), ck.path, prefix="model"):
            ck.add_file(entry)
        ck.write_json("config.json", {"hidden": 12})
    with engine.save_adapter("lora-1") as ck:
        for entry in save_state_dict(_adapter(1, nan=nan), ck.path, prefix="adapter_model"):
            ck.add_file(entry)
        ck.write_json("adapter_config.json", {"r": R, "lora_alpha": ALPHA, "target_modules": ["q_proj"]})


class _Dead(Exception):
    pass


class _Freezable(FileSystem):
    """The real primitives until ``dead``; then every effect raises (a crashed process does nothing more)."""

    def __init__(self) -> None:
        super().__init__(sync=False)
        self.dead = False

    def _check(self) -> None:
        if self.dead:
            raise _Dead("the process is dead")

    def open(self, path: Any, flags: int, mode: int = 0o644) -> int:
        self._check()
        return super().open(path, flags, mode)

    def write_all(self, fd: int, data: Any, offset: int | None = None) -> None:
        self._check()
        super().write_all(fd, data, offset)

    def replace(self, src: Any, dst: Any) -> None:
        self._check()
        super().replace(src, dst)

    def mkdir(self, path: Any) -> None:
        self._check()
        super().mkdir(path)

    def unlink(self, path: Any) -> None:
        self._check()
        super().unlink(path)

    def rmdir(self, path: Any) -> None:
        self._check()
        super().rmdir(path)


def test_consolidation_installs_points_and_retires_the_adapter_last(root: str) -> None:
    with Engine.open(root, fsync=False) as e:
        _install(e)
        merged = e.consolidate(base="base", adapter="lora-1", into="merged-1", pointer="current")
        assert merged.path == "models/merged-1" and merged.meta["merged_from"] == {"base": "models/base", "adapter": "adapters/lora-1"}
        assert e.pointer("current") == os.path.join(root, "models", "merged-1")
        assert "lora-1" not in e.state.adapters and list(e.state.retired.values()) == ["models/merged-1"]
        plan_ = e.retain(keep_last=1, dry_run=True)
        assert plan_.delete == list(e.state.retired)
    kinds = [kind_of(r.event) for r in journal_records(root) if kind_of(r.event).startswith("consolidation.")]
    assert kinds == ["consolidation.begun", "consolidation.merged", "consolidation.installed", "consolidation.pointer-set",
                     "consolidation.adapter-retired", "consolidation.committed"]
    state = load_state_dict(os.path.join(root, "models", "merged-1"))
    base, adapter = _tensors(0), _adapter(1)
    expected = (base["layers.0.q_proj.weight"].double() + (ALPHA / R) * adapter["base_model.model.layers.0.q_proj.lora_B.weight"].double()
                @ adapter["base_model.model.layers.0.q_proj.lora_A.weight"].double()).float()
    assert torch.allclose(state["layers.0.q_proj.weight"], expected, atol=1e-5)
    assert torch.equal(state["layers.0.k_proj.weight"], base["layers.0.k_proj.weight"])
    with open(os.path.join(root, "models", "merged-1", "config.json"), encoding="utf-8") as f:
        assert json.load(f) == {"hidden": 12}
    assert os.listdir(os.path.join(root, "adapters")) == [] and len(os.listdir(os.path.join(root, "retired"))) == 1


def test_a_merge_producing_nan_aborts_with_the_adapter_and_pointer_untouched(root: str) -> None:
    with Engine.open(root, fsync=False) as e:
        _install(e, nan=True)
        e.set_pointer("current", "models/base")
        with pytest.raises(NonFiniteError):
            e.consolidate(base="base", adapter="lora-1", into="merged-1", pointer="current")
        assert "lora-1" in e.state.adapters and "merged-1" not in e.state.models
        assert e.state.pointers["current"].target == "models/base"
    assert not os.path.exists(os.path.join(root, "models", "merged-1"))
    assert os.listdir(os.path.join(root, "staging")) == []
    assert [kind_of(r.event) for r in journal_records(root)].count("consolidation.aborted") == 1


def test_consolidation_is_refused_while_a_run_is_in_progress_and_for_unknown_names(root: str, tmp_path: Any) -> None:
    data = os.path.join(tmp_path, "d.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.write('{"x": 1}\n')
    with Engine.open(root, fsync=False) as e:
        _install(e)
        with pytest.raises(NotFoundError):
            e.consolidate(base="nope", adapter="lora-1", into="m", pointer="current")
        with e.run(data), pytest.raises(ConflictError, match="run "):
            e.consolidate(base="base", adapter="lora-1", into="m", pointer="current")
        assert "lora-1" in e.state.adapters


CONSOLIDATION_POINTS = sorted(p for p in registered_crash_points() if p.startswith("consolidation."))


@pytest.mark.parametrize("point", CONSOLIDATION_POINTS)
def test_a_crash_at_each_consolidation_point_is_recovered_without_losing_the_adapter(root: str, point: str) -> None:
    fs = _Freezable()
    e = Engine.open(root, fs=fs)
    _install(e)

    def hook(name: str) -> None:
        if name == point:
            fs.dead = True
            raise _Dead(name)

    previous = set_crash_hook(hook)
    try:
        with pytest.raises(_Dead):
            e.consolidate(base="base", adapter="lora-1", into="merged-1", pointer="current")
    finally:
        set_crash_hook(previous)
    fs.dead = False  # the kernel releases a dead process's lock: what dropping the engine stands for
    crash(e)
    with Engine.open(root, fsync=False) as again:
        assert again.violations == []
        st = again.state
        assert check_invariants(root, st, live_session=again.session, deep=True) == []
        assert "lora-1" in st.adapters or ("merged-1" in st.models and st.pointers["current"].target == "models/merged-1")
        assert [op for op in st.ops.values() if op.type == "consolidation"] == []
    with Engine.open(root, fsync=False) as third:
        assert third.recovery.found == []
        assert [a for a in plan(third.state, list_root(root)) if a.target != f"session-{third.session}"] == []
