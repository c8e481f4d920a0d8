"""The README's embedding and torch loop examples run as written (with its root moved to a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _example(heading: str = "## Embedding the engine") -> str:
    """The first python block after ``heading`` in the README."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"the README lost the example under {heading!r}"
    return match.group(1)


@pytest.mark.subprocess
def test_readme_embedding_example_runs_and_leaves_what_it_says(tmp_path: str) -> None:
    root = os.path.join(tmp_path, "host")
    code = _example().replace('"/srv/host"', repr(root))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "step-300"
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-200", "step-300"]
    with open(os.path.join(root, "pointers", "current"), encoding="utf-8") as f:
        assert '"checkpoints/step-300"' in f.read()
    assert os.listdir(os.path.join(root, "staging")) == []


@pytest.mark.subprocess
def test_readme_torch_loop_example_runs_and_resumes_where_it_left_off(tmp_path: str) -> None:
    pytest.importorskip("torch")
    root = os.path.join(tmp_path, "trainer")
    code = _example("## A torch training loop").replace('"/srv/trainer"', repr(root))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[0] == "200"
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-150", "step-200"]
    again = subprocess.run([sys.executable, "-c", code.replace("step < 200", "step < 250")], capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[0] == "250"  # resumed at 200, not at 0
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-200", "step-250"]
