"""shipslog.tools: the ``shipslog`` command line.

The entry point is :func:`main`, installed as the ``shipslog`` script and run by
``python -m shipslog``.  Each subcommand lives in its own small function in
:mod:`shipslog.tools._cli`; the work behind it lives in a module of its own
(``shipslog bench journal`` in :mod:`shipslog.tools._bench_journal`), which
logs with :mod:`logging` and returns data for the command line to print.

Besides :func:`main`, this package exports what the commands are built from,
for scripts (and tests) that drive them without parsing their output: the exit
codes and the argument parser; read-only views of a root (:func:`open_view`,
which takes no lock and writes nothing); loading a host's ``--operations``
module; the output helpers (:class:`Printer`, :func:`plain_table`,
:func:`printable`: rich on a terminal, plain columns elsewhere, control
characters escaped); the demo (:func:`run_demo`) and its loader worker; and the
crash harness's workload helpers.  The demo and the harness are imported on
first use, so a command such as ``shipslog status`` does not load them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cli import EXIT_CODES, build_parser, main
from ._inspect import NotARootError, RootView, UnreadableRootError, open_view
from ._operations_module import (
    OperationsModuleError,
    load_operations,
    load_operations_module,
    operation_types,
)
from ._render import (
    ByteProgress,
    Printer,
    event_style,
    plain_table,
    printable,
    shipslog_command,
    use_rich,
)

if TYPE_CHECKING:
    from ._bench_engine import syncs_floor_ms, syncs_per_checkpoint
    from ._bench_journal import bench_prealloc_fdatasync, frame_bytes, make_event
    from ._dcp_ranks import RankResult, read_acks, run_ranks, shared_bytes
    from ._demo import DemoError, make_inbox, run_demo
    from ._demo_host import DemoDataError, prepare_inbox
    from ._libc_kill import build_kill_library, kill_library_env, kill_library_events
    from ._torture import kill_orphans, workload_processes
    from ._torture_distributed import run_distributed_torture
    from ._training_kill import (
        TEARDOWN_ABORT,
        AuditKiller,
        KillingFileSystem,
        aborted_after_result,
        run_training_torture,
    )
    from ._workload import WORKLOAD_OPS, WORKLOAD_ROOT_ENV, parse_ops, points_for_ops

_LAZY = {
    "syncs_floor_ms": "._bench_engine",
    "syncs_per_checkpoint": "._bench_engine",
    "bench_prealloc_fdatasync": "._bench_journal",
    "frame_bytes": "._bench_journal",
    "make_event": "._bench_journal",
    "DemoDataError": "._demo_host",
    "DemoError": "._demo",
    "AuditKiller": "._training_kill",
    "TEARDOWN_ABORT": "._training_kill",
    "aborted_after_result": "._training_kill",
    "KillingFileSystem": "._training_kill",
    "RankResult": "._dcp_ranks",
    "WORKLOAD_OPS": "._workload",
    "build_kill_library": "._libc_kill",
    "kill_library_env": "._libc_kill",
    "kill_library_events": "._libc_kill",
    "WORKLOAD_ROOT_ENV": "._workload",
    "kill_orphans": "._torture",
    "make_inbox": "._demo",
    "parse_ops": "._workload",
    "points_for_ops": "._workload",
    "prepare_inbox": "._demo_host",
    "run_demo": "._demo",
    "run_distributed_torture": "._torture_distributed",
    "read_acks": "._dcp_ranks",
    "run_ranks": "._dcp_ranks",
    "shared_bytes": "._dcp_ranks",
    "run_training_torture": "._training_kill",
    "workload_processes": "._torture",
}
"""Exported names imported on first use (PEP 562), and the module each comes from."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "EXIT_CODES",
    "TEARDOWN_ABORT",
    "WORKLOAD_OPS",
    "WORKLOAD_ROOT_ENV",
    "AuditKiller",
    "ByteProgress",
    "DemoDataError",
    "DemoError",
    "KillingFileSystem",
    "NotARootError",
    "OperationsModuleError",
    "Printer",
    "RankResult",
    "RootView",
    "UnreadableRootError",
    "aborted_after_result",
    "bench_prealloc_fdatasync",
    "build_kill_library",
    "build_parser",
    "event_style",
    "frame_bytes",
    "kill_library_env",
    "kill_library_events",
    "kill_orphans",
    "load_operations",
    "load_operations_module",
    "main",
    "make_event",
    "make_inbox",
    "open_view",
    "operation_types",
    "parse_ops",
    "plain_table",
    "points_for_ops",
    "prepare_inbox",
    "printable",
    "read_acks",
    "run_demo",
    "run_distributed_torture",
    "run_ranks",
    "run_training_torture",
    "shared_bytes",
    "shipslog_command",
    "syncs_floor_ms",
    "syncs_per_checkpoint",
    "use_rich",
    "workload_processes",
]
