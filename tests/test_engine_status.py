"""status(): the host at a glance, derived from the journal alone."""

from __future__ import annotations

import os
from typing import Any

import pytest
from _engine_helpers import commit_checkpoint, crash, open_engine, write_jsonl

from shipslog.engine import replay, status_of


@pytest.fixture
def data(tmp_path: Any) -> str:
    return write_jsonl(os.path.join(tmp_path, "d.jsonl"), '{"x": 1}\n')


def test_a_new_root(root: str) -> None:
    with open_engine(root) as e:
        st = e.status()
        assert st.shutdown == "none" and st.unclean_sessions == 0
        assert st.training is None and st.runs == [] and st.in_flight == []
        assert st.latest is None and st.global_step == 0 and st.pointers == {}
        assert st.checkpoints == 0 and st.models == 0 and st.largest_checkpoint_bytes == 0
        assert st.session is not None and st.session.id == f"session-{e.session}" and st.session.state == "opened"
        assert st.seq == 1


def test_status_is_derived_from_the_journal(root: str, data: str) -> None:
    with open_engine(root) as e:
        commit_checkpoint(e, "step-100", step=100, files={"w.bin": b"w" * 300})
        commit_checkpoint(e, "step-50", step=50, files={"w.bin": b"w" * 10})
        with e.save_model("base") as m:
            m.write_bytes("w.bin", b"m")
        e.set_pointer("best", "step-100")
        run = e.run(data)
        run.progress(120)
        ck = e.checkpoint("step-150", step=150)
        st = e.status()
        assert st == status_of(replay(root))
        assert st.latest is not None and st.latest.name == "step-100" and st.global_step == 100
        assert st.checkpoints == 2 and st.models == 1
        assert st.largest_checkpoint_bytes == 300
        assert set(st.pointers) == {"best"} and st.pointers["best"].target == "checkpoints/step-100"
        assert st.training is not None and st.training.op == run.op and st.training.step == 120
        assert [o.id for o in st.in_flight] == [run.op, ck.op]
        assert [r.op for r in st.runs] == [run.op]
        os.remove(os.path.join(root, "pointers", "best"))  # a side file gone: status still says what the journal says
        assert e.status().pointers["best"].target == "checkpoints/step-100"
        ck.abort()
        run.finish()
        assert e.status().training is None and e.status().in_flight == []


def test_clean_then_unclean_shutdown(root: str, data: str) -> None:
    with open_engine(root):
        pass
    e = open_engine(root)
    assert e.status().shutdown == "clean"
    run = e.run(data)
    crash(e)
    with open_engine(root) as after:
        st = after.status()
        assert st.shutdown == "unclean" and st.unclean_sessions == 1
        assert st.training is None, "a run of a dead session is reported as training"
        assert st.runs[0].op == run.op and st.runs[0].state == "interrupted"
        assert st.previous_session is not None and st.previous_session.state == "crashed"
