"""Safe YAML reading that remembers where every value came from, for recipes written by strangers.

PyYAML does the scanning and parsing (safe: it builds nodes, never objects); this module turns
the node tree into plain data itself, so that it can
- resolve plain scalars by the YAML 1.2 core schema (`2e-5` is a float, `yes` and `2024-01-01`
  are strings, `0o17` is octal), where PyYAML's own resolver follows YAML 1.1;
- record a `Location` for every key and value, and keep each string scalar's source text so a
  column inside it (a recipe-language error) can be mapped back to the file;
- refuse duplicate keys, non-string keys and unknown tags as problems, all reported at once;
- refuse hostile input early and with bounded memory: files over `MAX_BYTES`, bytes that are not
  UTF-8, nesting deeper than `MAX_DEPTH`, alias bombs (more than `MAX_NODES` values once
  aliases are expanded, or a recursive alias), and number literals no float can hold (`1e400`,
  a 400-digit integer), which would otherwise overflow wherever the value is first used.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from capidsl.recipe.errors import Location, Problem, RecipeError

MAX_BYTES = 1 << 20  # 1 MiB: a recipe is a page of text, never a data file
MAX_DEPTH = 32  # recipes nest three or four levels; PyYAML's composer recurses per level
MAX_NODES = 20_000  # values after alias expansion: "billion laughs" stops here

KeyPath = tuple  # a key path: ("training", "batch_size") or ("model", "hidden", 1)

_PLAIN = "?plain"
_STR, _INT, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_BOOL, _NULL = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
_NULL_RE = re.compile(r"~|null|Null|NULL|")
_BOOL_RE = re.compile(r"true|True|TRUE|false|False|FALSE")
_INT_RE = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF_RE = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN_RE = re.compile(r"\.(nan|NaN|NAN)")


@dataclass(frozen=True)
class Scalar:
    """The source of a string scalar: its style (None = plain, "'", '"', "|", ">") and the raw
    text between its start and end marks, so a character of its value can be found in the file."""

    style: str | None
    raw: str


@dataclass(frozen=True)
class Position:
    """Where a value (and the key that names it, for mapping entries) is written."""

    value: Location
    key: Location | None = None
    scalar: Scalar | None = None

    def shifted(self, chain: tuple[str, ...]) -> "Position":
        key = self.key.shifted(chain) if self.key else None
        return Position(self.value.shifted(chain), key, self.scalar)


@dataclass(frozen=True)
class Document:
    """A YAML file read as plain data, plus the position of every key path in it."""

    data: Any
    positions: dict[KeyPath, Position]
    file: str


class _Refused(Exception):
    """Input refused outright (too deep, too many values): one problem, no further reading."""

    def __init__(self, location: Location, message: str):
        self.problem = Problem(location, "", message)


class _Resolver(BaseResolver):
    """Leaves plain scalars unresolved (tag "?plain") so the 1.2 core schema can be applied later."""

    yaml_implicit_resolvers: dict = {}

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


class _Composer(Composer):
    """PyYAML's composer (in Python, whichever parser feeds it), with a depth limit."""

    def _start(self, file: str):
        Composer.__init__(self)
        _Resolver.__init__(self)
        self._file = file
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(_loc(self._file, mark), f"nesting deeper than {MAX_DEPTH} levels is refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(_Composer, Reader, Scanner, Parser, _Resolver):
    """The pure-Python reader, scanner and parser."""

    def __init__(self, text: str, file: str):
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        self._start(file)


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_Composer, CParser, _Resolver):
        """libyaml's scanner and parser (about 5x faster), composed in Python as above."""

        def __init__(self, text: str, file: str):
            CParser.__init__(self, text)
            self._start(file)

    _Loader = _CLoader
else:  # PyYAML built without libyaml: same results, slower
    _Loader = _PyLoader


