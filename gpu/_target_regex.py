"""Which target_modules regular expressions are safe to match: a small parser and a bound on backtracking.

PEFT matches a string ``target_modules`` with ``re.fullmatch``, and Python's
``re`` backtracks: a hostile pattern read from an adapter config on disk can
take minutes on a short module name.  :func:`regex_refusal` reads a pattern
(without ``re``'s private parser) and refuses every construct that makes
matching exponential or unbounded; a pattern it accepts matches any module
name of at most :data:`MAX_MODULE_NAME` characters in bounded time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_MODULE_NAME", "MAX_PATTERN_CHARS", "regex_refusal"]

MAX_MODULE_NAME = 1000
"""The longest module name matched against target_modules; a longer one is refused."""
MAX_PATTERN_CHARS = 512
"""The longest regular expression accepted as target_modules."""
_MAX_UNBOUNDED_QUANTIFIERS = 8
"""The most unbounded quantifiers (``*``, ``+``, ``{m,}``) a target_modules regex may hold."""
_MAX_GROUP_NESTING = 16
"""The deepest nesting of groups in a target_modules regex."""
_MAX_MATCH_STEPS = 2 * 10**8
"""The bound on the backtracking work of one match (see :func:`_sequence_work`); measured at about 2 ns of ``re`` a
step, well under a second at worst."""


# --------------------------------------------------------------------------- target_modules regex check


@dataclass(frozen=True)
class _Atom:
    """One character (a literal, a class, ``.``) or a zero-width assertion (``width`` 0)."""

    width: int
    literal: str | None = None


@dataclass(frozen=True)
class _Group:
    """A group: its alternative branches, each a sequence of items."""

    branches: tuple[tuple[_Item, ...], ...]


@dataclass(frozen=True)
class _Repeat:
    """A quantified atom or (choice-free) group: ``low`` to ``high`` repetitions (``None``: unbounded)."""

    item: _Atom | _Group
    low: int
    high: int | None


_Item = _Atom | _Group | _Repeat


class _Refused(Exception):
    """Internal to :func:`regex_refusal`: the reason a pattern is refused (never escapes it)."""


_ESCAPE_CLASSES = frozenset("dDwWsS")
_ESCAPE_ZERO_WIDTH = frozenset("AZbB")
_ESCAPE_CONTROLS = {"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE_HEX = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ASCII_DIGITS = frozenset("0123456789")
_INLINE_FLAGS = frozenset("aimsu")


class _PatternParser:
    """A parser of Python ``re`` syntax into :class:`_Atom`/:class:`_Group`/:class:`_Repeat` items.

    Conservative: it raises :class:`_Refused` for every construct that can
    backtrack without bound (backreferences, conditionals, lookarounds,
    quantified groups that hold a quantifier or an alternation), for syntax
    that ``re`` would warn about (possible nested sets and set operations in
    classes) and for anything it does not recognise.  A pattern it accepts
    may still be invalid for ``re`` (the caller compiles it).  Recursion is
    bounded by ``_MAX_GROUP_NESTING``.
    """

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0
        self.unbounded = 0
        self.ignorecase = False

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def parse(self) -> tuple[tuple[_Item, ...], ...]:
        branches = self.alternation(0)
        if self.pos < len(self.text):
            raise _Refused(f"unbalanced parenthesis at position {self.pos}")
        return branches

    def alternation(self, depth: int) -> tuple[tuple[_Item, ...], ...]:
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return tuple(branches)

    def sequence(self, depth: int) -> tuple[_Item, ...]:
        items: list[_Item] = []
        while self.pos < len(self.text) and self.peek() not in "|)":
            atom = self.atom(depth)
            if atom is None:
                continue
            quantifier = self.quantifier()
            if quantifier is None:
                items.append(atom)
                continue
            low, high = quantifier
            if isinstance(atom, _Atom) and atom.width == 0:
                raise _Refused(f"nothing to repeat at position {self.pos}")
            if isinstance(atom, _Group) and _has_choice(atom):
                raise _Refused(
                    f"a quantifier at position {self.pos} applied to a group that holds a quantifier or an "
                    "alternation (it can backtrack exponentially)"
                )
            if self.peek() in ("?", "+"):
                self.pos += 1  # lazy or possessive: the same repetitions, another order
            if self.quantifier_here() is not None:
                raise _Refused(f"a repeated quantifier at position {self.pos}")
            if high is None:
                self.unbounded += 1
            items.append(_Repeat(atom, low, high))
        return tuple(items)

    def quantifier_here(self) -> tuple[int, int | None, int] | None:
        """The quantifier starting at ``pos`` as ``(low, high, end)``, without consuming it; ``None`` if none."""
        c = self.peek()
        if c == "*":
            return 0, None, self.pos + 1
        if c == "+":
            return 1, None, self.pos + 1
        if c == "?":
            return 0, 1, self.pos + 1
        if c != "{" or self.peek(1) == "}":
            return None
        i = self.pos + 1
        text = self.text
        start = i
        while i < len(text) and text[i] in _ASCII_DIGITS:
            i += 1
        low_digits = text[start:i]
        comma = i < len(text) and text[i] == ","
        high_digits = low_digits
        if comma:
            i += 1
            start = i
            while i < len(text) and text[i] in _ASCII_DIGITS:
                i += 1
            high_digits = text[start:i]
        if i >= len(text) or text[i] != "}":
            return None  # not a quantifier: a literal '{'
        for digits in (low_digits, high_digits):
            if len(digits) > 4 or (digits and int(digits) > MAX_MODULE_NAME):
                raise _Refused(f"a repetition count above {MAX_MODULE_NAME} at position {self.pos} (no module name is that long)")
        low = int(low_digits) if low_digits else 0
        high = int(high_digits) if high_digits else None
        if high is not None and high < low:
            raise _Refused(f"min repeat greater than max repeat at position {self.pos}")
        return low, high, i + 1

    def quantifier(self) -> tuple[int, int | None] | None:
        found = self.quantifier_here()
        if found is None:
            return None
        low, high, self.pos = found
        return low, high

    def atom(self, depth: int) -> _Atom | _Group | None:
        c = self.peek()
        if c in ("*", "+", "?") or (c == "{" and self.quantifier_here() is not None):
            raise _Refused(f"nothing to repeat at position {self.pos}")
        if c == "(":
            return self.group(depth)
        if c == "[":
            return self.char_class()
        if c == "\\":
            return self.escape()
        self.pos += 1
        if c == ".":
            return _Atom(1)
        if c in ("^", "$"):
            return _Atom(0)
        return _Atom(1, c)

    def group(self, depth: int) -> _Group | None:
        if depth + 1 > _MAX_GROUP_NESTING:
            raise _Refused(f"groups nested more than {_MAX_GROUP_NESTING} deep")
        start = self.pos
        self.pos += 1
        if self.peek() == "?":
            self.pos += 1
            c = self.peek()
            if c in {":", ">"}:
                self.pos += 1
            elif c == "P" and self.peek(1) == "<":
                end = self.text.find(">", self.pos)
                if end < 0 or not self.text[self.pos + 2 : end].isidentifier():
                    raise _Refused(f"a bad group name at position {start}")
                self.pos = end + 1
            elif c == "P" and self.peek(1) == "=":
                raise _Refused(f"a backreference (?P=...) at position {start}")
            elif c in ("=", "!") or (c == "<" and self.peek(1) in ("=", "!")):
                raise _Refused(f"a lookaround at position {start}")
            elif c == "(":
                raise _Refused(f"a conditional group (a backreference) at position {start}")
            elif c == "#":
                end = self.text.find(")", self.pos)
                if end < 0:
                    raise _Refused(f"an unterminated comment at position {start}")
                self.pos = end + 1
                return None
            else:
                return self.flag_group(start, depth)
        branches = self.alternation(depth + 1)
        if self.peek() != ")":
            raise _Refused(f"a missing ')' for the group at position {start}")
        self.pos += 1
        return _Group(branches)

    def flag_group(self, start: int, depth: int) -> _Group | None:
        """``(?flags)`` (returns ``None``) or ``(?flags-flags:...)``; ``pos`` is after the ``?``."""
        i = self.pos
        while self.peek() not in ("", ")", ":"):
            c = self.peek()
            if c != "-" and c not in _INLINE_FLAGS:
                raise _Refused(f"an unsupported group or flag {c!r} at position {start}")
            if c == "i" and "-" not in self.text[i : self.pos]:
                self.ignorecase = True
            self.pos += 1
        if self.peek() == ")":
            self.pos += 1
            return None
        if self.peek() != ":":
            raise _Refused(f"an unterminated group at position {start}")
        self.pos += 1
        branches = self.alternation(depth + 1)
        if self.peek() != ")":
            raise _Refused(f"a missing ')' for the group at position {start}")
        self.pos += 1
        return _Group(branches)

    def char_class(self) -> _Atom:
        start = self.pos
        self.pos += 1
        if self.peek() == "^":
            self.pos += 1
        first = True
        previous = ""
        while True:
            c = self.peek()
            if c == "":
                raise _Refused(f"an unterminated character set at position {start}")
            if c == "]" and not first:
                self.pos += 1
                return _Atom(1)
            if c == "\\":
                if self.peek(1) == "":
                    raise _Refused("a trailing backslash")
                self.pos += 2
                previous = ""
            else:
                if c == "[":
                    raise _Refused(f"a '[' inside the character set at position {start} (a possible nested set)")
                if c in "-&~|" and previous == c:
                    raise _Refused(f"{c + c!r} inside the character set at position {start} (a possible set operation)")
                previous = c
                self.pos += 1
            first = False

    def escape(self) -> _Atom:
        start = self.pos
        c = self.peek(1)
        if c == "":
            raise _Refused("a trailing backslash")
        self.pos += 2
        if c in "123456789":
            raise _Refused(f"a backreference (or octal escape) \\{c} at position {start}")
        if c == "0":
            for _ in range(2):
                if self.peek() in ("0", "1", "2", "3", "4", "5", "6", "7"):
                    self.pos += 1
            return _Atom(1)
        if c in _ESCAPE_ZERO_WIDTH:
            return _Atom(0)
        if c in _ESCAPE_CLASSES:
            return _Atom(1)
        if c in _ESCAPE_CONTROLS:
            return _Atom(1, _ESCAPE_CONTROLS[c])
        if c in _ESCAPE_HEX:
            digits = self.text[self.pos : self.pos + _ESCAPE_HEX[c]]
            if len(digits) != _ESCAPE_HEX[c] or not all(d in _HEX_DIGITS for d in digits):
                raise _Refused(f"a bad escape \\{c} at position {start}")
            self.pos += len(digits)
            return _Atom(1)
        if c == "N":
            end = self.text.find("}", self.pos)
            if self.peek() != "{" or end < 0:
                raise _Refused(f"a bad escape \\N at position {start}")
            self.pos = end + 1
            return _Atom(1)
        if c.isascii() and c.isalnum():
            raise _Refused(f"a bad escape \\{c} at position {start}")
        return _Atom(1, c)


def _has_choice(group: _Group) -> bool:
    """Whether ``group`` holds an alternation or a quantifier, at any depth."""
    stack = [group]
    while stack:
        g = stack.pop()
        if len(g.branches) > 1:
            return True
        for item in g.branches[0]:
            if isinstance(item, _Repeat):
                return True
            if isinstance(item, _Group):
                stack.append(item)
    return False


def _width(item: _Atom | _Group) -> int:
    """The number of characters a choice-free atom or group matches."""
    if isinstance(item, _Atom):
        return item.width
    return sum(_width(i) for i in item.branches[0] if not isinstance(i, _Repeat))


def _occurrences(literal: str) -> int:
    """A bound on how many times ``literal`` occurs in a module name: occurrences are at least its period apart."""
    period = next(p for p in range(1, len(literal) + 1) if literal[p:] == literal[: len(literal) - p])
    return MAX_MODULE_NAME // period + 1


def _literal_run(items: Sequence[_Item], start: int) -> str:
    run = []
    for item in items[start:]:
        if not isinstance(item, _Atom) or item.literal is None:
            break
        run.append(item.literal)
    return "".join(run)


def _literal_branches(item: _Item) -> list[str] | None:
    """The branches of a group of plain literal alternatives (``(q_proj|v_proj)``), else ``None``."""
    if not isinstance(item, _Group):
        return None
    words = []
    for branch in item.branches:
        word = _literal_run(branch, 0)
        if not word or len(word) != len(branch):
            return None
        words.append(word)
    return words


def _sequence_work(items: Sequence[_Item], entries: int, ignorecase: bool) -> tuple[int, int]:
    """Bound the backtracking of ``re`` through ``items`` entered by ``entries`` paths: ``(work, exits)``.

    A quantifier entered by ``e`` paths tries at most ``c`` repetition counts
    (``c`` from its bounds and the module-name limit) and continues with at
    most ``c`` paths each, or with at most as many as the positions where the
    literal (or literal alternatives) right after it can occur; an
    alternation's paths are its branches' paths summed.  Values are capped
    just above the budget.
    """
    cap = _MAX_MATCH_STEPS + 1
    work = 0
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, _Repeat):
            width = _width(item.item)
            most = MAX_MODULE_NAME // width if width else MAX_MODULE_NAME
            high = most if item.high is None else min(item.high, most)
            choices = max(1, high - item.low + 1)
            work += entries * choices * max(width, 1)
            follows = 1
            continuing = entries * choices
            run = _literal_run(items, i + 1) if not ignorecase else ""
            words = _literal_branches(items[i + 1]) if i + 1 < len(items) and not ignorecase else None
            if len(run) >= 2:
                work += entries * choices * len(run)
                continuing = entries * min(choices, _occurrences(run))
            elif words is not None:
                work += entries * choices * sum(len(w) for w in words)
                continuing = entries * min(choices * len(words), sum(_occurrences(w) for w in words))
                follows = 2  # the literal alternatives are accounted for here
            entries = min(continuing, cap)
            i += follows
        elif isinstance(item, _Group):
            branch_work = 0
            exits = 0
            for branch in item.branches:
                w, x = _sequence_work(branch, entries, ignorecase)
                branch_work += w
                exits += x
            work += branch_work
            entries = min(exits, cap)
            i += 1
        else:
            work += entries
            i += 1
        work = min(work, cap)
    return work, entries


def regex_refusal(pattern: str) -> str | None:
    """Why ``pattern`` is refused as a target_modules regex, or ``None`` when it is accepted.

    Guarantee: a pattern accepted here matches (``re.fullmatch``) any module
    name of at most ``MAX_MODULE_NAME`` characters in bounded time, because
    it has none of the constructs that make Python's backtracking ``re``
    exponential or unbounded:

    * more than ``MAX_PATTERN_CHARS`` characters;
    * a backreference (``\\1``, ``(?P=name)``), a conditional group or a
      lookaround (``(?=``, ``(?!``, ``(?<=``, ``(?<!``);
    * a quantifier (``*``, ``+``, ``?``, ``{m,n}``) applied to a group that
      holds a quantifier or an alternation (``(a+)+``, ``(a|b)*``);
    * more than ``_MAX_UNBOUNDED_QUANTIFIERS`` unbounded quantifiers, or groups
      nested more than ``_MAX_GROUP_NESTING`` deep, or a repetition count
      above ``MAX_MODULE_NAME``;
    * a bound on the backtracking work (:func:`_sequence_work`: the product of
      the choices of the quantifiers met one after another, summed over
      alternatives) above ``_MAX_MATCH_STEPS`` (for example ``a?`` repeated 30
      times, or three ``.*`` in a row);
    * syntax ``re`` would warn about or that this checker does not recognise.

    It never raises.  A pattern it accepts may still be invalid for ``re``;
    the caller compiles it.  Normal PEFT patterns such as
    ``.*\\.(q_proj|v_proj)`` or ``model\\.layers\\.\\d+\\.self_attn\\.(q|k|v)_proj``
    are accepted.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"{len(pattern)} characters, more than {MAX_PATTERN_CHARS}"
    parser = _PatternParser(pattern)
    try:
        branches = parser.parse()
    except _Refused as refused:
        return str(refused)
    if parser.unbounded > _MAX_UNBOUNDED_QUANTIFIERS:
        return f"{parser.unbounded} unbounded quantifiers, more than {_MAX_UNBOUNDED_QUANTIFIERS}"
    work, exits = _sequence_work((_Group(branches),), 1, parser.ignorecase)
    if work + exits > _MAX_MATCH_STEPS:
        return f"backtracking that can take more than {_MAX_MATCH_STEPS} steps on a module name of {MAX_MODULE_NAME} characters"
    return None
