"""The ``shipslog`` command line: argument parsing, logging set-up, and printing.

Every subcommand is a small function ``_cmd_<name>(args) -> int`` bound to its
parser with ``set_defaults(func=...)``; adding one means adding its parser in
:func:`build_parser` and its function here.  Library code logs with
:mod:`logging` and returns data; only this module prints.

Exit codes (:data:`EXIT_CODES`, shown by ``shipslog --help``): 0 healthy /
done, 1 findings (recovery needed, an integrity problem), 2 a usage error
(argparse's own) or a root that cannot be used: an error shipslog raised on
purpose (:class:`~shipslog.journal.ShipslogError`, which includes an
``OSError`` met while reading a root), printed as one line on stderr unless
``--debug`` asks for the traceback.  Other exceptions are bugs and keep their
traceback.  A reader that closes stdout early (``| head``) ends the command
quietly with 0.  Tables and progress bars go through :mod:`shipslog.tools._render`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import msgspec

from shipslog.journal import ShipslogError

from ._cli_types import positive_int
from ._inspect import reading, replay_root, require_root
from ._operations_module import OPERATIONS_HELP, load_operations
from ._render import Printer, plain_table, printable

__all__ = ["EXIT_CODES", "build_parser", "main"]

PROG = "shipslog"
EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_ERROR = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "healthy / done: nothing was found, or the command did what it was asked",
    EXIT_VIOLATIONS: "findings: recovery is needed or an integrity problem was found "
    "(status, verify, recover, torture; the findings are printed)",
    EXIT_ERROR: "usage error, or a root that cannot be used: missing, not a shipslog root, unreadable, "
    "written by a newer shipslog, a damaged journal (except for verify, which reports it as a finding), "
    "or held by another process (recover, gc); a file the command may not read or write (the path is named)",
    EXIT_INTERNAL: "internal error: a bug in shipslog, not a problem with the root; run the command again with "
    "--debug and report the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): what was in progress is left as a crash leaves it; the next open "
    "of the root recovers it",
}
"""The exit codes of every ``shipslog`` command and what each means."""

_EPILOG = (
    "exit codes:\n"
    + "".join(textwrap.fill(meaning, 78, initial_indent=f"  {code}  ", subsequent_indent="     ") + "\n" for code, meaning in EXIT_CODES.items())
    + "\n"
    + textwrap.fill(
        "output: tables and progress bars on a terminal; plain text when piped, or with NO_COLOR set or "
        "TERM=dumb; --json prints JSON only.  Errors are one line on stderr (--debug shows the traceback).",
        78,
    )
)

_Command = Callable[[argparse.Namespace], int]


def _common_flags(*, top_level: bool) -> argparse.ArgumentParser:
    """``-v`` and ``--debug``, accepted before the subcommand and after it.

    Below the top level their defaults are suppressed, so a subcommand's parser
    never overwrites a flag given at the top.
    """
    parent = argparse.ArgumentParser(add_help=False)
    default_v: Any = 0 if top_level else argparse.SUPPRESS
    default_debug: Any = False if top_level else argparse.SUPPRESS
    parent.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default_v,
        help="log progress on stderr (INFO; give twice for DEBUG)",
    )
    parent.add_argument(
        "--debug",
        action="store_true",
        default=default_debug,
        help="show the full traceback of an error instead of one line",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole ``shipslog`` command line."""
    sub_flags = _common_flags(top_level=False)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="shipslog: a crash-safe journal for ML training hosts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_flags(top_level=True)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = commands.add_parser(
        "bench", help="measure shipslog on this disk", description="Measure shipslog on this disk."
    )
    benches = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)

    def bench_parser(name: str, help_text: str, description: str, func: _Command, *, tmpfs_note: bool) -> argparse.ArgumentParser:
        """A ``bench NAME`` parser with the flags every benchmark has: ``--json`` and ``--dir``."""
        p = benches.add_parser(name, parents=[sub_flags], help=help_text, description=description)
        p.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
        where = "the current folder; /tmp may be tmpfs" if tmpfs_note else "the current folder"
        p.add_argument("--dir", default=".", metavar="DIR", help=f"folder on the disk to measure (default: {where})")
        p.set_defaults(func=func, parser=p)
        return p

    everything = bench_parser(
        "all",
        "every benchmark in one run: one result object, every target with its verdict",
        "Run the journal, engine, checkpoint, distributed and workers benchmarks one after the other (each with "
        "its defaults) in temporary folders under --dir that are removed afterwards, and print one result: each "
        "benchmark's figures, every target with its value, bound and verdict, and the missed ones.  The "
        "checkpoint and distributed benchmarks need torch and are skipped without it.",
        _cmd_bench_all,
        tmpfs_note=True,
    )
    everything.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")

    journal = bench_parser(
        "journal",
        "durable appends (vs raw fdatasync and SQLite) and replay",
        "Measure durable journal appends against a raw write+fdatasync loop and SQLite "
        "(WAL, synchronous=FULL), group commit from several threads, and replay, in a "
        "temporary folder under --dir that is removed afterwards.",
        _cmd_bench_journal,
        tmpfs_note=True,
    )
    journal.add_argument(
        "--records",
        type=positive_int,
        default=2000,
        metavar="N",
        help="records per append measurement (default: 2000)",
    )
    journal.add_argument(
        "--replay-events",
        type=positive_int,
        default=1_000_000,
        metavar="M",
        help="records written, then replayed (default: 1000000)",
    )
    journal.add_argument(
        "--threads",
        type=positive_int,
        default=8,
        metavar="T",
        help="appender threads for the group commit figure judged against one thread (default: 8; 2, 8 and 32 are always measured)",
    )
    journal.add_argument(
        "--rounds",
        type=positive_int,
        default=5,
        metavar="R",
        help="rounds of the floor, the single appender, the O_APPEND loop, SQLite and group commit side by side; medians reported (default: 5)",
    )

    engine = bench_parser(
        "engine",
        "reducer replay, open time with long histories, and an empty checkpoint vs one fsync",
        "Measure full reducer replay of a long lifecycle history, Engine.open of roots with 10,000 "
        "and with --records records of history (snapshots on), the read-only view behind 'shipslog status' "
        "of the long one, and an empty checkpoint beside one write+fsync, in a temporary folder under --dir "
        "that is removed afterwards.",
        _cmd_bench_engine,
        tmpfs_note=False,
    )
    engine.add_argument(
        "--records",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="records of history for replay and open_ms_1m (default: 1000000)",
    )

    checkpoint = bench_parser(
        "checkpoint",
        "full checkpoint save/load, async save and LoRA merge vs raw write, torch.save/load",
        "Measure, with the same N MiB of float32 tensors: a raw write+fsync, torch.save+fsync, the full "
        "engine checkpoint operation (fsync on), a verified load beside torch.load(weights_only=True), how "
        "long AsyncCheckpointer.save blocks its caller, and merge_lora beside a plain merge loop, in a "
        "temporary folder under --dir that is removed afterwards.  Needs torch (pip install 'shipslog[gpu]').",
        _cmd_bench_checkpoint,
        tmpfs_note=True,
    )
    checkpoint.add_argument(
        "--mib",
        type=positive_int,
        default=512,
        metavar="N",
        help="MiB of float32 tensors to save, load and merge (default: 512)",
    )

    distributed = bench_parser(
        "distributed",
        "multi-rank save and load+verify through shipslog vs DCP's own writer and reader",
        "Run --ranks gloo processes on CPU sharing --mib MiB of float32 (DTensors sharded by rows) and measure, "
        "round by round: DCP's save with FileSystemWriter(sync_files=True) beside shipslog's save_distributed "
        "(the whole committed operation), and DCP's load beside shipslog's load_distributed (every file verified), "
        "in a temporary folder under --dir that is removed afterwards.  Needs torch (pip install 'shipslog[gpu]').",
        _cmd_bench_distributed,
        tmpfs_note=True,
    )
    distributed.add_argument("--ranks", type=positive_int, default=2, metavar="N", help="ranks (processes) (default: 2)")
    distributed.add_argument("--mib", type=positive_int, default=256, metavar="M", help="MiB of state over all ranks (default: 256)")
    distributed.add_argument("--repeats", type=positive_int, default=5, metavar="R", help="rounds; medians are reported (default: 5)")

    workers = bench_parser(
        "workers",
        "supervised workers: death journaled, replacement running",
        "Kill a supervised worker process with SIGKILL --rounds times and measure the time to its durable "
        "worker.died record (detect_death_ms) and to its replacement's durable worker.started record "
        "(restart_ms, which includes the policy's backoff), in a temporary folder under --dir that is "
        "removed afterwards.",
        _cmd_bench_workers,
        tmpfs_note=False,
    )
    workers.add_argument(
        "--rounds", type=positive_int, default=20, metavar="N", help="worker kills to measure (default: 20)"
    )

    torture = commands.add_parser(
        "torture",
        parents=[sub_flags],
        help="kill a realistic workload at every crash point, recover, and check every invariant",
        description=(
            "For every registered crash point, run a workload (checkpoints, pointer moves, runs, retention, "
            "sessions) in a child process that dies there without clean-up, then recover the root in a fresh "
            "process, check every invariant, open it again and check that nothing is left to recover; also "
            "crash recovery itself at each point it reaches.  Exit 0 when there are no violations (and every "
            "point that counts was crashed at), 1 otherwise."
        ),
    )
    torture.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    torture.add_argument(
        "--ops",
        default=None,
        metavar="OP,...",
        help="only these operations (checkpoint, pointer, retention, run, session, workers, consolidation) and their crash "
        "points (the journal's and recovery's always count); default: all.  'distributed' (alone) runs the multi-rank "
        "harness instead: 2 and 4 gloo ranks on CPU, the coordinator or another rank killed at every point of a save (through DCP and through a shared checkpoint)",
    )
    torture.add_argument(
        "--operations",
        default=None,
        metavar="MODULE",
        help="torture a host's own operation types instead: a dotted module name or a .py file defining OPERATIONS, "
        "workload(engine, ack) and optionally check(engine, acks); its types' crash points (and the journal's and "
        "recovery's) count",
    )
    torture.add_argument(
        "--power-loss",
        action="store_true",
        help="instead of killing the process, cut the power: run the workload on a crash-image file system and "
        "recover every state a power cut can leave at and between its durability points",
    )
    torture.add_argument(
        "--training",
        choices=["plain", "lightning", "hf", "accelerate", "all"],
        default=None,
        help="instead: kill a training process (a plain torch loop, Lightning, the HF Trainer or Accelerate) at every file create, rename and "
        "remove of its run and with every write cut in half, resume it, and require the resume to start from the "
        "newest committed checkpoint and end with the weights of an uninterrupted run, bit for bit",
    )
    torture.add_argument(
        "--baseline",
        action="store_true",
        help="with --training: the framework's own checkpointing, without shipslog, killed at the same kinds of file events",
    )
    torture.add_argument(
        "--intercept",
        choices=["auto", "libc", "python"],
        default="auto",
        help="with --training: where file events are counted: libc (a preloaded library built with the C compiler; native "
        "writes such as torch's and safetensors' are cut too), python (shipslog's file system and Python's audit events), "
        "auto (libc when a C compiler is found; default)",
    )
    torture.add_argument(
        "--compare",
        action="store_true",
        help="with --training: run with shipslog and without, and print one row each (the README's table)",
    )
    torture.add_argument(
        "--ranks",
        type=int,
        choices=[1, 2],
        default=1,
        help="with --training hf, lightning or all: 2 runs each child as a DDP job of two gloo processes on CPU and kills "
        "it at every file event of either rank (shipslog only; all = hf and lightning)",
    )
    torture.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the workload's data (default: 0)")
    torture.add_argument(
        "--quick",
        action="store_true",
        help="first hit of each point only, and recovery crashed after a few crashes only (what 'make test' runs)",
    )
    torture.add_argument("--jobs", type=positive_int, default=2, metavar="N", help="child processes at a time (default: 2)")
    torture.add_argument(
        "--dir", default=None, metavar="DIR", help="folder for the temporary roots (default: the system's temporary folder)"
    )
    torture.add_argument("--keep", action="store_true", help="keep the temporary roots for inspection")
    torture.set_defaults(func=_cmd_torture, parser=torture)

    from ._commands import add_commands

    add_commands(commands, sub_flags)

    recover = commands.add_parser(
        "recover",
        parents=[sub_flags],
        help="show what recovery would do to a root, and do it",
        description=(
            "Replay ROOT's journal read-only and print the recovery plan (operation, state, action, reason); "
            "then, unless --dry-run, open the root, which carries the plan out, and print what was done and "
            "any invariant that still does not hold.  Exit 0 when there was nothing to do or it was done with "
            "no violations, 1 when violations remain, 2 for an unreadable root (corrupt journal, locked by "
            "another process, not a shipslog root).  With --salvage, a damaged journal is first cut back to the "
            "part that verifies and reconciled with the folders on disk (every decision printed); a folder whose "
            "MANIFEST verifies is never quarantined."
        ),
    )
    recover.add_argument("root", metavar="ROOT", help="the folder an Engine was opened on")
    recover.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    recover.add_argument(
        "--salvage",
        action="store_true",
        help="for a damaged journal: keep the part that verifies (the rest copied to quarantine/), adopt committed "
        "folders that verify and that it does not know, journal what is missing as lost, then recover",
    )
    recover.add_argument("--operations", metavar="MODULE", default=None, help=OPERATIONS_HELP)
    recover.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    recover.set_defaults(func=_cmd_recover, parser=recover)
    return parser


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: messages name paths and names read from disk."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), newlines=True)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(name)s: %(levelname)s: %(message)s", force=True
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_PrintableFormatter("%(name)s: %(levelname)s: %(message)s"))


