"""The invariants a recovered root satisfies, each a named check with a clear message.

Checked after every recovery and by ``shipslog verify``:

``journal-verifies``      every frame of every segment verifies and chains (no damage);
``ops-terminal``          no operation of a session that is gone is left in progress;
``pointers-verify``       every pointer names a committed folder whose manifest verifies,
                          and its file on disk names the same target;
``checkpoints-verify``    every committed checkpoint and model exists and verifies;
``nothing-unaccounted``   every entry under staging/, checkpoints/, models/, pointers/
                          is accounted for by the journal;
``adapters-kept``         every retired adapter's merged model is committed (so the
                          adapter or a committed merge of it always exists);
``recovery-idempotent``   planning recovery again plans nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from shipslog.engine import EngineState, IntegrityError, Registry, read_pointer_file, verify_folder
from shipslog.journal import JOURNAL_DIR, CorruptJournalError, JournalReader

from ._plan import list_root, plan

__all__ = ["INVARIANTS", "Violation", "check_invariants"]

INVARIANTS = (
    "journal-verifies",
    "ops-terminal",
    "pointers-verify",
    "checkpoints-verify",
    "adapters-kept",
    "nothing-unaccounted",
    "recovery-idempotent",
)


class Violation(msgspec.Struct, frozen=True):
    """One invariant that does not hold: its ``invariant`` name, a ``message``, and where (``path``)."""

    invariant: str
    message: str
    path: str = ""

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.invariant}: {self.message}{where}"


def check_invariants(
    root: str,
    state: EngineState,
    *,
    registry: Registry | None = None,
    live_session: str | None = None,
    deep: bool = False,
    check_journal: bool = True,
    deep_pointers: bool = True,
    on_file: Callable[[str, int], None] | None = None,
) -> list[Violation]:
    """Every invariant violation of ``root`` whose replayed state is ``state`` (empty: all hold).

    ``live_session`` is the session id of an engine that has the root open:
    its own operations may be in progress.  ``deep`` re-checksums every
    committed file (otherwise sizes are checked, and pointer targets in full
    unless ``deep_pointers`` is False: what ``Engine.open`` checks, so opening
    costs a few stat calls per artifact, never a read of every byte).
    ``on_file`` is a progress hook for ``deep``: it is called once for each
    committed file whose checksum was re-computed and matches, with its path
    and size in bytes (their sizes add up to the committed artifacts'
    ``bytes`` when everything verifies); it is never called without ``deep``
    and changes nothing that is checked.
    """
    found: list[Violation] = []
    if check_journal:
        try:
            for _batch in JournalReader(os.path.join(root, JOURNAL_DIR)).batches():
                pass
        except CorruptJournalError as exc:
            found.append(Violation("journal-verifies", str(exc), exc.path))
    for op in state.ops.values():
        if live_session is not None and op.session == live_session:
            continue
        found.append(Violation("ops-terminal", f"{op.type} operation {op.id} is still {op.state!r} (its last record is seq {op.seq}) after its session ended"))
    committed = {a.path for a in state.checkpoints.values()} | {a.path for a in state.models.values()}
    for pointer in state.pointers.values():
        target = os.path.join(root, *pointer.target.split("/"))
        if pointer.target not in committed:
            found.append(Violation("pointers-verify", f"pointer {pointer.name!r} names {pointer.target}, which is not committed", target))
        else:
            try:
                verify_folder(target, deep=deep or deep_pointers)
            except IntegrityError as exc:
                found.append(Violation("pointers-verify", f"pointer {pointer.name!r} names a folder that does not verify: {exc}", target))
        pointer_file = os.path.join(root, "pointers", pointer.name)
        try:
            on_disk = read_pointer_file(pointer_file).target
        except (OSError, IntegrityError) as exc:
            found.append(Violation("pointers-verify", f"pointer file of {pointer.name!r} is unreadable: {exc}", pointer_file))
        else:
            if on_disk != pointer.target:
                found.append(Violation("pointers-verify", f"pointer file names {on_disk}, the journal says {pointer.target}", pointer_file))
    for retired, merged in state.retired.items():
        if merged not in committed:
            found.append(Violation("adapters-kept", f"adapter {retired} was retired but its merge {merged} is not a committed model"))
    for art in [*state.checkpoints.values(), *state.models.values(), *state.adapters.values()]:
        path = os.path.join(root, *art.path.split("/"))
        try:
            verify_folder(path, deep=deep, on_file=on_file)
        except (IntegrityError, FileNotFoundError) as exc:
            found.append(Violation("checkpoints-verify", f"committed {art.artifact} {art.name!r} does not verify: {exc}", path))
    again = plan(state, list_root(root), registry)
    if live_session is not None:
        again = [a for a in again if a.kind == "quarantine" or state.ops[a.target].session != live_session]
    for action in again:
        if action.kind == "quarantine":
            found.append(Violation("nothing-unaccounted", f"{action.target}: {action.reason}", os.path.join(root, *action.target.split("/"))))
        else:
            found.append(Violation("recovery-idempotent", f"recovery would still do: {action.describe()}"))
    return found
