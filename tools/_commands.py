"""The inspection commands, ``gc`` and ``demo`` of the ``shipslog`` command line.

Read-only commands (status, log, verify, checkpoints, pointers, replay,
export) never take the writer's lock and never change a byte: they are safe
on a live host.  Exit codes: 0 healthy / done, 1 findings (recovery needed,
integrity problem), 2 usage error or unreadable root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec

from shipslog.engine import probe_worker, worker_incarnations

from ._inspect import RootView, event_fields, event_kind, format_time, open_view

__all__ = ["EXIT_FINDINGS", "add_commands"]

EXIT_OK = 0
EXIT_FINDINGS = 1


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _json(obj: Any) -> None:
    _out(json.dumps(msgspec.to_builtins(obj), indent=2, default=str) + "\n")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def _details(fields: dict[str, Any], limit: int = 80) -> str:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    return found


def _cmd_status(args: argparse.Namespace) -> int:
    view = open_view(args.root)
    st = view.status()
    findings = _findings(view)
    free = view.free_bytes()
    if args.json:
        _json({"root": view.root, "live": view.holder, "status": st, "free_bytes": free, "findings": findings})
        return EXIT_FINDINGS if findings else EXIT_OK
    session = st.session
    lines = [f"root        {view.root}"]
    if view.holder:
        lines.append(f"session     live: {view.holder}")
    elif session is not None:
        lines.append(f"session     {session.id} {session.state} (pid {session.pid} on {session.host})")
    lines.append(f"shutdown    previous session: {st.shutdown}; unclean shutdowns recorded: {st.unclean_sessions}")
    lines.append(f"training    {st.training.data_file + ' at step ' + str(st.training.step) if st.training else 'no run in progress'}")
    lines.append(f"global step {st.global_step}")
    latest = st.latest
    lines.append(f"latest      {latest.path + ' (step ' + str(latest.step) + ', ' + str(latest.bytes) + ' bytes)' if latest else 'no committed checkpoint'}")
    lines.append(f"checkpoints {st.checkpoints} committed, models {st.models}")
    for name, p in sorted(st.pointers.items()):
        lines.append(f"pointer     {name} -> {p.target}")
    for run in st.runs[:5]:
        lines.append(f"run         {os.path.basename(run.data_file)} {run.state} steps {run.start_step}..{run.step} ({run.op})")
    for op in worker_incarnations(view.state):
        alive = "alive" if op.info.get("pid") and probe_worker(int(op.info["pid"]), float(op.info.get("create_time", 0.0))) else "not running"
        lines.append(f"worker      {op.info.get('name')} pid {op.info.get('pid')} attempt {op.info.get('attempt')} {op.state} ({alive})")
    for op in st.in_flight:
        if op.type != "worker":
            lines.append(f"in flight   {op.type} {op.id} {op.state}")
    lines.append(f"disk        {free:,} bytes free; largest checkpoint {st.largest_checkpoint_bytes:,} bytes")
    lines += [f"FINDING     {f}" for f in findings]
    _out("\n".join(lines) + "\n")
    return EXIT_FINDINGS if findings else EXIT_OK


# -- log, export, replay ----------------------------------------------------------------


def _record_dict(rec: Any) -> dict[str, Any]:
    return {"seq": rec.seq, "time": rec.time, "session": rec.session, "kind": event_kind(rec.event), "op": rec.event.op, **event_fields(rec.event)}


def _cmd_log(args: argparse.Namespace) -> int:
    view = open_view(args.root)
    if args.kind is not None and args.kind not in view.registry.event_classes:
        args.parser.error(f"unknown --kind {args.kind!r}; known kinds: {', '.join(sorted(view.registry.event_classes))}")
    last = view.state.seq
    if args.since > last + 1:
        args.parser.error(f"--since {args.since} is past the end of the journal (last seq {last})")
    rows: list[Any] = []
    for rec in view.records(args.since, args.until):
        if args.op is not None and rec.event.op != args.op:
            continue
        if args.kind is not None and event_kind(rec.event) != args.kind:
            continue
        rows.append(rec)
    if args.limit is not None:
        rows = rows[-args.limit:]
    if args.json:
        _json([_record_dict(r) for r in rows])
        return EXIT_OK
    _out(_table(
        ["seq", "time", "session", "operation", "event", "details"],
        [[str(r.seq), format_time(r.time), r.session, r.event.op, event_kind(r.event), _details(event_fields(r.event))] for r in rows],
    ))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    view = open_view(args.root)
    encode = msgspec.json.Encoder().encode
    out = sys.stdout.buffer
    for rec in view.records():
        out.write(encode(_record_dict(rec)) + b"\n")
    out.flush()
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    try:
        view = open_view(args.root, until=args.until)
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.json:
        _json(view.state)
        return EXIT_OK
    st = view.status()
    _out(
        f"state of {view.root} as of seq {view.state.seq}\n"
        f"  global step {st.global_step}; latest checkpoint {st.latest.path if st.latest else None}\n"
        f"  checkpoints {sorted(view.state.checkpoints)}\n  models {sorted(view.state.models)}\n"
        f"  pointers {{{', '.join(f'{n}: {p.target}' for n, p in sorted(view.state.pointers.items()))}}}\n"
        f"  in progress {[f'{o.type} {o.id} {o.state}' for o in view.state.ops.values()]}\n"
    )
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    view = open_view(args.root)
    since = max(1, view.state.seq - args.lines + 1)
    headers = ["seq", "time", "session", "operation", "event", "details"]

    def row(r: Any) -> str:
        return "  ".join([str(r.seq), format_time(r.time), r.session, r.event.op, event_kind(r.event), _details(event_fields(r.event))])

    _out("  ".join(headers) + "\n")
    last = since - 1
    for rec in view.records(since):
        _out(row(rec) + "\n")
        last = rec.seq
    while args.follow:
        time.sleep(args.interval)
        for rec in view.records(last + 1):
            _out(row(rec) + "\n")
            last = rec.seq
    return EXIT_OK


# -- checkpoints, pointers ---------------------------------------------------------------


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    view = open_view(args.root)
    arts = sorted([*view.state.checkpoints.values(), *view.state.models.values()], key=lambda a: (a.artifact, a.step or 0, a.seq))
    if args.json:
        _json({"latest": view.state.latest, "items": arts})
        return EXIT_OK
    _out(_table(
        ["kind", "name", "step", "files", "bytes", "committed", "path"],
        [[a.artifact + (" *" if a.name == view.state.latest and a.artifact == "checkpoint" else ""), a.name, str(a.step),
          str(a.files), f"{a.bytes:,}", format_time(a.time), a.path] for a in arts],
    ))
    return EXIT_OK


def _cmd_pointers(args: argparse.Namespace) -> int:
    view = open_view(args.root)
    pointers = sorted(view.state.pointers.values(), key=lambda p: p.name)
    if args.json:
        _json(pointers)
        return EXIT_OK
    _out(_table(["pointer", "target", "set at seq", "time"], [[p.name, p.target, str(p.seq), format_time(p.time)] for p in pointers]))
    return EXIT_OK


# -- verify -------------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    from shipslog.recovery import check_invariants

    view = open_view(args.root)
    live = view.state.session.id.removeprefix("session-") if view.holder and view.state.session else None
    found = check_invariants(view.root, view.state, registry=view.registry, live_session=live, deep=args.deep)
    if args.json:
        _json({"root": view.root, "deep": args.deep, "seq": view.state.seq, "violations": found})
    elif not found:
        _out(f"{view.root}: journal ({view.state.seq} records), snapshots and every invariant verify{' (every checksum)' if args.deep else ''}\n")
    else:
        _out("".join(f"{v.invariant}: {v.message}{' (' + v.path + ')' if v.path else ''}\n" for v in found))
    return EXIT_FINDINGS if found else EXIT_OK


# -- gc -------------------------------------------------------------------------------------


def _cmd_gc(args: argparse.Namespace) -> int:
    from shipslog import Engine

    view = open_view(args.root)  # refuses a folder that is not a root before anything is created
    with Engine.open(view.root) as engine:
        result = engine.retain(args.keep, dry_run=args.dry_run)
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

    folder = args.dir or os.path.abspath(f"shipslog-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(folder) and os.listdir(folder):
        args.parser.error(f"{folder} is not empty; give a new folder")
    try:
        lines, summary = run_demo(folder, crash_at=args.crash_at, files=args.files)
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.json:
        _json(summary)
    else:
        _out("\n".join(lines) + "\n\n")
        from shipslog.tools._cli import main as cli_main

        return cli_main(["status", os.path.join(folder, "host")])
    return EXIT_OK


def add_commands(commands: Any, sub_flags: argparse.ArgumentParser) -> None:
    """Add the inspection commands, gc and demo to the ``shipslog`` subparsers."""

    def command(name: str, help_text: str, func: Any, *, root: bool = True, json_flag: bool = True) -> argparse.ArgumentParser:
        p = commands.add_parser(name, parents=[sub_flags], help=help_text, description=help_text)
        if root:
            p.add_argument("root", metavar="ROOT", help="the host root (the folder an Engine was opened on)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=func, parser=p)
        return p

    command("status", "the host at a glance: session, runs, operations in flight, pointers, newest checkpoint, disk", _cmd_status)
    log = command("log", "the journal as a table (seq, time, session, operation, event, details)", _cmd_log)
    log.add_argument("--op", metavar="ID", help="only this operation")
    log.add_argument("--kind", metavar="KIND", help="only this event kind (e.g. checkpoint.committed)")
    log.add_argument("--since", type=int, default=1, metavar="SEQ", help="from this seq (default 1)")
    log.add_argument("--until", type=int, default=None, metavar="SEQ", help="up to this seq")
    log.add_argument("--limit", type=int, default=None, metavar="N", help="only the last N matching records")
    tail = command("tail", "the last records of the journal; -f follows it as it grows", _cmd_tail, json_flag=False)
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many records to show first (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records until interrupted")
    tail.add_argument("--interval", type=float, default=0.2, metavar="S", help=argparse.SUPPRESS)
    verify = command("verify", "verify the journal, snapshots and every invariant; exit 1 on findings", _cmd_verify)
    verify.add_argument("--deep", action="store_true", help="also re-checksum every committed file")
    replay = command("replay", "the engine state as of a record", _cmd_replay)
    replay.add_argument("--until", type=int, required=True, metavar="SEQ", help="the last record to replay")
    command("checkpoints", "committed checkpoints and models, by step", _cmd_checkpoints)
    command("pointers", "pointers and what they name", _cmd_pointers)
    export = command("export", "every record as one JSON line", _cmd_export, json_flag=False)
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="output format (jsonl)")
    gc = command("gc", "delete old checkpoints (never a pointer's target or the newest); takes the writer's lock", _cmd_gc)
    gc.add_argument("--keep", type=int, required=True, metavar="N", help="keep the N newest checkpoints by step")
    gc.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    demo = command("demo", "run a real training host, kill it at a crash point, watch it recover", _cmd_demo, root=False)
    demo.add_argument("dir", nargs="?", metavar="DIR", help="a new folder for the demo (default: a new one here)")
    demo.add_argument("--crash-at", metavar="POINT", help="the crash point (NAME or NAME@N; default checkpoint.after_durable@3)")
    demo.add_argument("--files", type=int, default=3, metavar="N", help="data files in the inbox (default 3)")