def _require_dir(args: argparse.Namespace) -> None:
    """A usage error unless ``--dir`` names an existing folder."""
    if not os.path.isdir(args.dir):
        args.parser.error(f"--dir {args.dir!r} is not a folder")


def _write_result(args: argparse.Namespace, result: dict[str, Any], readable: Callable[[dict[str, Any]], str]) -> None:
    """Print ``result``: one JSON object with ``--json``, else its readable text (plain: benches and torture draw no tables)."""
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else readable(result))
    sys.stdout.flush()


# -- bench journal ------------------------------------------------------------------

_RATE_ROWS = (
    ("prealloc pwrite + fdatasync (floor)", "prealloc_fdatasync_per_s"),
    ("raw write + fdatasync (O_APPEND)", "raw_fdatasync_per_s"),
    ("sqlite WAL synchronous=FULL", "sqlite_wal_full_per_s"),
    ("journal append", "journal_append_per_s"),
    ("group commit", "group_commit_per_s"),
    ("replay", "replay_events_per_s"),
)


def _shown(value: float) -> str:
    """A figure as a table shows it: thousands separated when large, three decimals when small."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def _verdict_lines(result: dict[str, Any]) -> list[str]:
    """A benchmark's targets as table rows (what, value, wanted, PASS/MISS), from its ``verdicts``."""
    lines = [f"  {'target':<40} {'value':>12}   {'wanted':<12} result"]
    lines += [f"  {v['label']:<40} {_shown(v['value']):>12}   {v['wanted']:<12} {v['verdict']}" for v in result["verdicts"]]
    return lines


