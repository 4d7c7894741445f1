"""A store's id: a content fingerprint of its source files, its tokenizer and its split rule.

A changed file, tokenizer or validation fraction gives a new id, so a store is never reused for
other inputs. Hashing a 1 GB corpus at every start would make start-up grow with the corpus, so
each file's sha256 is remembered beside its (size, mtime, inode) in `<cache>/files.json`, as git's
index does: an unchanged file is hashed once, a touched one again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from capidsl.data.corpus import stdlib_files
from capidsl.data.errors import DataError
from capidsl.data.store.spec import STORE_FORMAT, StoreSpec

HASH_CACHE = "files.json"


@dataclass(frozen=True)
class SourceFile:
    rel: str  # the key of the file's documents (relative to data.path, or the file's name)
    path: str  # absolute
    size: int
    sha256: str


def source_files(spec: StoreSpec) -> list[tuple[str, Path]]:
    """(relative name, path) of every file the source reads, in the fixed order documents come in."""
    if spec.source == "stdlib":
        return stdlib_files()
    if not spec.path:
        raise DataError(f"source {spec.source!r} needs data.path", subject="data.path",
                        hint="point it at a local file or folder")
    root = Path(spec.path).expanduser()
    if not root.exists():
        raise DataError(f"{spec.path} does not exist", subject="data.path")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [(p.relative_to(root).as_posix(), p) for p in files]
    return [(root.name, root)]


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def hash_files(files: list[tuple[str, Path]], cache: Path) -> list[SourceFile]:
    """Each file's sha256, from the remembered hashes when the file's stat is unchanged."""
    memo_path = cache / HASH_CACHE
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    out, changed = [], False
    for rel, path in files:
        p = os.path.abspath(path)
        st = os.stat(p)
        seen = memo.get(p)
        if seen and seen[0] == _stat_key(st):
            digest = seen[1]
        else:
            with open(p, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            if _stat_key(os.stat(p)) != _stat_key(st):
                raise DataError(f"{p} changed while it was being read", subject="data.path",
                                hint="wait until whatever writes it has finished, then run again")
            memo[p], changed = [_stat_key(st), digest], True
        out.append(SourceFile(rel=rel, path=p, size=st.st_size, sha256=digest))
    if changed:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f"{HASH_CACHE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return out


def tokenizer_digest(name: str) -> str:
    """'byte', or the sha256 of a tokenizer file's contents (a retrained tokenizer is another store)."""
    if name == "byte":
        return "byte"
    p = Path(name).expanduser()
    if not p.is_file():
        raise DataError(f"tokenizer file {name} does not exist", subject="data.tokenizer",
                        hint="use 'byte' or a path to a local .model/.json file")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def identity(spec: StoreSpec, files: list[SourceFile]) -> dict:
    """Everything a store's tokens depend on; its canonical JSON's hash is the store id."""
    return {"store_format": STORE_FORMAT, "source": spec.source, "fields": [] if spec.source in ("text", "stdlib") else list(spec.fields),
            "hf_split": spec.hf_split if spec.source == "hf" else None, "format": spec.format,
            "bad_documents": spec.bad_documents, "tokenizer": tokenizer_digest(spec.tokenizer),
            "validation_fraction": float(spec.validation_fraction),
            "files": [[f.rel, f.size, f.sha256] for f in files]}


def store_id(ident: dict) -> str:
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
