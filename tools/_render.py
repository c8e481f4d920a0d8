"""How the command line draws its output: rich on a terminal, the plain text otherwise.

One decision, :func:`use_rich`, says whether a stream gets rich output (box
tables, colour, a progress bar): only when it is a terminal, ``NO_COLOR`` is
not set and ``TERM`` is not ``dumb``.  Everything else (a pipe, a file,
``NO_COLOR=1``) gets the plain text that scripts and tests read, which never
holds an escape code.  :class:`Printer` writes one command's lines, tables and
key/value listings; :class:`ByteProgress` is the progress bar of a long check
(on stderr, so stdout stays clean).  rich is imported only when it is used, so
plain output never pays for it; nothing outside ``shipslog.tools`` imports it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TextIO, final

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = [
    "ByteProgress",
    "Printer",
    "event_style",
    "plain_table",
    "printable",
    "shipslog_command",
    "use_rich",
]

_log = logging.getLogger("shipslog.tools")

CellStyle = Callable[[str], str]
"""Maps a cell's text to a rich style name ("" for none)."""

_GOOD_ENDINGS = ("committed", "set", "done", "closed", "finished", "exited", "deleted", "installed")
_BAD_ENDINGS = ("aborted", "died", "crashed", "failed", "interrupted")
_KEEP_WHOLE = 24
"""A column whose cells are all at most this long is kept whole in a rich table when the terminal allows."""
_FLEXIBLE = 10
"""The width left to each column that may wrap, while short columns are kept whole."""