def _format_bench_journal(result: dict[str, Any]) -> str:
    """The readable table of a ``run_journal_bench`` result."""
    title = (
        f"shipslog bench journal in {result['dir']}: {result['records']} records, "
        f"{result['group_commit_threads']} threads, {result['replay_events']} replay events"
    )
    lines = [
        title,
        "",
        f"  {'measure':<30} {'per second':>12}",
    ]
    for label, key in _RATE_ROWS:
        if key == "group_commit_per_s":
            for count, rate in result["group_commit_per_s_by_threads"].items():
                lines.append(f"  {f'{label} ({count} threads)':<30} {rate:>12,}")
            continue
        lines.append(f"  {label:<30} {result[key]:>12,}")
    lines += ["", *_verdict_lines(result)]
    lines.append(
        f"  (reading past crafted damage: {result['damage_scan_s_128k']:.4f} s for 128 KiB, {result['damage_scan_s_1m']:.4f} s for 1 MiB)"
    )
    lines.append(f"  (CPU of one append, fsync off: journal {result['append_cpu_us']:.2f} us, the floor's pwrite {result['floor_cpu_us']:.2f} us)")
    return "\n".join(lines) + "\n"


def _cmd_bench_journal(args: argparse.Namespace) -> int:
    """``shipslog bench journal``: run the journal benchmark and print its result."""
    from ._bench_journal import run_journal_bench

    _require_dir(args)
    if args.records < args.threads:
        args.parser.error(f"--records ({args.records}) must be at least --threads ({args.threads})")
    result = run_journal_bench(
        args.dir, records=args.records, replay_events=args.replay_events, threads=args.threads, rounds=args.rounds
    )
    _write_result(args, result, _format_bench_journal)
    return EXIT_OK


