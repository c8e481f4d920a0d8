"""How one worker is run and restarted: :class:`WorkerSpec`, its validation and its bounds.

A spec names a command (``argv``) or an importable Python function
(``target``), its environment, its restart policy (:data:`RestartPolicy`, a
restart budget within a window, exponential backoff with jitter) and how long
a stop waits after SIGTERM.

Guarantee: a :class:`WorkerSpec` that exists is valid and can be handed to
``subprocess.Popen`` without an error of its own making (every string
encodes for the OS, has no NUL and is bounded by the ``MAX_SPEC_*`` limits;
every number is finite and in range); :meth:`WorkerSpec.from_dict` turns any
plain data into a spec or raises :class:`WorkerConfigError` naming the key,
nothing else.  Nothing here starts a process or journals.

Python callables run as ``python -c <bootstrap> module:qualname args...`` (a
fresh interpreter: no fork of this threaded process), with this process's
``sys.path`` passed on in ``PYTHONPATH`` (as multiprocessing's spawn does), so
the target must be importable by name (not a lambda, not defined inside a
function, not in ``__main__``).
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

from .._names import check_name
from ._errors import WorkerConfigError
from ._events import MAX_STOP_TIMEOUT

__all__ = [
    "MAX_SPEC_COMMAND_BYTES",
    "MAX_SPEC_DEPTH",
    "MAX_SPEC_ITEMS",
    "MAX_SPEC_RESTARTS",
    "MAX_SPEC_STRING_BYTES",
    "RestartPolicy",
    "WorkerSpec",
    "callable_target",
]

RestartPolicy = Literal["never", "on-failure", "always"]
_PY_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_BOOTSTRAP = (
    "import importlib, sys\n"
    "target = sys.argv[1]\n"
    "module, _, qualname = target.partition(':')\n"
    "fn = importlib.import_module(module)\n"
    "for part in qualname.split('.'):\n"
    "    fn = getattr(fn, part)\n"
    "sys.argv = [target, *sys.argv[2:]]\n"
    "rc = fn(*sys.argv[1:])\n"
    "sys.exit(rc if isinstance(rc, int) else 0)\n"
)

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]

MAX_SPEC_STRING_BYTES = 64 * 1024
"""Most bytes (encoded for the OS) of one string that reaches the worker process: an argv item, an arg,
the target, the cwd, an env name or value.  Linux refuses single exec strings over 128 KiB."""
MAX_SPEC_ITEMS = 4096
"""Most items of ``argv``, of ``args`` and of ``env`` (each counted on its own)."""
MAX_SPEC_COMMAND_BYTES = 1024 * 1024
"""Most bytes of ``argv``/``args`` and ``env`` together (Linux allows about 2 MiB for exec, inherited environment included)."""
MAX_SPEC_RESTARTS = 1_000_000
"""Largest ``max_restarts``: it is journaled as a 64-bit integer, and a million restarts in one window is unlimited in practice."""
MAX_SPEC_DEPTH = 2
"""Deepest nesting of a plain-data worker config: the config mapping, then a list (``argv``, ``args``) or a
mapping (``env``) of strings.  :meth:`WorkerSpec.from_dict` refuses anything deeper before converting."""
_MESSAGE_LIMIT = 600
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SHOW = reprlib.Repr()
_SHOW.maxstring = 80
_SHOW.maxother = 80
_SHOW.maxlevel = 3


def _show(value: object) -> str:
    """A short ``repr`` of ``value`` for an error message: bounded in length and depth, whatever ``value`` is."""
    return _SHOW.repr(value)


def _cap(text: str) -> str:
    """``text`` cut to about :data:`_MESSAGE_LIMIT` characters (head and tail kept), so no message repeats a huge input."""
    if len(text) <= _MESSAGE_LIMIT:
        return text
    return f"{text[: _MESSAGE_LIMIT - 100]}...{text[-90:]}"


class WorkerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How to run and restart one worker; validated when made (:class:`WorkerConfigError`).

    Exactly one of ``argv`` (a command, ``argv[0]`` looked up on ``PATH``) and
    ``target`` (``"module:function"``, called as ``function(*args)`` in a
    fresh Python; an int it returns is the exit code) is given.  ``env`` is
    added to this process's environment (or replaces it, with
    ``inherit_env=False``); ``output`` is ``"inherit"`` or ``"devnull"`` for
    the worker's stdout and stderr.

    ``restart``: ``never``, ``on-failure`` (a non-zero exit or a signal) or
    ``always``.  At most ``max_restarts`` restarts within ``restart_window``
    seconds; the next failure journals ``worker.failed``.  The n-th restart
    within the window waits ``min(backoff_max, backoff_initial *
    backoff_multiplier ** n)`` seconds, scaled by ``1 +- backoff_jitter``
    (seeded, see :class:`Supervisor`), never more than ``backoff_max``.  A stop
    sends SIGTERM to the worker's process group, waits ``stop_timeout``
    seconds, then sends SIGKILL.

    Build one from plain data (a config file) with :meth:`from_dict`.
    """

    name: str
    argv: tuple[str, ...] | None = None
    target: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    inherit_env: bool = True
    cwd: str | None = None
    output: Literal["inherit", "devnull"] = "inherit"
    restart: RestartPolicy = "on-failure"
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=MAX_SPEC_RESTARTS)] = 5
    restart_window: Positive = 60.0
    backoff_initial: NonNegative = 0.1
    backoff_multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    backoff_max: NonNegative = 30.0
    backoff_jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    stop_timeout: Annotated[float, msgspec.Meta(ge=0, le=MAX_STOP_TIMEOUT)] = 10.0

    def __post_init__(self) -> None:
        """Check every field; raise :class:`WorkerConfigError` naming the first bad one (e.g. ``WorkerSpec.argv[1]``).

        Guarantees: a spec that exists can be handed to ``subprocess.Popen``
        without a ``ValueError`` or ``UnicodeEncodeError`` of its own making:
        no string that reaches the process (argv items, args, target, cwd, env
        names and values) holds NUL, every one encodes for the OS and is at
        most :data:`MAX_SPEC_STRING_BYTES` bytes, env names are non-empty
        without ``=``, ``argv[0]`` is non-empty, there are at most
        :data:`MAX_SPEC_ITEMS` argv items, args and env entries each and
        :data:`MAX_SPEC_COMMAND_BYTES` bytes of them in all, and every number
        is finite.
        """
        for field in msgspec.structs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, bool) and field.type is not bool:
                raise WorkerConfigError(f"WorkerSpec.{field.name}: expected {_type_name(field.type)}, got bool")
            try:
                msgspec.convert(value, field.type)
            except msgspec.ValidationError as exc:
                raise WorkerConfigError(f"WorkerSpec.{field.name}: {_cap(_plain(str(exc)))} (got {_show(value)})") from None
            except RecursionError:
                raise WorkerConfigError(f"WorkerSpec.{field.name}: expected {_type_name(field.type)}, got data nested too deeply to check") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise WorkerConfigError(f"WorkerSpec.{field.name}: expected a finite number of seconds, got {value!r}")
        try:
            check_name("worker", self.name)
        except ValueError as exc:
            raise WorkerConfigError(f"WorkerSpec.name: {_cap(str(exc))}") from None
        of = f" of worker {self.name!r}"
        if (self.argv is None) == (self.target is None):
            raise WorkerConfigError(
                f"worker {self.name!r}: give exactly one of 'argv' (a command) and 'target' ('module:function'), "
                f"got {'both' if self.argv is not None else 'neither'}"
            )
        total = 0
        if self.argv is not None:
            if not self.argv:
                raise WorkerConfigError(f"WorkerSpec.argv{of}: expected a non-empty command, got []")
            if not self.argv[0]:
                raise WorkerConfigError(f"WorkerSpec.argv[0]{of}: expected a non-empty command (a program name or path), got ''")
            total += _check_items("argv", self.argv, of)
        if self.target is not None:
            total += _check_os_string("target", self.target, of)
            if not _PY_TARGET.fullmatch(self.target):
                raise WorkerConfigError(f"WorkerSpec.target{of}: expected 'module:function' (dotted names), got {_show(self.target)}")
        if self.args and self.target is None:
            raise WorkerConfigError(f"WorkerSpec.args{of}: only a 'target' takes args (put them in 'argv')")
        total += _check_items("args", self.args, of)
        if self.cwd is not None:
            if not self.cwd:
                raise WorkerConfigError(f"WorkerSpec.cwd{of}: expected a folder path or null, got ''")
            _check_os_string("cwd", self.cwd, of)
        if len(self.env) > MAX_SPEC_ITEMS:
            raise WorkerConfigError(f"WorkerSpec.env{of}: expected at most {MAX_SPEC_ITEMS} variables, got {len(self.env)}")
        for key, value in self.env.items():
            where = f"env[{_show(key)}]"
            if not key:
                raise WorkerConfigError(f"WorkerSpec.{where}{of}: expected a variable name, got an empty string")
            if "=" in key:
                raise WorkerConfigError(f"WorkerSpec.{where}{of}: invalid variable name: expected a name without '=', got {_show(key)}")
            total += _check_os_string(f"{where} (the name)", key, of)
            total += _check_os_string(where, value, of)
        if total > MAX_SPEC_COMMAND_BYTES:
            raise WorkerConfigError(
                f"WorkerSpec{of}: expected at most {MAX_SPEC_COMMAND_BYTES} bytes of command line and environment in all, got {total}"
            )
        if self.backoff_max < self.backoff_initial:
            raise WorkerConfigError(
                f"WorkerSpec.backoff_max{of}: expected >= backoff_initial ({self.backoff_initial}), got {self.backoff_max}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerSpec:
        """A spec from plain data; an unknown key, a wrong type or a bad value raises :class:`WorkerConfigError`.

        The message names the key and the expected type, e.g.
        ``WorkerSpec.stop_timeout: Expected `float`, got `str```.

        Guarantees: for any plain data (mappings, lists, strings, numbers,
        booleans, None, nested to any depth) this returns a valid spec or
        raises :class:`WorkerConfigError`, nothing else.  Nesting deeper than
        :data:`MAX_SPEC_DEPTH`, keys that are not strings and text that is not
        UTF-8 are refused by an iterative walk before anything is converted,
        so the work is linear in the size of ``data`` and never recursive.
        """
        if not isinstance(data, Mapping):
            raise WorkerConfigError(f"a worker config must be a mapping of keys to values, got {type(data).__name__}")
        _check_plain_shape(data)
        try:
            return msgspec.convert(dict(data), cls)
        except WorkerConfigError:
            raise
        except RecursionError:
            raise WorkerConfigError(f"WorkerSpec: expected at most {MAX_SPEC_DEPTH} levels of nesting, got data nested too deeply to convert") from None
        except UnicodeEncodeError as exc:
            raise WorkerConfigError(f"WorkerSpec: expected text that encodes as UTF-8, got {_show(exc.object)} ({exc.reason})") from None
        except msgspec.ValidationError as exc:
            message = str(exc)
            found = re.search(r"unknown field `([^`]*)`", message)
            if found:
                known = ", ".join(f.name for f in msgspec.structs.fields(cls))
                raise WorkerConfigError(f"WorkerSpec: unknown key {_show(found.group(1))}; known keys: {known}") from None
            where = re.search(r" - at `\$\.([^`]*)`$", message)
            key = where.group(1) if where else None
            text = _cap(_plain(message))
            if key:
                raise WorkerConfigError(f"WorkerSpec.{_cap(key)}: {text}") from None
            raise WorkerConfigError(text if text.startswith(("WorkerSpec", "worker ")) else f"WorkerSpec: {text}") from None

    @classmethod
    def python(cls, name: str, target: Callable[..., Any] | str, *, args: Sequence[str] = (), **options: Any) -> WorkerSpec:
        """A spec that runs the importable function ``target`` (or a ``"module:function"`` string) as ``target(*args)``."""
        return cls(name=name, target=callable_target(target), args=tuple(args), **options)

    def command(self) -> list[str]:
        """The argv the worker process is started with."""
        if self.argv is not None:
            return list(self.argv)
        assert self.target is not None
        return [sys.executable, "-c", _BOOTSTRAP, self.target, *self.args]


def callable_target(target: Callable[..., Any] | str) -> str:
    """The ``"module:qualname"`` of an importable function (a string is checked and returned)."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not callable(target) or not isinstance(module, str) or not isinstance(qualname, str):
        raise WorkerConfigError(f"WorkerSpec.target: expected an importable function or 'module:function', got {target!r}")
    if "<" in qualname or module == "__main__":
        raise WorkerConfigError(
            f"WorkerSpec.target: {module}.{qualname} cannot be imported by name in a fresh interpreter "
            "(lambdas, nested functions and __main__ cannot); define it at the top level of an importable module"
        )
    return f"{module}:{qualname}"


def _check_os_string(where: str, value: str, of: str) -> int:
    """Return the OS-encoded length of ``value``; raise :class:`WorkerConfigError` when it cannot reach a process.

    Refused: NUL (exec cannot pass it), text that does not encode as UTF-8
    (a lone surrogate: the command is journaled) or for the OS, more than
    :data:`MAX_SPEC_STRING_BYTES` bytes encoded.
    """
    if len(value) > MAX_SPEC_STRING_BYTES:
        raise WorkerConfigError(f"WorkerSpec.{where}{of}: expected at most {MAX_SPEC_STRING_BYTES} bytes, got {len(value)} characters")
    nul = value.find("\0")
    if nul >= 0:
        raise WorkerConfigError(
            f"WorkerSpec.{where}{of}: expected text without NUL characters (a process cannot receive them), "
            f"got a NUL at index {nul} in {_show(value)}"
        )
    try:
        size = len(value.encode("utf-8"))
        os.fsencode(value)
    except UnicodeEncodeError as exc:
        raise WorkerConfigError(
            f"WorkerSpec.{where}{of}: expected text that encodes as UTF-8 (it is journaled and passed to the OS), "
            f"got {_show(value)} ({exc.reason} at index {exc.start})"
        ) from None
    if size > MAX_SPEC_STRING_BYTES:
        raise WorkerConfigError(f"WorkerSpec.{where}{of}: expected at most {MAX_SPEC_STRING_BYTES} bytes, got {size}")
    return size


def _check_items(field: str, items: Sequence[str], of: str) -> int:
    """Check the count and every string of ``argv`` or ``args``; return their encoded bytes in all."""
    if len(items) > MAX_SPEC_ITEMS:
        raise WorkerConfigError(f"WorkerSpec.{field}{of}: expected at most {MAX_SPEC_ITEMS} items, got {len(items)}")
    return sum(_check_os_string(f"{field}[{i}]", item, of) for i, item in enumerate(items))


def _check_plain_shape(data: Mapping[Any, Any]) -> None:
    """Refuse plain data nested deeper than :data:`MAX_SPEC_DEPTH`, keys that are not strings, and text that is not UTF-8.

    Every key and string is looked at once (a spec's strings are journaled,
    so each must encode as UTF-8: no lone surrogates).  Iterative (an
    explicit stack), so any depth is refused without recursion; the work is
    linear in the number of items looked at.
    """
    stack: list[tuple[object, int, str]] = [(data, 1, "WorkerSpec")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            _check_utf8(where, value)
            continue
        if isinstance(value, Mapping):
            kind = "mapping"
        elif isinstance(value, (list, tuple)):
            kind = "list"
        else:
            continue
        if depth > MAX_SPEC_DEPTH:
            raise WorkerConfigError(
                f"{where}: expected a string, number, boolean or null here (a worker config nests at most "
                f"{MAX_SPEC_DEPTH} levels: the config, then a list or mapping of strings), got a {kind} nested {depth} levels deep"
            )
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise WorkerConfigError(f"{where}: expected keys that are strings, got {_show(key)} ({type(key).__name__})")
                field = f".{key}" if depth == 1 and _IDENTIFIER.fullmatch(key) else f"[{_show(key)}]"
                _check_utf8(f"{where}{field} (the key)", key)
                stack.append((item, depth + 1, f"{where}{field}"))
        else:
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))


def _check_utf8(where: str, text: str) -> None:
    """Raise :class:`WorkerConfigError` naming ``where`` unless ``text`` encodes as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WorkerConfigError(f"{where}: expected text that encodes as UTF-8, got {_show(text)} ({exc.reason} at index {exc.start})") from None


def _plain(message: str) -> str:
    return re.sub(r" - at `\$[^`]*`$", "", message)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)
