"""Helpers for the engine tests: opening engines, reading the journal back, looking at files on disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from shipslog import Engine
from shipslog.engine import ArtifactInfo, EventRecord, OperationType, RawEvent, Registry
from shipslog.journal import JournalReader, set_crash_hook

SEGMENT_BYTES = 1 << 20
"""Segments of 1 MiB (still preallocated): reading a 64 MiB preallocated segment back scans its zeros (~0.1 s)."""


def open_engine(root: str | os.PathLike[str], **kw: Any) -> Engine:
    """``Engine.open`` without fsync (fast) and with small segments; pass ``fsync=True`` where fsync is the point."""
    kw.setdefault("fsync", False)
    kw.setdefault("segment_bytes", SEGMENT_BYTES)
    return Engine.open(root, **kw)


def kind_of(event: Any) -> str:
    """The ``kind`` tag of a decoded event (or of a :class:`RawEvent`)."""
    if isinstance(event, RawEvent):
        return event.kind
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def journal_records(root: str | os.PathLike[str], operations: Iterable[OperationType] = ()) -> list[EventRecord]:
    """Every record of ``root``'s journal, read from disk (no lock), events decoded."""
    reg = Registry(operations)
    reader = JournalReader(os.path.join(os.fspath(root), "journal"))
    return [reg.typed(r) for r in reader.records()]


def kinds(root: str | os.PathLike[str], operations: Iterable[OperationType] = ()) -> list[str]:
    """The event kinds of ``root``'s journal, in seq order."""
    return [kind_of(r.event) for r in journal_records(root, operations)]


def events_of(root: str | os.PathLike[str], op: str) -> list[str]:
    """The event kinds journaled for operation ``op``, in seq order."""
    return [kind_of(r.event) for r in journal_records(root) if r.event.op == op]


def tree(path: str | os.PathLike[str], *, skip: Iterable[str] = ("journal", "LOCK")) -> dict[str, Any]:
    """Everything under ``path`` (relative path -> file bytes, ``"<dir>"`` or ``"-> target"`` for links).

    Top-level names in ``skip`` are left out (the journal is compared record by record instead).
    """
    base = os.fspath(path)
    out: dict[str, Any] = {}
    if not os.path.exists(base):
        return out
    skipped = set(skip)
    for dirpath, dirnames, all_files in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        filenames = all_files
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skipped]
            filenames = [f for f in all_files if f not in skipped]
        for name in dirnames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            out[rel] = f"-> {os.readlink(full)}" if os.path.islink(full) else "<dir>"
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(full):
                out[rel] = f"-> {os.readlink(full)}"
            else:
                with open(full, "rb") as f:
                    out[rel] = f.read()
    return out


def write_files(folder: str | os.PathLike[str], files: Mapping[str, bytes]) -> None:
    """Create ``folder`` with ``files`` ('/'-separated relative path -> bytes)."""
    for rel, data in files.items():
        full = os.path.join(os.fspath(folder), *rel.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)


def commit_checkpoint(
    engine: Engine, name: str, step: int | None = None, files: Mapping[str, bytes] | None = None, **kw: Any
) -> ArtifactInfo:
    """Write and commit checkpoint ``name`` holding ``files`` (default: one small model file)."""
    content = files if files is not None else {"model.bin": f"weights of {name}".encode()}
    with engine.checkpoint(name, step=step, **kw) as ck:
        for rel, data in content.items():
            ck.write_bytes(rel, data)
    assert ck.info is not None
    return ck.info


def flip_bit(path: str | os.PathLike[str], offset: int = 0, bit: int = 0) -> None:
    """Flip one bit of the file at ``path`` in place (same size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ (1 << bit)]))


def truncate(path: str | os.PathLike[str], size: int) -> None:
    """Cut the file at ``path`` to ``size`` bytes."""
    with open(path, "r+b") as f:
        f.truncate(size)


def write_jsonl(path: str | os.PathLike[str], text: str | bytes) -> str:
    """Write a data file and return its absolute path."""
    data = text.encode() if isinstance(text, str) else text
    with open(path, "wb") as f:
        f.write(data)
    return os.path.abspath(os.fspath(path))


class SimulatedCrash(BaseException):
    """Raised at a crash point to stop an operation half-way (the test then drops the engine)."""


def crash_at(name: str) -> Callable[[str], None]:
    """A crash hook (for :func:`shipslog.journal.set_crash_hook`) that raises :class:`SimulatedCrash` at the point called ``name``."""

    def point(hit: str) -> None:
        if hit == name:
            raise SimulatedCrash(name)

    return point


@contextmanager
def dies_at_point(name: str) -> Iterator[None]:
    """Within the block, reaching crash point ``name`` raises :class:`SimulatedCrash` there (an in-process "death").

    Installs the hook through the public :func:`shipslog.journal.set_crash_hook` and puts the previous
    hook back on the way out, so the engine reopened after the block runs free of it.
    """
    previous = set_crash_hook(crash_at(name))
    try:
        yield
    finally:
        set_crash_hook(previous)


def crash(engine: Engine) -> None:
    """Drop ``engine`` as a killed process would: release the journal without journaling ``session.closed``."""
    engine.journal.close()


def prepared_engine(root: str, tmp_path: Any, **kw: Any) -> tuple[Engine, dict[str, Any]]:
    """An engine holding a committed checkpoint, a pointer, a run and a checkpoint in progress,
    with a folder to adopt and a data file: what :data:`ENGINE_CALLS` needs."""
    src = os.path.join(tmp_path, "checkpoint-7")
    write_files(src, {"w.bin": b"w"})
    data = write_jsonl(os.path.join(tmp_path, "d.jsonl"), '{"a": 1}\n')
    e = open_engine(root, **kw)
    commit_checkpoint(e, "step-1", step=1)
    e.set_pointer("best", "step-1")
    run = e.run(data)
    ck = e.checkpoint("open-one", step=2)
    ck.write_bytes("early.bin", b"early")
    return e, {"src": src, "data": data, "ck": ck, "run": run}


def _journal_pointer_set(e: Engine) -> object:
    from shipslog.engine import PointerSet

    return e.journal_events(PointerSet(op="x"))


ENGINE_CALLS: dict[str, Callable[[Engine, dict[str, Any]], object]] = {
    "checkpoint": lambda e, c: e.checkpoint("new-one", step=9),
    "save_model": lambda e, c: e.save_model("base"),
    "adopt_checkpoint": lambda e, c: e.adopt_checkpoint(c["src"]),
    "set_pointer": lambda e, c: e.set_pointer("other", "step-1"),
    "pointer": lambda e, c: e.pointer("best"),
    "latest_checkpoint": lambda e, c: e.latest_checkpoint(),
    "verify": lambda e, c: e.verify("step-1"),
    "retain": lambda e, c: e.retain(1),
    "run": lambda e, c: e.run(c["data"]),
    "status": lambda e, c: e.status(),
    "subscribe": lambda e, c: e.subscribe(lambda r: None),
    "journal_events": lambda e, c: _journal_pointer_set(e),
    "save_snapshot": lambda e, c: e.save_snapshot(),
    "writer.write_bytes": lambda e, c: c["ck"].write_bytes("late.bin", b"late"),
    "writer.commit": lambda e, c: c["ck"].commit(),
    "run.progress": lambda e, c: c["run"].progress(5),
    "run.finish": lambda e, c: c["run"].finish(),
}
"""Every public call of an engine (and of a writer and a run it handed out), for the closed and broken tests."""
