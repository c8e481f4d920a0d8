"""The ``shipslog`` command line: argument parsing, logging set-up, and printing.

Every subcommand is a small function ``_cmd_<name>(args) -> int`` bound to its
parser with ``set_defaults(func=...)``; adding one means adding its parser in
:func:`build_parser` and its function here.  Library code logs with
:mod:`logging` and returns data; only this module prints.

Exit codes: 0 when the command did what it was asked, 2 for a usage error
(argparse's own) or an error shipslog raised on purpose
(:class:`~shipslog.journal.ShipslogError`), which is printed as one line on
stderr unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from shipslog.journal import ShipslogError

__all__ = ["build_parser", "main"]

PROG = "shipslog"
EXIT_OK = 0
EXIT_ERROR = 2

_Command = Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    """argparse type: an integer of 1 or more (underscores allowed, as in 1_000_000)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of 1 or more, got {value}")
    return value


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
        parents=[_common_flags(top_level=True)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = commands.add_parser(
        "bench", help="measure shipslog on this disk", description="Measure shipslog on this disk."
    )
    benches = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)

    journal = benches.add_parser(
        "journal",
        parents=[sub_flags],
        help="durable appends (vs raw fdatasync and SQLite) and replay",
        description=(
            "Measure durable journal appends against a raw write+fdatasync loop and SQLite "
            "(WAL, synchronous=FULL), group commit from several threads, and replay, in a "
            "temporary folder under --dir that is removed afterwards."
        ),
    )
    journal.add_argument(
        "--json", action="store_true", help="print one JSON object and nothing else on stdout"
    )
    journal.add_argument(
        "--dir",
        default=".",
        metavar="DIR",
        help="folder on the disk to measure (default: the current folder; /tmp may be tmpfs)",
    )
    journal.add_argument(
        "--records",
        type=_positive_int,
        default=2000,
        metavar="N",
        help="records per append measurement (default: 2000)",
    )
    journal.add_argument(
        "--replay-events",
        type=_positive_int,
        default=1_000_000,
        metavar="M",
        help="records written, then replayed (default: 1000000)",
    )
    journal.add_argument(
        "--threads",
        type=_positive_int,
        default=8,
        metavar="T",
        help="appender threads for group commit (default: 8)",
    )
    journal.set_defaults(func=_cmd_bench_journal, parser=journal)

    engine = benches.add_parser(
        "engine",
        parents=[sub_flags],
        help="reducer replay, open time with long histories, and an empty checkpoint vs one fsync",
        description=(
            "Measure full reducer replay of a long lifecycle history, Engine.open of roots with 10,000 "
            "and with --records records of history (snapshots on), and an empty checkpoint beside one "
            "write+fsync, in a temporary folder under --dir that is removed afterwards."
        ),
    )
    engine.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    engine.add_argument(
        "--dir", default=".", metavar="DIR", help="folder on the disk to measure (default: the current folder)"
    )
    engine.add_argument(
        "--records",
        type=_positive_int,
        default=1_000_000,
        metavar="N",
        help="records of history for replay and open_ms_1m (default: 1000000)",
    )
    engine.set_defaults(func=_cmd_bench_engine, parser=engine)

    checkpoint = benches.add_parser(
        "checkpoint",
        parents=[sub_flags],
        help="full checkpoint save/load, async save and LoRA merge vs raw write, torch.save/load",
        description=(
            "Measure, with the same N MiB of float32 tensors: a raw write+fsync, torch.save+fsync, the full "
            "engine checkpoint operation (fsync on), a verified load beside torch.load(weights_only=True), how "
            "long AsyncCheckpointer.save blocks its caller, and merge_lora beside a plain merge loop, in a "
            "temporary folder under --dir that is removed afterwards.  Needs torch (pip install 'shipslog[gpu]')."
        ),
    )
    checkpoint.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    checkpoint.add_argument(
        "--dir", default=".", metavar="DIR", help="folder on the disk to measure (default: the current folder; /tmp may be tmpfs)"
    )
    checkpoint.add_argument(
        "--mib",
        type=_positive_int,
        default=512,
        metavar="N",
        help="MiB of float32 tensors to save, load and merge (default: 512)",
    )
    checkpoint.set_defaults(func=_cmd_bench_checkpoint, parser=checkpoint)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(name)s: %(levelname)s: %(message)s", force=True
    )


# -- bench journal ------------------------------------------------------------------

_RATE_ROWS = (
    ("raw write + fdatasync", "raw_fdatasync_per_s"),
    ("sqlite WAL synchronous=FULL", "sqlite_wal_full_per_s"),
    ("journal append", "journal_append_per_s"),
    ("group commit", "group_commit_per_s"),
    ("replay", "replay_events_per_s"),
)

_TARGET_ROWS = (
    ("journal / raw", "journal_vs_raw", "journal_vs_raw_ge_0_9", ">= 0.9"),
    ("journal / sqlite", "journal_vs_sqlite", "journal_vs_sqlite_ge_1_3", ">= 1.3"),
    ("group / single", "group_vs_single", "group_vs_single_ge_5", ">= 5"),
)


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
            label = f"{label} ({result['group_commit_threads']} threads)"
        lines.append(f"  {label:<30} {result[key]:>12,}")
    lines += ["", f"  {'target':<30} {'value':>12}   {'wanted':<12} result"]
    ratios, targets = result["ratios"], result["targets"]
    for label, ratio_key, target_key, wanted in _TARGET_ROWS:
        verdict = "PASS" if targets[target_key] else "MISS"
        lines.append(f"  {label:<30} {ratios[ratio_key]:>12.3f}   {wanted:<12} {verdict}")
    verdict = "PASS" if targets["replay_ge_1m"] else "MISS"
    lines.append(
        f"  {'replay events/s':<30} {result['replay_events_per_s']:>12,}   {'>= 1,000,000':<12} {verdict}"
    )
    return "\n".join(lines) + "\n"


