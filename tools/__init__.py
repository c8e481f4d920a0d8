"""shipslog.tools: the ``shipslog`` command line.

The entry point is :func:`main`, installed as the ``shipslog`` script and run by
``python -m shipslog``.  Each subcommand lives in its own small function in
:mod:`shipslog.tools._cli`; the work behind it lives in a module of its own
(``shipslog bench journal`` in :mod:`shipslog.tools._bench_journal`), which
logs with :mod:`logging` and returns data for the command line to print.
"""

from ._cli import main

__all__ = ["main"]
