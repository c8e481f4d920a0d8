"""Every file effect goes through ``FileSystem``: no module calls an ``os``/``shutil`` file effect itself.

So the recording, fault-injecting and crash-image file systems see every
byte shipslog writes, every rename and every fsync.  The few modules that
must act outside a root (the primitives themselves, benchmark baselines that
measure the raw calls, the harnesses that build and copy crash images) are
listed below with the calls they may make and why; a new call of another
kind in them fails too.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("journal", "engine", "recovery", "gpu", "shipslog", "tools")

_OS_EFFECTS = {
    "write", "pwrite", "writev", "pwritev", "fsync", "fdatasync", "rename", "replace", "renames", "unlink", "remove",
    "rmdir", "removedirs", "mkdir", "makedirs", "ftruncate", "truncate", "posix_fallocate", "symlink", "link",
    "chmod", "fchmod", "chown", "utime", "mkfifo", "mknod",
}
_SHUTIL_EFFECTS = {"rmtree", "copy", "copy2", "copyfile", "copytree", "move", "copymode", "copystat", "chown"}
_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}

_HARNESS = "harness scaffolding: it builds, copies and plants folders for checkers, never the root a live engine holds"
_BASELINE = "a benchmark baseline measures the raw calls shipslog is compared with"
ALLOWED: dict[str, dict[str, str]] = {
    "journal/_fs.py": dict.fromkeys(
        ("os.write", "os.pwrite", "os.fsync", "os.fdatasync", "os.ftruncate", "os.posix_fallocate", "os.replace",
         "os.mkdir", "os.unlink", "os.rmdir", "os.open"),
        "the primitives themselves",
    ),
    "journal/_crashimage.py": {
        "os.makedirs": "a crash image is written into a fresh folder for a checker",
        "open(w)": "a crash image is written into a fresh folder for a checker",
    },
    "journal/_crashpoints.py": {
        "os.open": "the crash trace named by SHIPSLOG_CRASH_TRACE: harness instrumentation, never under a root",
        "os.write": "the crash trace named by SHIPSLOG_CRASH_TRACE: harness instrumentation, never under a root",
    },
    "engine/_workers/_lifecycle.py": {"os.write": "one byte into the supervisor's own wake-up pipe, not a file"},
    "gpu/_bench.py": dict.fromkeys(("open(w)", "os.makedirs", "shutil.rmtree", "os.unlink"), _BASELINE),
    "tools/_bench_checkpoint.py": dict.fromkeys(("os.unlink", "shutil.rmtree"), "a benchmark clears its own scratch folders"),
    "tools/_bench_engine.py": {"shutil.rmtree": "a benchmark clears its own scratch folders"},
    "tools/_bench_journal.py": dict.fromkeys(("os.open", "open(w)", "shutil.rmtree"), _BASELINE),
    "tools/_bench_workers.py": {"shutil.rmtree": "a benchmark clears its own scratch folders"},
    "tools/_torture.py": dict.fromkeys(("open(w)", "os.makedirs", "shutil.rmtree", "shutil.copytree", "shutil.copy2"), _HARNESS),
    "tools/_powerloss.py": dict.fromkeys(("open(w)", "os.makedirs", "shutil.rmtree"), _HARNESS),
    "tools/_training_kill.py": dict.fromkeys(
        ("open(w)", "os.makedirs", "os.fsync", "shutil.rmtree", "os.remove"),
        "the training harness's child results and acknowledgement files, outside the roots, and the baseline's own "
        "checkpoint files, written without shipslog on purpose; shipslog roots go through the engine",
    ),
    "tools/_dcp_ranks.py": dict.fromkeys(
        ("open(w)", "os.makedirs", "os.remove", "os.fsync"),
        "the rank harness's rendezvous folder, each rank's report, stderr file and acknowledgements, outside the roots, "
        "and the file rank 0 puts into a shared checkpoint's staging as another writer would (checksummed at commit)",
    ),
    "tools/_bench_distributed.py": dict.fromkeys(
        ("open(w)", "shutil.rmtree"), "a benchmark's report from rank 0 and its scratch folder, removed afterwards"
    ),
    "tools/_torture_distributed.py": {"shutil.rmtree": _HARNESS},
    "tools/_libc_kill.py": {"open(w)": "the kill library's C source, written into the harness's own work folder"},
    "tools/_workload.py": dict.fromkeys(
        ("open(w)", "os.makedirs", "os.open", "os.write", "os.remove"),
        "the workload's inputs outside the root, its acknowledgement file, and the file it puts into staging "
        "as another writer would (recorded with add_file on purpose)",
    ),
    "tools/_demo.py": dict.fromkeys(("open(w)", "os.makedirs"), "the demo's input data and logs, outside the root"),
    "tools/_demo_host.py": dict.fromkeys(
        ("open(w)", "os.makedirs", "os.fsync", "os.replace", "os.unlink"),
        "the demo's training host writes its own side files (prepared shards, logs) as a user's program does; "
        "the root's effects go through the engine",
    ),
    "tools/_cli.py": {"os.open": "points stdout at /dev/null after the reader closed the pipe"},
}


def _may_write(flags: ast.AST) -> bool:
    """Whether ``os.open`` flags may open for writing: a write flag named, or flags passed in a variable."""
    return any((isinstance(n, ast.Attribute) and n.attr in _WRITE_FLAGS) or isinstance(n, ast.Name) for n in ast.walk(flags) if not (isinstance(n, ast.Name) and n.id == "os"))


def _open_mode(call: ast.Call) -> str | None:
    mode: ast.AST | None = call.args[1] if len(call.args) >= 2 else None
    for kw in call.keywords:
        if kw.arg == "mode":
            mode = kw.value
    if mode is None:
        return None
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return mode.value
    return "?"  # a computed mode: counted as writing


def effects(source: str, path: str) -> Iterator[tuple[int, str]]:
    """``(line, call)`` for each direct file effect in ``source``."""
    for node in ast.walk(ast.parse(source, path)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            module, name = f.value.id, f.attr
            if module == "os" and name == "open":
                if len(node.args) >= 2 and _may_write(node.args[1]):
                    yield node.lineno, "os.open"
            elif (module == "os" and name in _OS_EFFECTS) or (module == "shutil" and name in _SHUTIL_EFFECTS):
                yield node.lineno, f"{module}.{name}"
        elif isinstance(f, ast.Name) and f.id == "open":
            mode = _open_mode(node)
            if mode is not None and (mode == "?" or set(mode) & set("wax+")):
                yield node.lineno, "open(w)"


def _found() -> Iterator[tuple[str, int, str]]:
    for package in PACKAGES:
        for dirpath, _dirs, files in os.walk(os.path.join(REPO, package)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, REPO).replace(os.sep, "/")
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                for line, call in effects(source, path):
                    yield rel, line, call


def test_no_module_makes_a_file_effect_outside_the_file_system() -> None:
    offenders = [f"{rel}:{line}: {call}" for rel, line, call in _found() if call not in ALLOWED.get(rel, {})]
    assert offenders == [], "file effects must go through shipslog.journal.FileSystem:\n" + "\n".join(offenders)


def test_every_allowance_is_still_needed() -> None:
    used = {(rel, call) for rel, _line, call in _found()}
    stale = [f"{rel}: {call}" for rel, calls in ALLOWED.items() for call in calls if (rel, call) not in used]
    assert stale == []


def test_the_scanner_sees_each_kind_of_effect() -> None:
    source = (
        "import os, shutil\n"
        "os.open(p, os.O_WRONLY | os.O_CREAT)\n"
        "os.open(p, os.O_RDONLY)\n"
        "os.fsync(fd)\n"
        "shutil.rmtree(p)\n"
        "open(p, 'wb')\n"
        "open(p, 'rb')\n"
        "open(p)\n"
        "open(p, mode)\n"
    )
    assert list(effects(source, "x.py")) == [(2, "os.open"), (4, "os.fsync"), (5, "shutil.rmtree"), (6, "open(w)"), (9, "open(w)")]