# -- bench all ----------------------------------------------------------------------


def _format_bench_all(result: dict[str, Any]) -> str:
    """The readable summary of a ``run_all_benches`` result: every target, its value and verdict."""
    lines = [f"shipslog bench all in {result['dir']} ({result['date']}, {result['cpus']} CPUs{', quick' if result['quick'] else ''})", ""]
    lines.append(f"  {'bench':<12} {'target':<40} {'value':>12}   {'wanted':<12} result")
    lines += [
        f"  {v['bench']:<12} {v['label']:<40} {_shown(v['value']):>12}   {v['wanted']:<12} {v['verdict']}" for v in result["verdicts"]
    ]
    if result["skipped"]:
        lines.append(f"  skipped (torch is not installed): {', '.join(result['skipped'])}")
    lines += ["", f"  missed: {', '.join(result['missed']) or 'none'}"]
    return "\n".join(lines) + "\n"


def _cmd_bench_all(args: argparse.Namespace) -> int:
    """``shipslog bench all``: every benchmark, one result."""
    _require_dir(args)
    from ._bench_all import run_all_benches

    log = None if args.json else (lambda msg: print(f"{PROG}: {msg}", file=sys.stderr, flush=True))
    result = run_all_benches(args.dir, quick=args.quick, log=log)
    _write_result(args, result, _format_bench_all)
    return EXIT_OK


# -- bench engine -------------------------------------------------------------------


def _format_bench_engine(result: dict[str, Any]) -> str:
    """The readable table of a ``run_engine_bench`` result."""
    mix = ", ".join(f"{kind} {share:.0%}" for kind, share in result["replay_mix"].items() if share >= 0.01)
    lines = [
        f"shipslog bench engine in {result['dir']}: {result['replay_events']:,} records of history ({mix})",
        "",
        f"  {'measure':<34} {'value':>12}",
        f"  {'replay (events/s)':<34} {result['replay_events_per_s']:>12,}",
        f"  {'replay, progress-heavy (events/s)':<34} {result['replay_progress_heavy_per_s']:>12,}",
        f"  {'open, 10k records (ms)':<34} {result['open_ms_10k']:>12.2f}",
        f"  {'open, long history (ms)':<34} {result['open_ms_1m']:>12.2f}",
        f"  {'open long / open 10k':<34} {result['ratios']['open_1m_vs_10k']:>12.3f}",
        f"  {'status, long history (ms)':<34} {result['status_ms_1m']:>12.2f}",
        f"  {'status long / open long':<34} {result['ratios']['status_1m_vs_open_1m']:>12.3f}",
        f"  {'empty checkpoint (ms)':<34} {result['checkpoint_empty_ms']:>12.3f}",
        f"  {'one write + fsync (ms)':<34} {result['fsync_ms']:>12.3f}",
        f"  {'syncs of one checkpoint':<34} {result['syncs_per_checkpoint']:>12d}",
        f"  {'that many write + fdatasync (ms)':<34} {result['syncs_ms']:>12.3f}",
        f"  {'checkpoint / fsync':<34} {result['ratios']['checkpoint_vs_fsync']:>12.3f}",
        f"  {'checkpoint / its syncs':<34} {result['ratios']['checkpoint_vs_syncs']:>12.3f}",
        "",
        *_verdict_lines(result),
    ]
    return "\n".join(lines) + "\n"