def use_rich(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` gets rich output: it is a terminal, ``NO_COLOR`` is unset or empty, ``TERM`` is not ``dumb``.

    ``environ`` defaults to :data:`os.environ`.  A stream without ``isatty``,
    or a closed one, is not a terminal.
    """
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # closed, or detached from its file
        return False


def _console(stream: TextIO) -> Console:
    """A rich console on ``stream``; the terminal and colour decision was already made by :func:`use_rich`."""
    from rich.console import Console

    return Console(file=stream, force_terminal=True, no_color=False, highlight=False, markup=False, emoji=False)


def event_style(kind: str) -> str:
    """The colour of an event kind in a table: green when something was completed, red when it failed or was cut off."""
    step = kind.rsplit(".", 1)[-1]  # checkpoint.committed -> committed, worker.spawn-failed -> spawn-failed
    if step.endswith(_BAD_ENDINGS):
        return "red"
    if step.endswith(_GOOD_ENDINGS):
        return "green"
    return ""


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS_BUT_NEWLINE = {c: e for c, e in _CONTROLS.items() if c != 0x0A}


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control character (C0, DEL, C1) written as ``\\xNN``, so nothing read from disk
    (a name, a path, a message) can send an escape sequence to the terminal or break a line; with
    ``newlines``, line breaks are kept."""
    return text.translate(_CONTROLS_BUT_NEWLINE if newlines else _CONTROLS)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> str:
    """Aligned plain-text columns: each padded to its widest cell, two spaces apart, trailing spaces cut.

    The format scripts read: a header line, then one line per row, each
    starting with ``indent``.  Control characters in a cell are escaped (:func:`printable`).
    """
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in (headers, *rows)]
    return "\n".join(lines) + "\n"


def _kept_whole(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[bool]:
    """Which columns of a rich table ``width`` characters wide keep their cells on one line.

    Cells wrap rather than get cut.  The columns of short cells (seq, time,
    kind) are kept whole, narrowest first, as long as every column left to
    wrap keeps :data:`_FLEXIBLE` characters; the wide columns give way.
    """
    widest = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    budget = width - 3 * len(headers) - 1  # the borders and padding
    whole = [False] * len(headers)
    for done, i in enumerate(sorted(range(len(headers)), key=widest.__getitem__), start=1):
        if widest[i] > _KEEP_WHOLE or widest[i] + _FLEXIBLE * (len(headers) - done) > budget:
            break
        whole[i] = True
        budget -= widest[i]
    return whole


class Printer:
    """Writes one command's output to ``stream`` (default: stdout), rich or plain as :func:`use_rich` decides.

    Plain output is exactly the text each method documents, flushed after
    every call (so ``tail -f`` through a pipe shows each record at once);
    rich output shows the same content as box tables and coloured text.
    """

    def __init__(self, stream: TextIO | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.rich = use_rich(self.stream, environ)
        self._console: Console | None = _console(self.stream) if self.rich else None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self, text: str = "", style: str = "") -> None:
        """One line of text (plain: ``text`` and a newline; control characters escaped, :func:`printable`)."""
        text = printable(text, newlines=True)
        if self._console is None:
            self._write(text + "\n")
        else:
            from rich.text import Text

            self._console.print(Text(text, style=style))

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        indent: str = "",
        right: Collection[str] = (),
        styles: Mapping[str, CellStyle] | None = None,
    ) -> None:
        """A table (plain: :func:`plain_table`); ``right`` names columns aligned right, ``styles`` colours cells by column."""
        rows = [[printable(c) for c in row] for row in rows]
        if self._console is None:
            self._write(plain_table(headers, rows, indent=indent))
            return
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.ROUNDED, header_style="bold")
        for h, whole in zip(headers, _kept_whole(headers, rows, self._console.width)):
            table.add_column(h, justify="right" if h in right else "left", no_wrap=whole, overflow="fold")
        chosen = styles or {}
        for row in rows:
            table.add_row(*(Text(c, style=chosen[h](c) if h in chosen else "") for h, c in zip(headers, row)))
        self._console.print(table)

    def pairs(self, pairs: Sequence[tuple[str, str]], *, styles: Mapping[str, str] | None = None) -> None:
        """Key/value lines (plain: each key padded to the longest, one space, the value); ``styles`` colours rows by key."""
        pairs = [(printable(k), printable(v)) for k, v in pairs]
        width = max((len(k) for k, _ in pairs), default=0)
        if self._console is None:
            self._write("".join(f"{k.ljust(width)} {v}\n" for k, v in pairs))
            return
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column(overflow="fold")
        chosen = styles or {}
        for k, v in pairs:
            style = chosen.get(k, "")
            grid.add_row(Text(k, style=style), Text(v, style=style))
        self._console.print(grid)

    def fields(self, cells: Sequence[str], styles: Sequence[str] = (), widths: Sequence[int] = ()) -> None:
        """One row of a stream of rows (plain: the cells joined by two spaces); ``styles`` colours cells by position,
        ``widths`` pads the cells before the last to line up with the rows around it."""
        cells = [printable(c) for c in cells]
        cells = [c.ljust(widths[i]) if i < len(widths) and i < len(cells) - 1 else c for i, c in enumerate(cells)]
        if self._console is None:
            self._write("  ".join(cells).rstrip() + "\n")
            return
        from rich.text import Text

        text = Text()
        for i, cell in enumerate(cells):
            if i:
                text.append("  ")
            text.append(cell, style=styles[i] if i < len(styles) else "")
        self._console.print(text, soft_wrap=True)


@final
class ByteProgress:
    """A progress bar over ``total`` bytes on ``stream`` (default: stderr) while a ``with`` block runs.

    A rich bar when :func:`use_rich` says the stream is a terminal; nothing
    otherwise.  Either way, a block that ends without an exception logs one
    INFO line (``-v`` shows it) with the files and bytes counted.
    :meth:`advance` has the signature of ``check_invariants``'s ``on_file``.
    """

    def __init__(
        self, description: str, total: int, *, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.description = description
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.rich = use_rich(self.stream, environ)
        self.files = 0
        self.bytes = 0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started = 0.0

    def __enter__(self) -> ByteProgress:
        self._started = time.monotonic()
        if self.rich:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=_console(self.stream),
                transient=True,
            )
            bar.start()
            self._task = bar.add_task(self.description, total=self.total)
            self._bar = bar
        return self

    def advance(self, path: str, nbytes: int) -> None:
        """Count one file of ``nbytes`` bytes (``path`` is for the caller's signature; it is not shown)."""
        self.files += 1
        self.bytes += nbytes
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, nbytes)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        if exc_type is None:
            seconds = time.monotonic() - self._started
            _log.info("%s: %d file(s), %s bytes in %.2f s", self.description, self.files, f"{self.bytes:,}", seconds)


def shipslog_command() -> str:
    """How to type this installation's ``shipslog`` in a shell: the bare name when it is the one on PATH, else
    the script's path (after ``make demo`` the virtual environment is not activated), else ``python -m shipslog``."""
    script = os.path.join(os.path.dirname(sys.executable), "shipslog")
    if not os.path.exists(script):
        return f"{sys.executable} -m shipslog"
    found = shutil.which("shipslog")
    return "shipslog" if found is not None and os.path.realpath(found) == os.path.realpath(script) else script
