"""The inspection commands, ``gc`` and ``demo`` of the ``shipslog`` command line.

Read-only commands (status, log, tail, verify, checkpoints, pointers, replay,
export) never take the writer's lock and never change a byte: they are safe
on a live host.  They start from the newest usable snapshot and replay only
the records after it, as ``Engine.open`` does (``verify`` replays every
record).  Every command that reads a root takes ``--operations MODULE``: a
host's own operation types, registered beside the built-ins.  Exit codes: 0 healthy / done, 1 findings (recovery needed,
integrity problem), 2 usage error or unreadable root.  Tables go through
:mod:`shipslog.tools._render` (rich on a terminal, plain columns otherwise);
``--json`` output never does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec

from shipslog.engine import (
    SALVAGE_MARKER,
    DataFileError,
    Registry,
    UnknownOperationError,
    plan_retention,
    probe_worker,
    validate_data_file,
    worker_incarnations,
)
from shipslog.journal import CorruptJournalError, ShipslogError

from ._cli_types import non_negative_int, positive_int
from ._demo import DEFAULT_CRASH_AT, DEFAULT_FILES
from ._inspect import (
    RootView,
    event_fields,
    event_kind,
    format_time,
    live_holder,
    open_records,
    open_view,
    reading,
)
from ._operations_module import OPERATIONS_HELP, load_operations
from ._render import ByteProgress, Printer, event_style, printable, shipslog_command

__all__ = ["EXIT_FINDINGS", "EXIT_OK", "add_commands"]

EXIT_OK = 0
EXIT_FINDINGS = 1

_RECORD_HEADERS = ["seq", "time", "session", "operation", "event", "details"]
_RECORD_STYLES = ["dim", "dim", "", "", "bold", "dim"]


def _registry(args: argparse.Namespace) -> Registry:
    """The registry of the built-ins and the types of ``--operations MODULE`` (one-line error when it cannot be loaded)."""
    return Registry(load_operations(args.operations))


def _out(text: str) -> None:
    """Write ``text`` to stdout as it is, but for control characters (escaped: names come from disk)."""
    sys.stdout.write(printable(text, newlines=True))
    sys.stdout.flush()


def _note_refused(view: RootView) -> None:
    """Say on stderr, in one line, that a record shown is one the engine refuses to replay (the output stays data)."""
    if view.refused is not None:
        sys.stderr.write(printable(f"shipslog: note: the engine refuses to open this root: {view.refused}") + "\n")
        sys.stderr.flush()


def _json(obj: Any) -> None:
    _out(json.dumps(msgspec.to_builtins(obj), indent=2, default=str) + "\n")


def _details(fields: dict[str, Any], limit: int = 80) -> str:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _record_cells(rec: Any) -> list[str]:
    """A record as the cells of the log and tail tables (see ``_RECORD_HEADERS``)."""
    return [str(rec.seq), format_time(rec.time), rec.session, rec.event.op, event_kind(rec.event), _details(event_fields(rec.event))]


# -- status ---------------------------------------------------------------------------


def _findings(view: RootView) -> list[str]:
    found = []
    live = view.state.session.id if view.holder and view.state.session else None
    for op in view.state.ops.values():
        if f"session-{op.session}" != live:
            found.append(f"{op.type} {op.id} is {op.state!r} and its session is gone: run 'shipslog recover {view.root}'")
    if view.torn is not None:
        where = f"{view.torn.path} offset {view.torn.offset}"
        found.append(f"torn frame at {where} ({'a write in progress' if view.holder else 'repaired at the next open'})")
    if view.unregistered:
        found.append(_unregistered_message(view.unregistered))
    if os.path.lexists(os.path.join(view.root, SALVAGE_MARKER)):
        found.append(f"a salvage of this root was interrupted ({SALVAGE_MARKER} is present): no engine opens it until "
                     f"'shipslog recover --salvage {view.root}' runs again")
    for repair in view.state.journal_repairs:
        found.append(
            f"{repair}; records after it may have been acknowledged: run 'shipslog recover --salvage {view.root}' "
            "to reconcile the folders on disk with the journal (this finding stays until then)"
        )
    return found


def _unregistered_message(kinds: dict[str, int]) -> str:
    """One line naming the unregistered event kinds of a root and how many records each has."""
    listed = ", ".join(f"{kind} ({count} record{'s' if count != 1 else ''})" for kind, count in sorted(kinds.items()))
    return (
        f"events of operation types this command does not know: {listed}; their operations are left out of this view "
        "(the host registers them with Engine.open(root, operations=[...]); 'shipslog log' shows the records)"
    )


def _cmd_status(args: argparse.Namespace) -> int:
    view = open_view(args.root, registry=_registry(args))
    st = view.status()
    findings = _findings(view)
    free = view.free_bytes()
    if args.json:
        replayed = {"snapshot_seq": view.snapshot_seq, "records": view.replayed}
        _json({"root": view.root, "live": view.holder, "status": st, "free_bytes": free, "findings": findings, "replayed": replayed})
        return EXIT_FINDINGS if findings else EXIT_OK
    session = st.session
    pairs = [("root", view.root)]
    if view.holder:
        pairs.append(("session", f"live: {view.holder}"))
    elif session is not None:
        pairs.append(("session", f"{session.id} {session.state} (pid {session.pid} on {session.host})"))
    pairs.append(("shutdown", f"previous session: {st.shutdown}; unclean shutdowns recorded: {st.unclean_sessions}"))
    pairs.append(("training", f"{st.training.data_file} at step {st.training.step}" if st.training else "no run in progress"))
    pairs.append(("global step", str(st.global_step)))
    latest = st.latest
    pairs.append(("latest", f"{latest.path} (step {latest.step}, {latest.bytes} bytes)" if latest else "no committed checkpoint"))
    pairs.append(("checkpoints", f"{st.checkpoints} committed, models {st.models}"))
    pairs += [("pointer", f"{name} -> {p.target}") for name, p in sorted(st.pointers.items())]
    pairs += [
        ("run", f"{os.path.basename(run.data_file)} {run.state} steps {run.start_step}..{run.step} ({run.op})") for run in st.runs[:5]
    ]
    with reading(view.root):
        for op in worker_incarnations(view.state):
            alive = "alive" if op.info.get("pid") and probe_worker(int(op.info["pid"]), float(op.info.get("create_time", 0.0))) else "not running"
            pairs.append(("worker", f"{op.info.get('name')} pid {op.info.get('pid')} attempt {op.info.get('attempt')} {op.state} ({alive})"))
    pairs += [("in flight", f"{op.type} {op.id} {op.state}") for op in st.in_flight if op.type != "worker"]
    pairs.append(("disk", f"{free:,} bytes free; largest checkpoint {st.largest_checkpoint_bytes:,} bytes"))
    pairs += [("FINDING", f) for f in findings]
    Printer().pairs(pairs, styles={"FINDING": "bold red"})
    return EXIT_FINDINGS if findings else EXIT_OK


# -- log, export, replay ----------------------------------------------------------------


def _record_dict(rec: Any) -> dict[str, Any]:
    return {"seq": rec.seq, "time": rec.time, "session": rec.session, "kind": event_kind(rec.event), "op": rec.event.op, **event_fields(rec.event)}


def _cmd_log(args: argparse.Namespace) -> int:
    view = open_records(args.root, registry=_registry(args))
    last = view.last_seq
    if args.since > last + 1:
        args.parser.error(f"--since {args.since} is past the end of the journal (last seq {last})")
    if args.until is not None and args.until > last:
        args.parser.error(f"--until {args.until} is past the end of the journal (last seq {last})")
    if args.until is not None and args.until < args.since:
        args.parser.error(f"--until {args.until} is before --since {args.since}; give --until at or after --since")
    rows: list[Any] = []
    seen_kinds: set[str] = set()
    seen_ops: set[str] = set()
    for rec in view.records(args.since, args.until):
        kind = event_kind(rec.event)
        seen_kinds.add(kind)
        seen_ops.add(rec.event.op)
        if args.op is not None and rec.event.op != args.op:
            continue
        if args.kind is not None and kind != args.kind:
            continue
        rows.append(rec)
    if args.op is not None and not rows and args.op not in seen_ops:
        args.parser.error(f"no record of operation {args.op!r} in seq {args.since}..{args.until or last}; see 'shipslog log ROOT' for the op ids")
    if args.kind is not None and args.kind not in view.registry.event_classes and args.kind not in seen_kinds:
        known = sorted({*view.registry.event_classes, *seen_kinds})
        args.parser.error(f"unknown --kind {args.kind!r}; known kinds: {', '.join(known)}")
    if args.limit is not None:
        rows = rows[-args.limit:]
    _note_refused(view)
    if args.json:
        _json([_record_dict(r) for r in rows])
        return EXIT_OK
    Printer().table(_RECORD_HEADERS, [_record_cells(r) for r in rows], right=("seq",), styles={"event": event_style})
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    view = open_records(args.root, registry=_registry(args))
    encode = msgspec.json.Encoder().encode
    out = sys.stdout.buffer
    for rec in view.records():
        out.write(encode(_record_dict(rec)) + b"\n")
    out.flush()
    _note_refused(view)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        view = open_view(args.root, until=args.until, registry=registry)
    except ShipslogError:
        raise  # a damaged or newer journal is not a usage error (several of these are ValueErrors too)
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.json:
        _json({**msgspec.to_builtins(view.state), "unregistered": view.unregistered})
        return EXIT_OK
    st = view.status()
    state = view.state
    by_step = sorted(state.checkpoints.values(), key=lambda a: (a.step or 0, a.seq))

    def listed(items: list[str]) -> str:
        return ", ".join(items) if items else "none"

    unregistered = f"  {_unregistered_message(view.unregistered)}\n" if view.unregistered else ""
    _out(
        f"state of {view.root} as of seq {state.seq}\n"
        f"  global step {st.global_step}; latest checkpoint {st.latest.path if st.latest else 'none'}\n"
        f"  checkpoints (by step): {listed([f'{a.name} (step {a.step})' for a in by_step])}\n"
        f"  models: {listed(sorted(state.models))}\n"
        f"  pointers: {listed([f'{n} -> {p.target}' for n, p in sorted(state.pointers.items())])}\n"
        f"  in progress: {listed([f'{o.type} {o.id} ({o.state})' for o in state.ops.values()])}\n"
        f"{unregistered}"
    )
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    view = open_records(args.root, registry=_registry(args))
    since = max(1, view.last_seq - args.lines + 1)
    printer = Printer()
    first = list(view.records(since)) if args.lines else []
    widths = [max([len(h), *(len(printable(c)) for c in cells)]) for h, *cells in zip(_RECORD_HEADERS, *map(_record_cells, first))]
    widths = widths or [len(h) for h in _RECORD_HEADERS]

    def row(rec: Any) -> None:  # the columns line up; a longer cell later widens its column from there on
        cells = _record_cells(rec)
        widths[:] = [max(w, len(printable(c))) for w, c in zip(widths, cells)]
        printer.fields(cells, [*_RECORD_STYLES[:4], event_style(cells[4]) or "bold", _RECORD_STYLES[5]], widths)

    if args.json:  # one JSON object per line, flushed as it comes: what a script follows
        def row(rec: Any) -> None:
            _out(json.dumps(_record_dict(rec), sort_keys=True) + "\n")
            sys.stdout.flush()

    _note_refused(view)
    if not args.json:
        printer.fields(_RECORD_HEADERS, ["bold"] * len(_RECORD_HEADERS), widths)
    last = since - 1
    for rec in first:
        row(rec)
        last = rec.seq
    while args.follow:
        time.sleep(args.interval)
        for rec in view.records(last + 1):
            row(rec)
            last = rec.seq
    return EXIT_OK


# -- checkpoints, pointers ---------------------------------------------------------------


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    view = open_view(args.root, registry=_registry(args))
    arts = sorted([*view.state.checkpoints.values(), *view.state.models.values()], key=lambda a: (a.artifact, a.step or 0, a.seq))
    if args.json:
        _json({"latest": view.state.latest, "items": arts})
        return EXIT_OK
    Printer().table(
        ["kind", "name", "step", "files", "bytes", "committed", "path"],
        [[a.artifact + (" *" if a.name == view.state.latest and a.artifact == "checkpoint" else ""), a.name, str(a.step),
          str(a.files), f"{a.bytes:,}", format_time(a.time), a.path] for a in arts],
        right=("step", "files", "bytes"),
    )
    return EXIT_OK


def _cmd_pointers(args: argparse.Namespace) -> int:
    view = open_view(args.root, registry=_registry(args))
    pointers = sorted(view.state.pointers.values(), key=lambda p: p.name)
    if args.json:
        _json(pointers)
        return EXIT_OK
    Printer().table(["pointer", "target", "set at seq", "time"], [[p.name, p.target, str(p.seq), format_time(p.time)] for p in pointers])
    return EXIT_OK


# -- verify -------------------------------------------------------------------------------


_ADVICE = {
    "journal-verifies": "keep a copy of the root and restore the damaged segment from a backup; "
    "the other invariants were not checked, and the engine refuses the root until the journal verifies",
    "ops-terminal": "run 'shipslog recover {root}' to finish or roll back the operation",
    "pointers-verify": "restore the target from a backup, or move the pointer to a checkpoint or model that verifies "
    "(Engine.set_pointer writes its file again)",
    "checkpoints-verify": "restore the folder from a backup; recovery never rewrites a committed file",
    "adapters-kept": "restore the adapter or its merged model from a backup",
    "nothing-unaccounted": "run 'shipslog recover {root}': it moves the entry to quarantine/ (nothing is deleted)",
    "recovery-idempotent": "run 'shipslog recover {root}' again and report this as a bug if it persists",
    "events-registered": "inspect them with 'shipslog log {root}'; an engine opens the root only with their types registered, "
    "and the invariants of their operations were not checked",
}


def _verify_findings(root: str, args: argparse.Namespace) -> tuple[int | None, list[Any], bool]:
    """The seq verified (None when the journal is damaged), the violations of ``root``, and whether a live writer
    holds it.

    Every record is replayed, from the first one (no snapshot): verify holds the whole history to the rules.
    """
    from shipslog.recovery import Violation, check_invariants

    registry = _registry(args)
    try:
        view = open_view(root, registry=registry, snapshots=False)
    except CorruptJournalError as exc:
        return None, [Violation("journal-verifies", f"corrupt journal at {exc.where}: {exc.reason}", exc.path)], live_holder(root) is not None
    live = view.state.session.id.removeprefix("session-") if view.holder and view.state.session else None
    unregistered = [Violation("events-registered", _unregistered_message(view.unregistered))] if view.unregistered else []

    def check(on_file: Any = None) -> list[Any]:
        with reading(view.root):
            found = check_invariants(view.root, view.state, registry=view.registry, live_session=live, deep=args.deep, on_file=on_file)
        return unregistered + found

    if not args.deep:
        return view.state.seq, check(), bool(view.holder)
    arts = [*view.state.checkpoints.values(), *view.state.models.values(), *view.state.adapters.values()]
    with ByteProgress("re-checksumming committed files", sum(a.bytes for a in arts)) as progress:
        return view.state.seq, check(progress.advance), bool(view.holder)


_LIVE_RECHECKS = 5
"""On a live root, how many times verify looks again before it reports a finding (one that was not there again
was a moment of the writer's work: a folder renamed between the listing and the replay)."""


def _consistent_findings(root: str, args: argparse.Namespace) -> tuple[int | None, list[Any]]:
    """:func:`_verify_findings`, and on a root a live writer holds, only the findings that persist when looked at again."""
    seq, found, live = _verify_findings(root, args)
    for _ in range(_LIVE_RECHECKS):
        if not found or not live:
            break
        time.sleep(0.05)
        seq, again, live = _verify_findings(root, args)
        before = {_finding_key(v) for v in found}
        found = [v for v in again if _finding_key(v) in before]
    return seq, found


def _finding_key(v: Any) -> tuple[str, str]:
    return v.invariant, v.path or v.message


def _cmd_verify(args: argparse.Namespace) -> int:
    seq, found = _consistent_findings(args.root, args)
    root = os.path.abspath(args.root)
    if args.json:
        _json({"root": root, "deep": args.deep, "seq": seq, "violations": found})
        return EXIT_FINDINGS if found else EXIT_OK
    printer = Printer()
    if not found:
        printer.line(f"{root}: journal ({seq} records), snapshots and every invariant verify{' (every checksum)' if args.deep else ''}", "green")
    for v in found:
        printer.line(f"{v.invariant}: {v.message}{' (' + v.path + ')' if v.path else ''}", "bold red")
        printer.line(f"  what to do: {_ADVICE.get(v.invariant, 'see the message above').format(root=root)}")
    return EXIT_FINDINGS if found else EXIT_OK


# -- validate -------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    """``shipslog validate FILE``: the check ``Engine.run`` makes, with a progress bar on a terminal."""
    path = os.path.abspath(args.file)
    try:
        total = os.path.getsize(path)
    except OSError:
        total = 0  # validate_data_file says what is wrong with it
    try:
        with ByteProgress(f"validating {os.path.basename(path)}", total) as progress:
            summary = validate_data_file(path, args.field or (), on_progress=lambda n: progress.advance(path, n))
    except DataFileError as exc:
        if args.json:
            _json({"file": path, "valid": False, "line": exc.line, "error": str(exc)})
        else:
            sys.stderr.write(f"shipslog: {printable(str(exc))}\n")
        return EXIT_FINDINGS
    if args.json:
        _json({"file": path, "valid": True, "lines": summary.lines, "bytes": summary.size, "crc32": summary.crc32})
    else:
        Printer().line(f"{path}: {summary.lines} lines, {summary.size} bytes, every line a JSON object"
                       + (f" with {', '.join(args.field)}" if args.field else ""), "green")
    return EXIT_OK


# -- gc -------------------------------------------------------------------------------------


def _cmd_gc(args: argparse.Namespace) -> int:
    from shipslog import Engine

    operations = load_operations(args.operations)
    view = open_view(args.root, registry=Registry(operations))  # refuses a folder that is not a root before anything is created
    if args.dry_run:  # from the read-only view: no lock, no session, no recovery, not a byte changed
        if view.unregistered:  # the real run would refuse the root: so does its dry run
            raise UnknownOperationError(list(view.unregistered))
        result = msgspec.structs.replace(plan_retention(view.state, args.keep), dry_run=True)
    else:
        with Engine.open(view.root, operations=operations) as engine:
            result = engine.retain(args.keep)
    if args.json:
        _json(result)
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    lines = [f"{verb}: {p}" for p in result.delete] + [f"kept: {p} ({why})" for p, why in sorted(result.keep.items())]
    _out("\n".join(lines or ["nothing to delete"]) + "\n")
    return EXIT_OK


# -- demo -------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    folder = os.path.abspath(args.dir or f"shipslog-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        args.parser.error(f"{folder} is not an empty folder; give a new one")
    emit = None if args.json else (lambda line: _out(line + "\n"))
    try:
        _lines, summary = run_demo(folder, crash_at=args.crash_at, files=args.files, emit=emit)
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.json:
        _json(summary)
        return EXIT_OK
    root = summary["root"]
    prog = shipslog_command()
    _out(f"\n4. {prog} status {root}\n")
    from shipslog.tools._cli import main as cli_main

    code = cli_main(["status", root])
    _out(
        "\nlook around:\n"
        f"  {prog} log {root} --kind recovery.step\n"
        f"  {prog} checkpoints {root}\n"
        f"  {prog} verify {root} --deep\n"
    )
    return code


def add_commands(commands: Any, sub_flags: argparse.ArgumentParser) -> None:
    """Add the inspection commands, gc and demo to the ``shipslog`` subparsers."""

    def command(name: str, help_text: str, func: Any, *, root: bool = True, json_flag: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, parents=[sub_flags], help=help_text, description=help_text)
        if root:
            p.add_argument("root", metavar="ROOT", help="the host root (the folder an Engine was opened on)")
            p.add_argument("--operations", metavar="MODULE", default=None, help=OPERATIONS_HELP)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=func, parser=p)
        return p

    command("status", "the host at a glance: session, runs, operations in flight, pointers, newest checkpoint, disk", _cmd_status)
    log = command("log", "the journal as a table (seq, time, session, operation, event, details)", _cmd_log)
    log.add_argument("--op", metavar="ID", help="only this operation")
    log.add_argument("--kind", metavar="KIND", help="only this event kind (e.g. checkpoint.committed)")
    log.add_argument("--since", type=positive_int, default=1, metavar="SEQ", help="from this seq (default 1)")
    log.add_argument("--until", type=positive_int, default=None, metavar="SEQ", help="up to this seq (at most the last one)")
    log.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the last N matching records")
    tail = command("tail", "the last records of the journal; -f follows it as it grows", _cmd_tail)
    tail.add_argument("-n", "--lines", type=non_negative_int, default=10, metavar="N", help="how many records to show first (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records until interrupted")
    tail.add_argument("--interval", type=float, default=0.2, metavar="S", help=argparse.SUPPRESS)
    verify = command("verify", "verify the journal, snapshots and every invariant; exit 1 on findings", _cmd_verify)
    verify.add_argument("--deep", action="store_true", help="also re-checksum every committed file (a progress bar on a terminal)")
    replay = command("replay", "the engine state as of a record", _cmd_replay)
    replay.add_argument("--until", type=positive_int, required=True, metavar="SEQ", help="the last record to replay (1 or more)")
    command("checkpoints", "committed checkpoints and models, by step", _cmd_checkpoints)
    command("pointers", "pointers and what they name", _cmd_pointers)
    export = command("export", "every record as one JSON line", _cmd_export, json_flag=False)
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="output format (jsonl)")
    validate = command(
        "validate", "check a JSONL data file as Engine.run does (a progress bar on a terminal); exit 1 naming the first bad line",
        _cmd_validate, root=False,
    )
    validate.add_argument("file", metavar="FILE", help="the JSONL data file")
    validate.add_argument("--field", action="append", metavar="NAME", help="a field every line must hold (repeatable)")
    gc = command("gc", "delete old checkpoints (never a pointer's target or the newest); takes the writer's lock", _cmd_gc)
    gc.add_argument("--keep", type=positive_int, required=True, metavar="N", help="keep the N newest checkpoints by step (1 or more)")
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; reads the root like status, changes no byte and takes no lock"
    )
    demo = command("demo", "run a real training host, kill it at a crash point, watch it recover", _cmd_demo, root=False)
    demo.add_argument("dir", nargs="?", metavar="DIR", help="a new folder for the demo (default: a new one here)")
    demo.add_argument(
        "--crash-at",
        metavar="POINT",
        help=f"the crash point, NAME or NAME@N (its N-th hit; default {DEFAULT_CRASH_AT}); a recovery.* point kills the "
        "restarted host during its recovery; an unknown name lists the known ones",
    )
    demo.add_argument(
        "--files", type=positive_int, default=DEFAULT_FILES, metavar="N", help=f"data files in the inbox (default {DEFAULT_FILES})"
    )