def _cmd_bench_engine(args: argparse.Namespace) -> int:
    """``shipslog bench engine``: run the engine benchmark and print its result."""
    from ._bench_engine import run_engine_bench

    _require_dir(args)
    if args.records < 20_000:
        args.parser.error(f"--records must be at least 20000 (the short history has 10000), got {args.records}")
    result = run_engine_bench(args.dir, records=args.records)
    _write_result(args, result, _format_bench_engine)
    return EXIT_OK


# -- bench checkpoint ---------------------------------------------------------------


def _format_bench_checkpoint(result: dict[str, Any]) -> str:
    """The readable table of a ``run_checkpoint_bench`` result."""
    def mib(value: int | None) -> str:
        return "n/a" if value is None else f"{value / (1 << 20):.0f} MiB"

    lines = [
        f"shipslog bench checkpoint in {result['dir']}: {result['mib']} MiB of float32, {result['statistic']}",
        "",
        f"  {'measure':<40} {'seconds':>10}",
        f"  {'raw write + fsync':<40} {result['raw_write_fsync_s']:>10.4f}",
        f"  {'torch.save + fsync':<40} {result['torch_save_fsync_s']:>10.4f}",
        f"  {'shipslog checkpoint (full operation)':<40} {result['shipslog_save_s']:>10.4f}",
        f"  {'shipslog load, verified':<40} {result['shipslog_load_verify_s']:>10.4f}",
        f"  {'torch.load(weights_only=True)':<40} {result['torch_load_s']:>10.4f}",
        f"  {'shipslog load, verified, cold':<40} {result['shipslog_load_verify_cold_s']:>10.4f}",
        f"  {'torch.load, cold':<40} {result['torch_load_cold_s']:>10.4f}",
        f"  {'async save, blocking part':<40} {result['async_blocking_s']:>10.4f}",
        f"  {'async save, first (allocates buffers)':<40} {result['async_blocking_first_s']:>10.4f}",
        f"  {'async save, background part':<40} {result['async_persist_s']:>10.4f}",
        f"  {'merge_lora':<40} {result['merge_s']:>10.4f}   peak extra {mib(result['merge_peak_extra_bytes'])}",
        f"  {'plain merge loop':<40} {result['merge_reference_s']:>10.4f}   peak extra {mib(result['merge_reference_peak_extra_bytes'])}",
        "",
        *_verdict_lines(result),
    ]
    return "\n".join(lines) + "\n"


def _cmd_bench_checkpoint(args: argparse.Namespace) -> int:
    """``shipslog bench checkpoint``: run the checkpoint benchmark and print its result."""
    _require_dir(args)
    from ._bench_checkpoint import run_checkpoint_bench

    result = run_checkpoint_bench(args.dir, mib=args.mib)
    _write_result(args, result, _format_bench_checkpoint)
    return EXIT_OK


# -- bench distributed --------------------------------------------------------------


def _format_bench_distributed(result: dict[str, Any]) -> str:
    """The readable table of a ``run_distributed_bench`` result."""
    lines = [
        f"shipslog bench distributed in {result['dir']}: {result['ranks']} ranks, {result['mib']} MiB, {result['statistic']}",
        "",
        f"  {'measure':<40} {'seconds':>10}",
        f"  {'DCP save (sync_files=True)':<40} {result['dcp_save_s']:>10.4f}",
        f"  {'shipslog save (committed)':<40} {result['shipslog_save_s']:>10.4f}",
        f"  {'DCP load':<40} {result['dcp_load_s']:>10.4f}",
        f"  {'shipslog load, verified':<40} {result['shipslog_load_verify_s']:>10.4f}",
        "",
        *_verdict_lines(result),
    ]
    return "\n".join(lines) + "\n"


def _cmd_bench_distributed(args: argparse.Namespace) -> int:
    """``shipslog bench distributed``: run the multi-rank benchmark and print its result."""
    _require_dir(args)
    from ._bench_distributed import run_distributed_bench

    result = run_distributed_bench(args.dir, ranks=args.ranks, mib=args.mib, repeats=args.repeats)
    _write_result(args, result, _format_bench_distributed)
    return EXIT_OK


# -- bench workers ------------------------------------------------------------------


def _format_bench_workers(result: dict[str, Any]) -> str:
    """The readable table of a ``run_workers_bench`` result."""
    lines = [
        f"shipslog bench workers in {result['dir']}: {result['rounds']} kills, {result['statistic']} (max)",
        "",
        f"  {'measure':<34} {'ms':>10} {'max':>10}",
        f"  {'death -> worker.died journaled':<34} {result['detect_death_ms']:>10.2f} {result['detect_death_ms_max']:>10.2f}",
        f"  {'death -> replacement running':<34} {result['restart_ms']:>10.2f} {result['restart_ms_max']:>10.2f}",
        f"  {'  of which backoff':<34} {result['backoff_ms']:>10.2f}",
        f"  {'  restart minus backoff':<34} {result['restart_overhead_ms']:>10.2f} {result['restart_overhead_ms_max']:>10.2f}",
        "",
        *_verdict_lines(result),
    ]
    return "\n".join(lines) + "\n"


