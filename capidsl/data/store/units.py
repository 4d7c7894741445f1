"""Work units: a corpus cut into pieces that worker processes tokenise independently, in order.

A unit is a run of whole files (text, stdlib: each file a document), a byte range of one JSONL
file cut at line ends (so a 1 GB file is many units and memory stays bounded by the unit size),
one CSV or Parquet file, or a range of rows of a Hugging Face dataset. Concatenating the units'
documents in unit order gives every document in the source's fixed order, and each document keeps
the key the split is decided by (`file`, `file:line`, `file:row`), exactly as before the store.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from capidsl.data.store.spec import StoreSpec

UNIT_BYTES = 16 << 20  # a unit's share of the input: progress granularity and a worker's memory bound
READ_BLOCK = 8 << 20


@dataclass(frozen=True)
class Unit:
    index: int
    files: tuple[tuple[str, str], ...]  # (relative name, absolute path)
    start: int = 0  # jsonl: byte range [start, end) of the one file; hf: row range
    end: int = -1
    first_line: int = 1  # jsonl: the line number at `start`
    size: int = 0  # input bytes (for progress)


class BadDocument(Exception):
    """A document the spec's policy must decide on: where it is and what is wrong."""

    def __init__(self, where: str, problem: str, skippable: bool = True):
        super().__init__(where, problem, skippable)
        self.where, self.problem, self.skippable = where, problem, skippable


def _line_chunks(rel: str, path: str, size: int, first_index: int) -> list[Unit]:
    """Byte ranges of about UNIT_BYTES ending at line ends, with the line number each starts at."""
    units, start, line = [], 0, 1
    with open(path, "rb") as fh:
        while start < size:
            fh.seek(min(start + UNIT_BYTES, size))
            fh.readline()  # to the end of the line the target falls in
            end = min(fh.tell(), size)
            fh.seek(start)
            lines, left = 0, end - start
            while left > 0:
                block = fh.read(min(READ_BLOCK, left))
                lines += block.count(b"\n")
                left -= len(block)
            units.append(Unit(first_index + len(units), ((rel, path),), start, end, line, end - start))
            start, line = end, line + lines
    return units


def plan_units(spec: StoreSpec, files: list) -> list[Unit]:
    """The spec's work units, in document order (`files`: identity.SourceFile, in order)."""
    if spec.source == "hf":
        from capidsl.data.hf import hf_row_ranges

        return [Unit(i, tuple((f.rel, f.path) for f in files), a, b, size=size)
                for i, (a, b, size) in enumerate(hf_row_ranges(spec.path, spec.hf_split))]
    units: list[Unit] = []
    if spec.source in ("text", "stdlib"):  # whole files, grouped up to UNIT_BYTES
        group, size = [], 0
        for f in files:
            group.append((f.rel, f.path))
            size += f.size
            if size >= UNIT_BYTES:
                units.append(Unit(len(units), tuple(group), size=size))
                group, size = [], 0
        if group:
            units.append(Unit(len(units), tuple(group), size=size))
        return units
    for f in files:
        if spec.source == "jsonl":
            units.extend(_line_chunks(f.rel, f.path, f.size, len(units)))
        else:  # csv (quoted fields may span lines) and parquet: one file per unit
            units.append(Unit(len(units), ((f.rel, f.path),), size=f.size))
    return units


def _text(value, where: str, name: str) -> str:
    if value is None:
        raise BadDocument(where, f"field {name!r} is null")
    return value if isinstance(value, str) else str(value)


def _json(line: bytes, where: str, offset: int):
    try:
        return json.loads(line)
    except UnicodeDecodeError as err:
        raise BadDocument(where, f"not valid UTF-8 (byte offset {offset + err.start} in the file)") from None
    except ValueError as err:
        raise BadDocument(where, f"not valid JSON ({err})") from None


def _record(row, spec: StoreSpec, where: str):
    """A record's payload: its text (text format) or (prompt, completion) (supervised)."""
    if not isinstance(row, dict):
        raise BadDocument(where, f"expected an object with {' and '.join(map(repr, spec.fields))}, got {type(row).__name__}",
                          skippable=False)
    for name in spec.fields:
        if name not in row:
            raise BadDocument(where, f"no field {name!r}; the record has {sorted(row)[:8]}", skippable=False)
    if spec.format == "supervised":
        return _text(row[spec.prompt_field], where, spec.prompt_field), _text(row[spec.completion_field], where,
                                                                             spec.completion_field)
    return _text(row[spec.field], where, spec.field)


def _decided(where: str, read):
    """`read()`, or the BadDocument it raised when the policy may skip it (the reading goes on)."""
    try:
        return read()
    except BadDocument as bad:
        if not bad.skippable:
            raise
        return bad


def documents(unit: Unit, spec: StoreSpec):
    """(key, where, payload) of the unit's documents: payload bytes (a whole file), str, or
    (prompt, completion), or a BadDocument the policy decides on. Raises the ones it cannot skip."""
    if spec.source in ("text", "stdlib"):
        for rel, path in unit.files:
            yield rel, rel, Path(path).read_bytes()
        return
    if spec.source == "hf":
        from capidsl.data.hf import hf_rows

        for n, row in hf_rows(spec.path, spec.hf_split, unit.start, unit.end, spec.fields):
            where = f"{spec.path} row {n}"
            yield f"{spec.hf_split}:{n}", where, _decided(where, lambda: _record(row, spec, where))
        return
    (rel, path), = unit.files
    if spec.source == "jsonl":
        with open(path, "rb") as fh:
            fh.seek(unit.start)
            data = fh.read(unit.end - unit.start)
        offset = unit.start
        for n, line in enumerate(data.splitlines(keepends=True), unit.first_line):
            where = f"{path}:{n}"
            if line.strip():
                yield f"{rel}:{n}", where, _decided(where, lambda: _record(_json(line, where, offset), spec, where))
            offset += len(line)
    elif spec.source == "csv":
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                for n, row in enumerate(reader, 2):
                    where = f"{path}:{n}"
                    yield f"{rel}:{n}", where, _decided(where, lambda: _record(row, spec, where))
        except UnicodeDecodeError as err:
            raise BadDocument(path, f"not valid UTF-8 (byte offset {err.start} of a block)", skippable=False) from None
    elif spec.source == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BadDocument(path, "reading Parquet needs pyarrow, which is not installed (pip install pyarrow)",
                              skippable=False) from None
        table = pq.read_table(path, columns=list(spec.fields))
        for n, row in enumerate(table.to_pylist()):
            where = f"{path} row {n}"
            yield f"{rel}:{n}", where, _decided(where, lambda: _record(row, spec, where))
