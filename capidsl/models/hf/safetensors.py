"""The safetensors format read and written directly: memory-mapped tensors, streamed writes.

A file is 8 bytes (little-endian header length n), n bytes of JSON header ({name: {dtype, shape,
data_offsets: [begin, end]}}, plus an optional "__metadata__"), then the tensors' bytes. Reading
maps the file (np.memmap) and hands out views, so a slice of a tensor touches only its pages; the
`safetensors` package cannot give bfloat16 to numpy, which most checkpoints are. Writing streams
one tensor at a time, so exporting a model never holds two copies of it on the host.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from capidsl.models.errors import ModelError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100 << 20  # the format's own limit on a header (100 MB)


def _bad(path: Path, why: str) -> ModelError:
    return ModelError(f"{path}: {why}", subject="model.init.from",
                      hint="the file is not a complete safetensors file: download or save it again")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: where it is and what it holds."""

    name: str
    dtype: str  # the format's name: F32, BF16, ...
    shape: tuple[int, ...]
    file: Path
    begin: int  # byte offset in the file, from the start of the file


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one .safetensors file, from its header only (a few KB read)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"{size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise _bad(path, f"header length {n} does not fit in a file of {size} bytes")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file", subject="model.init.from") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _bad(path, f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise _bad(path, f"tensor {name!r} has a malformed header entry") from None
        if dtype not in DTYPES:
            raise _bad(path, f"tensor {name!r} has dtype {dtype}, not one of {', '.join(DTYPES)}")
        nbytes = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != nbytes or 8 + n + end > size or begin < 0:
            raise _bad(path, f"tensor {name!r} ({dtype} {list(shape)}) has byte range [{begin}, {end}) "
                             f"that does not match its size {nbytes} or lies past the end of the file")
        out[name] = TensorInfo(name, dtype, shape, path, 8 + n + begin)
    return out


class Checkpoint:
    """The tensors of a Hugging Face model directory: one model.safetensors, or shards named by
    model.safetensors.index.json. Headers are read at once; data only when a tensor is read."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index = self.directory / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ModelError(f"{index}: not a safetensors index ({err})", subject="model.init.from") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.directory / f).is_file()]
            if missing:
                raise ModelError(f"{index} names {len(missing)} missing file(s): {', '.join(missing[:4])}",
                                 subject="model.init.from", hint="download every shard the index lists")
        elif (self.directory / SINGLE).is_file():
            files, weight_map = [SINGLE], None
        else:
            raise ModelError(f"{self.directory} has no {SINGLE} nor {INDEX}", subject="model.init.from",
                             hint="save the model with save_pretrained(..., safe_serialization=True)")
        self.tensors: dict[str, TensorInfo] = {}
        for f in files:
            self.tensors.update(read_header(self.directory / f))
        if weight_map is not None:
            stray = sorted(set(weight_map) - set(self.tensors))
            if stray:
                raise ModelError(f"{index} lists {len(stray)} tensor(s) its files do not hold: {', '.join(stray[:4])}",
                                 subject="model.init.from")
        self.files = [self.directory / f for f in files]

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array in its stored dtype (no bytes read yet).

        Each call maps just this tensor, and the mapping closes when the array (and every view of
        it) is dropped: pages read for one tensor leave the process's RSS once it is placed, instead
        of accumulating until the whole checkpoint is mapped in. Copy what you keep: the array
        aliases the file."""
        t = self.tensors[name]
        if not t.shape or math.prod(t.shape) == 0:
            return np.zeros(t.shape, DTYPES[t.dtype])
        return np.memmap(t.file, dtype=DTYPES[t.dtype], mode="r", offset=t.begin, shape=t.shape)

    def nbytes(self) -> int:
        return sum(math.prod(t.shape) * np.dtype(DTYPES[t.dtype]).itemsize for t in self.tensors.values())


def write_safetensors(path: Path, tensors: Iterable[tuple[str, np.dtype, tuple[int, ...], Callable[[], np.ndarray]]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file, calling each tensor's producer in turn and writing its bytes at once
    (only one tensor on the host at a time). The header, which needs every shape first, comes first."""
    entries, offset, order = {}, 0, []
    for name, dtype, shape, produce in tensors:
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        entries[name] = {"dtype": NAMES[dt.name], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        order.append((name, dt, tuple(shape), produce))
        offset += nbytes
    if metadata:
        entries["__metadata__"] = dict(metadata)
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, dt, shape, produce in order:
            value = np.ascontiguousarray(produce(), dtype=dt)
            if value.shape != shape:
                raise ValueError(f"tensor {name}: produced shape {value.shape}, announced {shape}")
            f.write(value.reshape(-1).view(np.uint8).data)  # no copy beyond the producer's own
        f.flush()
        os.fsync(f.fileno())