def _cmd_bench_workers(args: argparse.Namespace) -> int:
    """``shipslog bench workers``: run the worker supervisor benchmark and print its result."""
    from ._bench_workers import run_workers_bench

    _require_dir(args)
    result = run_workers_bench(args.dir, rounds=args.rounds)
    _write_result(args, result, _format_bench_workers)
    return EXIT_OK


# -- torture ------------------------------------------------------------------------


def _format_training_torture(result: dict[str, Any]) -> str:
    """The readable summary of ``run_training_torture`` results: a table for several runs, else one run's summary."""
    if "runs" in result:
        headers = ["framework", "checkpoints", "kill points", "resumed correctly", "failed to resume", "lost work", "wrong weights"]
        rows = [
            [r["framework"], ("shipslog" if r["shipslog"] else "its own") + (f", {r['ranks']} ranks" if r.get("ranks", 1) > 1 else ""),
             str(r["points"]), str(r["verdicts"]["resumed"]),
             str(r["verdicts"]["failed"]), str(r["verdicts"]["lost-work"]), str(r["verdicts"]["wrong-weights"])]
            for r in result["runs"]
        ]
        return plain_table(headers, rows)
    def count(n: int | list[int]) -> str:
        return str(n) if isinstance(n, int) else " + ".join(f"{k} (rank {r})" for r, k in enumerate(n))

    writes = f", {count(result['events']['half'])} writes cut in half" if "half" in result["events"] else ""
    counted = "in libc" if result["intercept"] == "libc" else "in Python"
    ranks = f" --ranks {result['ranks']}" if result.get("ranks", 1) > 1 else ""
    head = (
        f"shipslog torture --training {result['framework']}{ranks}{'' if result['shipslog'] else ' --baseline'} "
        f"({'quick' if result['quick'] else 'full'}, seed {result['seed']}): "
        f"{result['points']} kill points ({count(result['events']['before'])} creates/renames/removes{writes} in a clean run, "
        f"counted {counted}), "
        f"{result['killed']} killed, {result['resumed_from_newest']} resumed from the newest checkpoint with the "
        f"uninterrupted run's weights, {len(result['violations'])} violation(s) in {result['seconds']} s"
    )
    lines = [head] + [f"  {v['mode']} rank {v['rank']} #{v['point']}: {v['problem']}" for v in result["violations"]]
    return "\n".join(lines)


def _format_torture(result: dict[str, Any]) -> str:
    """The readable summary of a ``run_torture`` result."""
    title = (
        f"shipslog torture ({'quick' if result['quick'] else 'full'}, ops {','.join(result['ops'])}, seed {result['seed']}): "
        f"{result['runs']} crash runs ({result['crashes']} in the workload, {result['recovery_crashes']} during recovery), "
        f"{result['processes']} processes, {result['seconds']:.1f} s"
    )
    lines = [title, f"  crash points: {len(result['covered'])} of {len(result['crash_points'])} covered"]
    for point in result["uncovered"]:
        lines.append(f"  uncovered: {point}")
    if result["violations"]:
        lines.append(f"  {len(result['violations'])} violation(s):")
        for v in result["violations"]:
            lines.append(f"    {v['point']}: {v['invariant']}: {v['message']}")
    else:
        lines.append("  violations: none")
    return "\n".join(lines) + "\n"


def _format_power_loss(result: dict[str, Any]) -> str:
    """The readable summary of a ``run_power_loss`` result."""
    head = (
        f"shipslog torture --power-loss ({'quick' if result['quick'] else 'full'}, ops {','.join(result['ops'])}, "
        f"seed {result['seed']}): {result['crash_states']} crash state(s) from {result['boundaries']} durability point(s), "
        f"{result['recovery_crash_states']} of them during recovery; {result['recovered']} needed recovery; "
        f"{result['seconds']} s"
    )
    lines = [head]
    for key in ("violations", "acknowledged_lost", "refused"):
        found = result[key]
        lines.append(f"{key.replace('_', ' ')}: {len(found) or 'none'}")
        lines.extend(f"  {item['image']}: {item.get('invariant', 'open')}: {item['message']}" for item in found[:50])
        if len(found) > 50:
            lines.append(f"  ... and {len(found) - 50} more (--json lists them all)")
    return "\n".join(lines)


def _format_distributed_torture(result: dict[str, Any]) -> str:
    """The readable summary of a ``run_distributed_torture`` result."""
    ranks = ",".join(map(str, result["worlds"]))
    lines = [
        (
            f"shipslog torture --ops distributed ({'quick' if result['quick'] else 'full'}, ranks {ranks}, "
            f"{' and '.join(result.get('scenarios', ['save']))}, "
            f"seed {result['seed']}): {result['runs']} kill run(s), {result['seconds']} s"
        ),
        f"  crash points: {len(result['covered'])} of {len(result['crash_points'])} covered",
    ]
    lines += [f"  uncovered: {point}" for point in result["uncovered"]]
    lines += [f"  {v['scenario']}: {v['problem']}" for v in result["violations"]]
    if not result["violations"]:
        lines.append("  violations: none")
    return "\n".join(lines) + "\n"