def _cmd_bench_journal(args: argparse.Namespace) -> int:
    """``shipslog bench journal``: run the journal benchmark and print its result."""
    from ._bench_journal import run_journal_bench

    if not os.path.isdir(args.dir):
        args.parser.error(f"--dir {args.dir!r} is not a folder")
    if args.records < args.threads:
        args.parser.error(f"--records ({args.records}) must be at least --threads ({args.threads})")
    result = run_journal_bench(
        args.dir, records=args.records, replay_events=args.replay_events, threads=args.threads
    )
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(_format_bench_journal(result))
    sys.stdout.flush()
    return EXIT_OK


# -- bench engine -------------------------------------------------------------------


def _format_bench_engine(result: dict[str, Any]) -> str:
    """The readable table of a ``run_engine_bench`` result."""
    t = result["targets"]

    def verdict(key: str) -> str:
        return "PASS" if t[key] else "MISS"

    lines = [
        f"shipslog bench engine in {result['dir']}: {result['replay_events']:,} records of history",
        "",
        f"  {'measure':<34} {'value':>12}   {'wanted':<22} result",
        f"  {'replay (events/s)':<34} {result['replay_events_per_s']:>12,}   {'>= 1,000,000':<22} {verdict('replay_ge_1m')}",
        f"  {'open, 10k records (ms)':<34} {result['open_ms_10k']:>12.2f}",
        f"  {'open, long history (ms)':<34} {result['open_ms_1m']:>12.2f}   {'<= 50':<22} {verdict('open_ms_1m_le_50')}",
        f"  {'open long / open 10k':<34} {result['ratios']['open_1m_vs_10k']:>12.3f}   {'<= 1.5':<22} {verdict('open_1m_le_1_5x_10k')}",
        f"  {'empty checkpoint (ms)':<34} {result['checkpoint_empty_ms']:>12.3f}",
        f"  {'one write + fsync (ms)':<34} {result['fsync_ms']:>12.3f}",
        f"  {'checkpoint / fsync':<34} {result['ratios']['checkpoint_vs_fsync']:>12.3f}   {'<= 6':<22} {verdict('checkpoint_le_6x_fsync')}",
    ]
    return "\n".join(lines) + "\n"


def _cmd_bench_engine(args: argparse.Namespace) -> int:
    """``shipslog bench engine``: run the engine benchmark and print its result."""
    from ._bench_engine import run_engine_bench

    if not os.path.isdir(args.dir):
        args.parser.error(f"--dir {args.dir!r} is not a folder")
    if args.records < 20_000:
        args.parser.error(f"--records must be at least 20000 (the short history has 10000), got {args.records}")
    result = run_engine_bench(args.dir, records=args.records)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(_format_bench_engine(result))
    sys.stdout.flush()
    return EXIT_OK


# -- bench checkpoint ---------------------------------------------------------------


def _format_bench_checkpoint(result: dict[str, Any]) -> str:
    """The readable table of a ``run_checkpoint_bench`` result."""
    t, r = result["targets"], result["ratios"]

    def verdict(key: str) -> str:
        return "PASS" if t[key] else "MISS"

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
        f"  {'async save, blocking part':<40} {result['async_blocking_s']:>10.4f}",
        f"  {'async save, first (allocates buffers)':<40} {result['async_blocking_first_s']:>10.4f}",
        f"  {'async save, background part':<40} {result['async_persist_s']:>10.4f}",
        f"  {'merge_lora':<40} {result['merge_s']:>10.4f}   peak extra {mib(result['merge_peak_extra_bytes'])}",
        f"  {'plain merge loop':<40} {result['merge_reference_s']:>10.4f}   peak extra {mib(result['merge_reference_peak_extra_bytes'])}",
        "",
        f"  {'target':<40} {'value':>10}   {'wanted':<10} result",
        f"  {'checkpoint / raw write':<40} {r['save_vs_raw']:>10.3f}   {'<= 1.1':<10} {verdict('save_le_1_1x_raw')}",
        f"  {'checkpoint / torch.save':<40} {r['save_vs_torch_save']:>10.3f}   {'<= 1':<10} {verdict('save_le_torch_save')}",
        f"  {'verified load / torch.load':<40} {r['load_vs_torch_load']:>10.3f}   {'<= 1':<10} {verdict('load_le_torch_load')}",
        f"  {'async blocking / checkpoint':<40} {r['async_blocking_vs_save']:>10.3f}   {'<= 0.1':<10} {verdict('async_blocking_le_0_1x_save')}",
        f"  {'merge_lora / plain merge':<40} {r['merge_vs_reference']:>10.3f}   {'<= 1.2':<10} {verdict('merge_le_1_2x_reference')}",
    ]
    return "\n".join(lines) + "\n"


def _cmd_bench_checkpoint(args: argparse.Namespace) -> int:
    """``shipslog bench checkpoint``: run the checkpoint benchmark and print its result."""
    if not os.path.isdir(args.dir):
        args.parser.error(f"--dir {args.dir!r} is not a folder")
    from ._bench_checkpoint import run_checkpoint_bench

    result = run_checkpoint_bench(args.dir, mib=args.mib)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(_format_bench_checkpoint(result))
    sys.stdout.flush()
    return EXIT_OK


# -- entry point --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``shipslog`` command line with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func: _Command = args.func
    try:
        return func(args)
    except ShipslogError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
