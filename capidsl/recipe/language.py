"""Recipe-language strings inside YAML: parse them with capidsl.lang and place any LangError at
the file, line and column of the offending character inside the YAML scalar.

A LangError's column counts characters of the string's *value*; the file holds its *source*
(quotes, `''` and backslash escapes, folded line breaks). `value_location` walks the source the
way YAML reads it and finds the source character that produced a given value character:
exactly for plain and single-quoted scalars, by best effort for double-quoted and block ones.
"""

from __future__ import annotations

from typing import Any, Callable

from capidsl.lang import LangError
from capidsl.recipe.errors import Location, Problem
from capidsl.recipe.yaml12 import Document, Position, join_path

_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def parse_field(doc: Document, path: tuple, text: str, parse: Callable[[str], Any],
                problems: list[Problem]) -> Any:
    """parse(text), or None after appending a located Problem."""
    try:
        return parse(text)
    except LangError as err:
        problems.append(lang_problem(doc, path, text, err))
        return None


def lang_problem(doc: Document, path: tuple, text: str, err: LangError) -> Problem:
    """A LangError about the string at `path`, as a Problem at the character it names."""
    pos = doc.positions.get(path)
    index = err.offset
    location = None
    if pos is not None:
        location = pos.value if index is None else value_location(pos, text, index)
    hint = "; ".join(h for h in (f"expected {err.expected}" if err.expected else None, err.hint) if h) or None
    return Problem(location, join_path(path), err.message, hint)


def value_location(pos: Position, value: str, index: int) -> Location:
    """The Location of character `index` of a string scalar's value (its start when unknown)."""
    start = pos.value
    scalar = pos.scalar
    if scalar is None:
        return start
    raw = scalar.raw
    offsets = _offsets(scalar.style, raw, value)
    if offsets is None:
        return start
    index = max(0, index)
    if index < len(offsets):
        o = offsets[index]
    else:  # one past the end: just after the last character
        o = (offsets[-1] + 1) if offsets else (1 if scalar.style in ("'", '"') else 0)
    newlines = raw.count("\n", 0, o)
    if newlines == 0:
        return Location(start.file, start.line, start.column + o, start.chain)
    return Location(start.file, start.line + newlines, o - raw.rfind("\n", 0, o), start.chain)


def _offsets(style: str | None, raw: str, value: str) -> list[int] | None:
    """For each character of `value`, its offset in `raw`; None when the walk cannot agree."""
    if style in (None, "'", '"'):
        got = _walk_flow(style, raw)
        if got is not None and "".join(c for c, _ in got) == value:
            return [o for _, o in got]
    return _greedy(raw, value, skip_first_line=style in ("|", ">"))


def _walk_flow(style: str | None, raw: str) -> list[tuple[str, int]] | None:
    """Read a plain, single- or double-quoted scalar the way YAML does, keeping source offsets."""
    out: list[tuple[str, int]] = []
    j, end = 0, len(raw)
    if style in ("'", '"'):
        if len(raw) < 2 or raw[0] != style or raw[-1] != style:
            return None
        j, end = 1, len(raw) - 1
    while j < end:
        c = raw[j]
        if c in " \t":
            k = j
            while k < end and raw[k] in " \t":
                k += 1
            if k < end and raw[k] == "\n":  # trailing white space before a line break is dropped
                j = k
                continue
            out.extend((raw[m], m) for m in range(j, k))
            j = k
        elif c == "\n":
            breaks, k = 0, j
            while k < end and raw[k] in " \t\n":
                breaks += raw[k] == "\n"
                k += 1
            out.extend([("\n", j)] * (breaks - 1) if breaks > 1 else [(" ", j)])
            j = k
        elif style == "'" and c == "'" and j + 1 < end and raw[j + 1] == "'":
            out.append(("'", j))
            j += 2
        elif style == '"' and c == "\\" and j + 1 < end:
            e = raw[j + 1]
            if e == "\n":  # an escaped line break joins the lines without a space
                k = j + 2
                while k < end and raw[k] in " \t":
                    k += 1
                j = k
                continue
            if e in _HEX_ESCAPES:
                n = _HEX_ESCAPES[e]
                try:
                    out.append((chr(int(raw[j + 2:j + 2 + n], 16)), j))
                except ValueError:
                    return None
                j += 2 + n
                continue
            out.append((_SIMPLE_ESCAPES.get(e, e), j))
            j += 2
        else:
            out.append((c, j))
            j += 1
    return out


_SIMPLE_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
                   "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85",
                   "_": "\xa0", "L": "\u2028", "P": "\u2029"}


def _greedy(raw: str, value: str, skip_first_line: bool) -> list[int] | None:
    """Match each value character to the next equal source character (block scalars)."""
    j = raw.find("\n") + 1 if skip_first_line else 0
    out = []
    for c in value:
        while j < len(raw) and not (raw[j] == c or (c in " \n" and raw[j] in " \n")):
            j += 1
        if j >= len(raw):
            return None
        out.append(j)
        j += 1
    return out