def _torture_distributed(args: argparse.Namespace) -> int:
    """``shipslog torture --ops distributed``: the multi-rank harness; exit 1 on any violation or uncovered point."""
    if args.ops.strip() != "distributed":
        args.parser.error("--ops distributed runs the multi-rank harness on its own; give it alone")
    if args.power_loss or args.operations is not None or args.training is not None:
        args.parser.error("--ops distributed takes no --power-loss, --operations or --training")
    if args.dir is not None and not os.path.isdir(args.dir):
        args.parser.error(f"--dir {args.dir!r} is not a folder")
    from ._torture_distributed import run_distributed_torture

    log = None if args.json else (lambda msg: print(f"{PROG} torture: {msg}", file=sys.stderr, flush=True))
    result = run_distributed_torture(quick=args.quick, seed=args.seed, workdir=args.dir, keep=args.keep, log=log)
    _write_result(args, result, _format_distributed_torture)
    return EXIT_VIOLATIONS if result["violations"] or result["uncovered"] else EXIT_OK


def _cmd_torture(args: argparse.Namespace) -> int:
    """``shipslog torture``: the crash harness; exit 1 when any violation (or uncovered point) is found."""
    from ._torture import run_torture
    from ._workload import host_operations, parse_ops

    if args.operations is not None and args.ops is not None:
        args.parser.error("--ops chooses built-in operations and --operations a host module's; give one of them")
    if args.ops is not None and "distributed" in [part.strip() for part in args.ops.split(",")]:
        return _torture_distributed(args)
    if args.power_loss and args.operations is not None:
        args.parser.error("--power-loss runs the built-in workload; --operations is not supported with it yet")
    try:
        ops = parse_ops(args.ops) if args.operations is None else None
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.operations is not None:
        host_operations(args.operations)  # a module that cannot be tortured is a usage error before any child runs
    if args.dir is not None and not os.path.isdir(args.dir):
        args.parser.error(f"--dir {args.dir!r} is not a folder")
    log = None if args.json else (lambda msg: print(f"{PROG} torture: {msg}", file=sys.stderr, flush=True))
    if args.training is not None:
        if args.power_loss or args.operations is not None or args.ops is not None:
            args.parser.error("--training runs its own training workload; it takes no --power-loss, --ops or --operations")
        from ._training_kill import DISTRIBUTED_FRAMEWORKS, FRAMEWORKS, run_training_torture

        frameworks = list(FRAMEWORKS) if args.training == "all" else [args.training]
        if args.ranks > 1:
            if args.baseline or args.compare:
                args.parser.error("--ranks 2 runs shipslog's DDP path only; it takes no --baseline or --compare")
            if args.training != "all" and args.training not in DISTRIBUTED_FRAMEWORKS:
                args.parser.error(f"--ranks 2 runs {', '.join(DISTRIBUTED_FRAMEWORKS)} (or all), not {args.training}")
            frameworks = [fw for fw in frameworks if fw in DISTRIBUTED_FRAMEWORKS]
        sides = [False, True] if args.compare else [args.baseline]
        runs = [
            run_training_torture(
                fw, folder=args.dir, quick=args.quick, seed=args.seed, jobs=args.jobs, keep=args.keep, baseline=side,
                intercept=args.intercept, ranks=args.ranks, log=log,
            )
            for fw in frameworks
            for side in sides
        ]
        result = runs[0] if len(runs) == 1 else {"runs": runs}
        _write_result(args, result, _format_training_torture)
        ours = [r for r in runs if r["shipslog"]]
        return EXIT_VIOLATIONS if any(r["violations"] for r in ours) else EXIT_OK
    if args.power_loss:
        from ._powerloss import run_power_loss

        result = run_power_loss(ops=ops, seed=args.seed, quick=args.quick, workdir=args.dir, jobs=args.jobs, keep=args.keep, log=log)
        _write_result(args, result, _format_power_loss)
        failed = result["violations"] or result["acknowledged_lost"] or result["refused"]
        return EXIT_VIOLATIONS if failed else EXIT_OK
    result = run_torture(
        ops=ops, seed=args.seed, quick=args.quick, workdir=args.dir, jobs=args.jobs, keep=args.keep, log=log, operations=args.operations
    )
    _write_result(args, result, _format_torture)
    return EXIT_OK if not result["violations"] else EXIT_VIOLATIONS


# -- recover ------------------------------------------------------------------------


def _plan_rows(actions: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "operation": a.target,
            "type": a.op_type or "path",
            "state": a.state or "-",
            "action": a.kind if a.event is None else f"{a.kind} ({a.event})",
            "reason": a.reason,
        }
        for a in actions
    ]


_PLAN_HEADERS = ["operation", "type", "state", "action", "reason"]


def _print_recover(result: dict[str, Any], printer: Printer) -> None:
    """The recovery plan as a table, then (unless a dry run) what was done and what still does not hold."""
    rows = result["plan"]
    root = result["root"]
    if "salvage" in result:
        _print_salvage(result["salvage"], printer)
        if result["dry_run"]:
            return
    if not rows:
        printer.line(f"{root}: nothing to recover", "green")
    else:
        printer.line(f"{root}: {len(rows)} thing(s) to recover{' (dry run: nothing was changed)' if result['dry_run'] else ''}", "bold")
        printer.line()
        printer.table(_PLAN_HEADERS, [[r[h] for h in _PLAN_HEADERS] for r in rows], indent="  ")
    if result["dry_run"]:
        return
    if result["done"]:
        printer.line()
        printer.line("done:", "bold")
        for d in result["done"]:
            printer.line(f"  {d['operation']}: {d['action']}: {d['outcome']}")
    for path in result["quarantined"]:
        printer.line(f"  quarantined: {path}", "yellow")
    printer.line()
    if result["violations"]:
        printer.line(f"{len(result['violations'])} violation(s) remain:", "bold red")
        for v in result["violations"]:
            printer.line(f"  {v['invariant']}: {v['message']}" + (f" ({v['path']})" if v["path"] else ""), "red")
    else:
        printer.line("every invariant holds", "green")