def _loc(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def read_bytes(path: Path, file: str) -> bytes:
    """The file's bytes, refusing anything over MAX_BYTES without reading it all."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError([Problem(None, "", f"{file}: no such file")]) from None
    except IsADirectoryError:
        raise RecipeError([Problem(None, "", f"{file}: is a folder, not a recipe file")]) from None
    except OSError as err:
        raise RecipeError([Problem(None, "", f"{file}: cannot read: {err.strerror}")]) from None
    if len(data) > MAX_BYTES:
        raise RecipeError([Problem(Location(file, 1, 1), "", f"file is larger than {MAX_BYTES // 1024} KiB; refused")])
    return data


def decode(data: bytes, file: str) -> str:
    """UTF-8 text (a leading BOM dropped), or a problem at the first byte that is not UTF-8."""
    if len(data) > MAX_BYTES:
        raise RecipeError([Problem(Location(file, 1, 1), "", f"text is larger than {MAX_BYTES // 1024} KiB; refused")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        column = len(data[line_start:err.start].decode("utf-8", "replace")) + 1
        bad = data[err.start:err.start + 1].hex()
        raise RecipeError([Problem(Location(file, line, column), "", f"not UTF-8 text (byte 0x{bad}); save the file as UTF-8")]) from None


def read_yaml(text: str, file: str) -> Document:
    """Parse one YAML document into plain data with positions; RecipeError lists every problem."""
    if len(text) > MAX_BYTES:
        raise RecipeError([Problem(Location(file, 1, 1), "", f"text is larger than {MAX_BYTES // 1024} KiB; refused")])
    loader = None
    try:
        loader = _Loader(text, file)
        node = loader.get_single_node()
    except _Refused as err:
        raise RecipeError([err.problem]) from None
    except yaml.MarkedYAMLError as err:
        raise RecipeError([_yaml_problem(err, file)]) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = err.character if isinstance(err.character, int) else ord(text[err.position])
        raise RecipeError([Problem(Location(file, line, column), "",
                                   f"invalid YAML: control character U+{char:04X} is not allowed")]) from None
    except yaml.YAMLError as err:  # any other PyYAML complaint, without a mark
        raise RecipeError([Problem(Location(file, 1, 1), "", f"invalid YAML: {err}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return Document(None, {(): Position(Location(file, 1, 1))}, file)
    builder = _Builder(text, file)
    try:
        data = builder.build(node, (), None)
    except _Refused as err:
        raise RecipeError([err.problem]) from None
    if builder.problems:
        raise RecipeError(builder.problems)
    return Document(data, builder.positions, file)


def _yaml_problem(err: yaml.MarkedYAMLError, file: str) -> Problem:
    mark = err.problem_mark or err.context_mark
    message = err.problem or err.context or "invalid YAML"
    if err.context and err.problem:
        message = f"{err.problem} ({err.context}"
        if err.context_mark is not None and err.problem_mark is not None and err.context_mark.line != err.problem_mark.line:
            message += f" at line {err.context_mark.line + 1}"
        message += ")"
    location = _loc(file, mark) if mark is not None else Location(file, 1, 1)
    if err.problem and "maximum nesting depth" in err.problem:
        # libyaml >= 0.2.6 (PyYAML 6.0.3+ wheels) stops at 1000 flow levels while scanning ahead,
        # before our composer's tighter limit is reached: the same refusal, in the same words.
        return Problem(location, "", f"nesting deeper than {MAX_DEPTH} levels is refused")
    if err.problem and err.problem.startswith("but found another document"):
        return Problem(location, "", "a recipe is one YAML document; remove this second one (and its ---)")
    return Problem(location, "", f"invalid YAML: {message}")


class _Builder:
    """Node tree → plain data, counting every value (aliases included) and recording positions."""

    def __init__(self, text: str, file: str):
        self.text = text
        self.file = file
        self.count = 0
        self.problems: list[Problem] = []
        self.positions: dict[KeyPath, Position] = {}
        self._open: set[int] = set()  # ids of collections being built: an alias to one is recursive

    def build(self, node, path: KeyPath, key: Location | None):
        self.count += 1
        if self.count > MAX_NODES:
            raise _Refused(_loc(self.file, node.start_mark),
                           f"more than {MAX_NODES} values once aliases are expanded; refused (an alias bomb?)")
        here = _loc(self.file, node.start_mark)
        if isinstance(node, ScalarNode):
            value = self._scalar(node, path, here)
            scalar = None
            if isinstance(value, str):
                scalar = Scalar(node.style or None, self.text[node.start_mark.index:node.end_mark.index])
            self.positions[path] = Position(here, key, scalar)
            return value
        if id(node) in self._open:
            raise _Refused(here, "a recursive alias (a value that contains itself) is refused")
        self.positions[path] = Position(here, key)
        if node.tag not in (_MAP, _SEQ):
            self._problem(here, join_path(path), f"the tag {_tag(node.tag)} is not allowed in a recipe")
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, path + (i,), None) for i, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict:
        out: dict[str, Any] = {}
        first: dict[str, Location] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(self.file, key_node.start_mark)
            key = self._key(key_node, path, key_loc)
            if key is None:
                continue
            if key in first:
                self._problem(key_loc, join_path(path + (key,)),
                              f"duplicate key {key!r} (first written at line {first[key].line}); remove one")
                continue
            first[key] = key_loc
            out[key] = self.build(value_node, path + (key,), key_loc)
        return out

    def _key(self, node, path: KeyPath, where: Location) -> str | None:
        if not isinstance(node, ScalarNode):
            self._problem(where, join_path(path), "keys must be plain strings, not a list or mapping")
            return None
        self.count += 1
        value = self._scalar(node, path, where)
        if not isinstance(value, str):
            shown = "null" if value is None else f"{_type_word(value)} {node.value}"
            self._problem(where, join_path(path), f"keys must be strings, not {shown}; quote it if you mean the text")
            return None
        return value

    def _scalar(self, node: ScalarNode, path: KeyPath, where: Location):
        tag, text = node.tag, node.value
        if tag in (_PLAIN, _INT, _FLOAT):
            trouble = range_problem(text)
            if trouble is not None:
                self._problem(where, join_path(path), trouble)
                return text
        if tag == _PLAIN:
            return resolve_plain(text)
        if tag == _STR:
            return text
        if tag in (_INT, _FLOAT, _BOOL, _NULL):
            value = resolve_plain(text)
            wanted = {_INT: int, _FLOAT: float, _BOOL: bool, _NULL: type(None)}[tag]
            if tag == _FLOAT and type(value) is int:
                return float(value)
            if type(value) is wanted:
                return value
            self._problem(where, join_path(path), f"{text!r} is not a valid {tag.rsplit(':', 1)[1]}")
            return text
        self._problem(where, join_path(path), f"the tag {_tag(tag)} is not allowed in a recipe")
        return text

    def _problem(self, where: Location, path: str, message: str):
        self.problems.append(Problem(where, path, message))


def range_problem(text: str) -> str | None:
    """Why a scalar that reads as a number cannot be one (None when it can): every number of a
    recipe must fit a float, so an integer beyond ±1.8e308 or a float literal that overflows to
    infinity or rounds to 0 is refused here, with its place, before any stage converts it.

    Decimal integers are measured by their digits first: Python refuses int() of more than 4300."""
    if _INT_RE.fullmatch(text):
        digits = text.lstrip("+-")
        if not digits.startswith(("0o", "0x")) and len(digits.lstrip("0")) > _MAX_DIGITS:
            return _too_large(text)
        if abs(resolve_plain(text)) > sys.float_info.max:
            return _too_large(text)
    elif _FLOAT_RE.fullmatch(text):
        value = float(text)
        if math.isinf(value):
            return _too_large(text)
        mantissa = re.split("[eE]", text)[0]
        if value == 0 and any(c in "123456789" for c in mantissa):
            return f"{short_number(text)} is too small to hold as a number (it rounds to 0, below 5e-324); write 0 for zero"
    return None


_MAX_DIGITS = len(str(int(sys.float_info.max)))  # 309: a decimal integer this long may still fit


def _too_large(text: str) -> str:
    return f"{short_number(text)} is outside the range of numbers (a float holds at most ±1.8e308)"


def short_number(text: str) -> str:
    """A number's text for a message: long ones cut to their ends and their digit count."""
    text = str(text)
    if len(text) <= 24:
        return text
    return f"{text[:8]}...{text[-4:]} ({len(text)} characters)"


def resolve_plain(text: str):
    """A plain scalar's value under the YAML 1.2 core schema."""
    if _NULL_RE.fullmatch(text):
        return None
    if _BOOL_RE.fullmatch(text):
        return text[0] in "tT"
    if _INT_RE.fullmatch(text):
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    if _INF_RE.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN_RE.fullmatch(text):
        return math.nan
    return text


def _tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _type_word(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")


def join_path(path: KeyPath) -> str:
    """("model", "hidden", 1) -> "model.hidden[1]"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
