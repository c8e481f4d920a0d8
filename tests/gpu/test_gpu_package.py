"""The shipslog.gpu package: its public surface, its errors, its missing-torch error, the bench."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from shipslog import gpu
from shipslog.journal import ShipslogError


def test_every_public_name_is_exported() -> None:
    for name in gpu.__all__:
        assert hasattr(gpu, name), name
    for module in ("_errors", "_tensorfile", "_hostcopy", "_lora", "_bench"):
        mod = importlib.import_module(f"shipslog.gpu.{module}")
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.{name}"


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (gpu.PickleRefusedError, ValueError),
        (gpu.TensorFileError, ValueError),
        (gpu.TensorFileNotFoundError, FileNotFoundError),
        (gpu.StateDictError, ValueError),
        (gpu.AdapterError, ValueError),
        (gpu.NonFiniteError, ArithmeticError),
        (gpu.MergeOutOfMemoryError, MemoryError),
        (gpu.IntegrityError, ValueError),
        (gpu.MissingDependencyError, ImportError),
    ],
)
def test_errors_share_the_root_and_their_builtin(error: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(error, ShipslogError) and issubclass(error, builtin)


def test_error_messages_name_what_where_and_what_to_do() -> None:
    err = gpu.TensorFileError("/ck/model.safetensors", "a JSON header", "garbage", tensor="w")
    text = str(err)
    assert "/ck/model.safetensors" in text and "'w'" in text and "expected a JSON header" in text and "restore" in text


@pytest.mark.subprocess
def test_import_without_torch_names_the_gpu_extra() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from shipslog.engine import MissingDependencyError\n"
        "try:\n"
        "    import shipslog.gpu\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "pip install 'shipslog[gpu]'" in done.stdout


def test_shipslog_and_its_torch_core_import_no_training_framework() -> None:
    code = (
        "import sys, shipslog, shipslog.gpu, shipslog.tools\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "blocked", "extra"), [("lightning", "lightning", "lightning"), ("hf", "transformers", "hf"), ("accelerate", "accelerate", "accelerate")])
def test_a_framework_integration_without_its_framework_names_its_extra(module: str, blocked: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from shipslog.engine import MissingDependencyError\n"
        "try:\n"
        f"    import shipslog.gpu.{module}\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"pip install 'shipslog[{extra}]'" in done.stdout


def test_bench_runs_small_and_reports_every_figure(tmp_path: Path) -> None:
    result = gpu.bench_checkpoint(tmp_path, mib=2, repeats=1, merge_dim=256)
    for key in (
        "raw_write_fsync_s",
        "torch_save_fsync_s",
        "tensorfile_save_s",
        "tensorfile_load_verify_s",
        "torch_load_s",
        "merge_s",
        "merge_reference_s",
    ):
        assert result[key] > 0, key
    assert result["merge_layers"] == 8
    assert result["merge_max_abs_diff"] < 1e-5
    assert list(tmp_path.iterdir()) == []
