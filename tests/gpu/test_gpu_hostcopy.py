"""Device-to-host snapshots into reused host buffers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from shipslog.gpu import HostSnapshot, StateDictError


def test_cpu_buffers_are_reused_and_hold_the_values_at_snapshot_time() -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(8, 4), "b": torch.randn(4)}
    snap = HostSnapshot()
    first = snap.take(state)
    ptrs = {k: v.data_ptr() for k, v in first.items()}
    assert snap.allocations == 2
    assert torch.equal(first["w"], state["w"]) and first["w"].data_ptr() != state["w"].data_ptr()

    state["w"].add_(1.0)
    expected = state["w"].clone()
    second = snap.take(state)
    assert {k: v.data_ptr() for k, v in second.items()} == ptrs
    assert snap.allocations == 2
    state["w"].mul_(0.0)  # later training steps do not reach the snapshot
    assert torch.equal(second["w"], expected)
    assert snap.bytes_copied == (32 + 4) * 4


def test_changed_shape_gets_a_new_buffer() -> None:
    snap = HostSnapshot()
    snap.take({"w": torch.ones(3)})
    out = snap.take({"w": torch.arange(5.0)})
    assert snap.allocations == 2
    assert torch.equal(out["w"], torch.arange(5.0))
    assert snap.buffer_bytes == 5 * 4


def test_nested_structure_and_plain_leaves_are_preserved() -> None:
    torch.manual_seed(1)
    state = {
        "model": {"layer.weight": torch.randn(2, 2)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
        "rng": [torch.get_rng_state()],
        "step": 7,
    }
    out = HostSnapshot().take(state)
    assert out["step"] == 7
    assert out["optimizer"]["param_groups"] == [{"lr": 0.1, "betas": (0.9, 0.99)}]
    assert isinstance(out["rng"], list) and torch.equal(out["rng"][0], state["rng"][0])
    assert torch.equal(out["optimizer"]["state"][0]["step"], torch.tensor(3.0))
    assert torch.equal(out["model"]["layer.weight"], state["model"]["layer.weight"])


def test_release_drops_the_buffers() -> None:
    snap = HostSnapshot()
    snap.take({"w": torch.ones(4)})
    snap.release()
    assert snap.buffer_bytes == 0


def test_colliding_flat_names_are_refused() -> None:
    with pytest.raises(StateDictError, match=r"a\.b"):
        HostSnapshot().take({"a.b": torch.ones(1), "a": {"b": torch.ones(1)}})


@pytest.mark.cuda
def test_cuda_snapshot_uses_pinned_buffers_and_matches() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(2)
    state = {"w": torch.randn(256, 256, device="cuda"), "opt": {"m": torch.randn(1000, device="cuda").half()}}
    snap = HostSnapshot()
    out = snap.take(state)
    assert out["w"].is_pinned() and out["opt"]["m"].is_pinned()
    assert torch.equal(out["w"], state["w"].cpu()) and torch.equal(out["opt"]["m"], state["opt"]["m"].cpu())
    ptr = out["w"].data_ptr()
    state["w"].add_(1.0)
    expected = state["w"].cpu()
    later = snap.take(state, wait=False)
    state["w"].zero_()  # queued behind the copy on the current stream
    snap.wait()
    assert later["w"].data_ptr() == ptr
    assert torch.equal(later["w"], expected)