_SALVAGE_HEADERS = ["action", "target", "reason"]


def _print_salvage(report: dict[str, Any], printer: Printer) -> None:
    """What salvage kept, dropped and decided."""
    note = " (dry run: nothing was changed)" if report["dry_run"] else ""
    if report["dropped_from"] is None:
        printer.line(f"journal: every record verifies (1..{report['kept_seq']}); nothing to cut{note}", "green")
    else:
        printer.line(f"journal: kept records 1..{report['kept_seq']}; dropped from {report['dropped_from']}: {report['damage']}{note}", "bold")
        if report["quarantined"]:
            printer.line(f"  the dropped bytes were copied to {report['quarantined']}", "yellow")
    decisions = [d for d in report["decisions"] if d["action"] != "cut"]
    if decisions:
        printer.line()
        printer.line(f"{len(decisions)} decision(s) against the folders on disk:", "bold")
        printer.table(_SALVAGE_HEADERS, [[d[h] for h in _SALVAGE_HEADERS] for d in decisions], indent="  ")
    else:
        printer.line("the folders on disk agree with the kept journal")
    printer.line()


def _cmd_recover(args: argparse.Namespace) -> int:
    """``shipslog recover ROOT``: print the recovery plan, then (unless --dry-run) carry it out."""
    from shipslog import Engine
    from shipslog.engine import EngineLockedError, Registry
    from shipslog.journal import JournalLockedError, RootLock
    from shipslog.recovery import check_invariants, list_root, plan, salvage

    operations = load_operations(args.operations)
    registry = Registry(operations)
    root = require_root(args.root)
    salvaged: dict[str, Any] | None = None
    if args.salvage:
        with reading(root):
            report = salvage(root, operations, dry_run=args.dry_run)
        salvaged = msgspec.to_builtins(report)
        if args.dry_run:
            return _print_recover_result(
                {"root": root, "dry_run": True, "salvage": salvaged, "plan": [], "done": [], "quarantined": [], "violations": []},
                as_json=args.json,
            )
    lock = RootLock(root)
    try:
        lock.acquire()  # the plan of a root another engine has open would be wrong: refuse it
    except JournalLockedError as exc:
        raise EngineLockedError(root, exc.holder) from None
    try:
        with reading(root):
            state = replay_root(root, registry).state
            actions = plan(state, list_root(root), registry)
    finally:
        lock.release()
    result: dict[str, Any] = {
        "root": root,
        "dry_run": bool(args.dry_run),
        "plan": _plan_rows(actions),
        "done": [],
        "quarantined": [],
        "violations": [],
    }
    if salvaged is not None:
        result["salvage"] = salvaged
    if not args.dry_run:
        engine = Engine.open(root, operations=operations)
        try:
            result["done"] = [
                {"operation": r.action.target, "action": r.action.kind, "outcome": r.outcome} for r in engine.recovery.results
            ]
            result["quarantined"] = list(engine.recovery.quarantined)
            found = check_invariants(engine.root, engine.state, registry=engine.registry, live_session=engine.session)
            result["violations"] = [{"invariant": v.invariant, "message": v.message, "path": v.path} for v in found]
        finally:
            engine.close()
    return _print_recover_result(result, as_json=args.json)


def _print_recover_result(result: dict[str, Any], *, as_json: bool) -> int:
    """Print what ``recover`` found and did (one JSON object with --json); return the exit code."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        sys.stdout.flush()
    else:
        _print_recover(result, Printer())
    return EXIT_VIOLATIONS if result["violations"] else EXIT_OK


# -- entry point --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``shipslog`` command line with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func: _Command = args.func
    try:
        return func(args)
    except BrokenPipeError:
        # The reader closed stdout early (``shipslog log ROOT | head``): it has what it wanted.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: interrupted; what was in progress is left as a crash leaves it, and the next open recovers it", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ShipslogError as exc:
        if args.debug:
            raise
        return _error_line(str(exc) or type(exc).__name__, EXIT_ERROR)
    except OSError as exc:  # a file the command may not read or write (a read-only root, permissions)
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        return _error_line(f"{exc.strerror or exc}{where}", EXIT_ERROR)
    except Exception as exc:
        if args.debug:
            raise
        return _error_line(f"internal error ({type(exc).__name__}: {exc}); run again with --debug and report the traceback", EXIT_INTERNAL)


def _error_line(text: str, code: int) -> int:
    """Print ``text`` as the one error line on stderr; return ``code``."""
    print(f"{PROG}: error: {printable(' '.join(text.split()))}", file=sys.stderr)
    return code
