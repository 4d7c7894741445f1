"""Preparing a store: every work unit tokenised by parallel worker processes, written atomically.

The units' shards go into `<cache>/<id>.partial/`, each with a record of its counts once it is
complete, so an interrupted preparation continues where it stopped. Only when every unit is done
is the manifest written and the directory renamed to `<cache>/<id>/`: a directory with that name
is always complete. A lock file keeps two processes on one host from preparing the same store.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from capidsl.data.errors import DataError
from capidsl.data.store.identity import SourceFile, hash_files, identity, source_files, store_id
from capidsl.data.store.read import MANIFEST, Store
from capidsl.data.store.shard import SPLITS, shard_name, token_dtype, tokenise_unit
from capidsl.data.store.spec import StoreSpec, cache_root
from capidsl.data.store.units import UNIT_BYTES, Unit, plan_units
from capidsl.data.tokenize import get_tokenizer

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Silent:
    """The progress interface (`capidsl data prepare` draws a rich bar instead): no output."""

    def start(self, description: str, total_bytes: int, units: int) -> None: ...
    def advance(self, nbytes: int, documents: int, tokens: int) -> None: ...
    def finish(self) -> None: ...


def locate(spec: StoreSpec, cache: str | None = None) -> tuple[Path, str, list[SourceFile], dict]:
    """(cache root, store id, the source's files with their hashes, the identity) — reads no tokens."""
    root = cache_root(cache)
    files = hash_files(source_files(spec), root)
    ident = identity(spec, files)
    return root, store_id(ident), files, ident


def ensure_store(spec: StoreSpec, cache: str | None = None, *, workers: int | None = None, progress=None,
                 expect: str | None = None) -> Store:
    """The spec's store, prepared first if it is not in the cache. `expect`: the id a plan was
    compiled with; other files now (changed since) are refused, naming them."""
    root, sid, files, ident = locate(spec, cache)
    if expect and sid != expect:
        raise DataError(changed_since(root, expect, files), subject="data.path",
                        hint="compile the plan again (a new store is prepared), or restore the files")
    final = root / sid
    if (final / MANIFEST).is_file():
        return Store(final)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{sid}.lock"):
        if not (final / MANIFEST).is_file():  # another process may have finished it while we waited
            _prepare(spec, root, sid, files, ident, workers, progress or Silent())
    return Store(final)


def plan_stores(data, progress=None) -> list[Store]:
    """The stores a DataPlan names (one, or one per mixture source), prepared when missing; each
    must have the plan's id (else the files changed since the plan was compiled: refused)."""
    from capidsl.data.store.spec import DOCUMENT_SOURCES, spec_of

    if getattr(data, "kind", "lm") != "lm":
        return []
    if data.mixture:
        return [ensure_store(spec_of(data, source=m.source, path=m.path, field=m.field, hf_split=m.hf_split),
                             data.cache or None, progress=progress, expect=m.store) for m in data.mixture]
    if data.source not in DOCUMENT_SOURCES:
        return []
    return [ensure_store(spec_of(data), data.cache or None, progress=progress, expect=data.store or None)]


def store_change(data, old_id: str) -> str:
    """In words, what differs between the sources' files now and those store `old_id` was made from."""
    from capidsl.data.store.spec import DOCUMENT_SOURCES, spec_of

    if data.source not in DOCUMENT_SOURCES:
        return ""
    try:
        root, _sid, files, _ = locate(spec_of(data), data.cache or None)
    except DataError:
        return ""
    return changed_since(root, old_id, files)


def changed_since(root: Path, old_id: str, files: list[SourceFile]) -> str:
    """Which files differ from those store `old_id` was made from (when its record is still there)."""
    for candidate in (root / old_id / MANIFEST, root / f"{old_id}.partial" / "identity.json"):
        try:
            record = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        old = {rel: sha for rel, _size, sha in record.get("identity", record)["files"]}
        now = {f.rel: f.sha256 for f in files}
        changed = sorted(r for r in old.keys() & now.keys() if old[r] != now[r])
        parts = [f"changed: {', '.join(changed[:5])}" if changed else "",
                 f"new: {', '.join(sorted(now.keys() - old.keys())[:5])}" if now.keys() - old.keys() else "",
                 f"gone: {', '.join(sorted(old.keys() - now.keys())[:5])}" if old.keys() - now.keys() else ""]
        what = "; ".join(p for p in parts if p) or "the tokenizer, the split rule or the format changed"
        return f"the data changed since the plan was compiled (store {old_id}): {what}"
    return (f"the data no longer makes the plan's token store {old_id} (a source file, the tokenizer or the "
            f"split rule changed since the plan was compiled)")


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(value, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _prepare(spec, root: Path, sid: str, files, ident, workers, progress) -> None:
    partial = root / f"{sid}.partial"
    try:
        partial.mkdir(exist_ok=True)
        _write_json(partial / "identity.json", {"identity": ident})
        vocab = 256 if spec.tokenizer == "byte" else get_tokenizer(spec.tokenizer).vocab_size
        dtype = token_dtype(vocab)
        units = plan_units(spec, files)
        results = {}
        for u in units:  # units an interrupted preparation completed
            try:
                results[u.index] = json.loads((partial / f"{u.index:05d}.done.json").read_text())
            except (OSError, ValueError):
                pass
        progress.start(spec.describe(), sum(u.size for u in units), len(units))
        for u in units:
            if u.index in results:
                progress.advance(u.size, *_count(results[u.index]))
        todo = [u for u in units if u.index not in results]
        for u, result in _run(todo, spec, partial, dtype.name, workers):
            if "error" in result:
                raise _error(result["error"], spec, partial)
            _write_json(partial / f"{u.index:05d}.done.json", result)
            results[u.index] = result
            progress.advance(u.size, *_count(result))
        for f in files:  # a file written to while it was read: its tokens are of neither version
            if os.stat(f.path).st_size != f.size or hash_files([(f.rel, Path(f.path))], root)[0].sha256 != f.sha256:
                raise DataError(f"{f.path} changed while the store was being prepared", subject="data.path",
                                hint="run again once whatever writes it has finished")
        manifest = _manifest(sid, ident, spec, vocab, dtype.name, units, results)
        _write_json(partial / MANIFEST, manifest)
        for u in units:
            (partial / f"{u.index:05d}.done.json").unlink(missing_ok=True)
        os.rename(partial, root / sid)
        progress.finish()
    except OSError as err:
        if err.errno in NO_SPACE:
            raise DataError(f"no space left in {root} while preparing token store {sid}", subject="data.cache",
                            hint=f"free space or point data.cache elsewhere; the finished part in {partial} is kept "
                                 "and the next run continues from it (delete it to start over)") from None
        raise


def _count(result: dict) -> tuple[int, int]:
    return (sum(s["documents"] for s in result["splits"].values()), sum(s["tokens"] for s in result["splits"].values()))


def _error(error: dict, spec: StoreSpec, partial: Path) -> DataError:
    if error.get("errno") in NO_SPACE:
        return OSError(error["errno"], error["problem"], error["where"])
    hint = ("set data.bad_documents: skip to leave such documents out (the plan counts them)"
            if error.get("skippable") and spec.bad_documents != "skip" else "fix the file, or choose another data.field")
    return DataError(f"{error['where']}: {error['problem']}", subject="data", hint=hint)


def _init_worker() -> None:
    os.environ["RAYON_NUM_THREADS"] = "1"  # the processes are the parallelism: one tokenizer thread each
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _run(units: list[Unit], spec: StoreSpec, out: Path, dtype: str, workers: int | None):
    """(unit, result) as units finish: in this process for a small corpus, else in spawned workers."""
    workers = min(workers or os.cpu_count() or 1, len(units))
    if workers <= 1 or sum(u.size for u in units) <= 2 * UNIT_BYTES:
        for u in units:
            yield u, tokenise_unit(u, spec, str(out), dtype)
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may run JAX's threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending = {pool.submit(tokenise_unit, u, spec, str(out), dtype): u for u in units}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: pending[f].index):
                    yield pending.pop(fut), fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def _manifest(sid, ident, spec, vocab, dtype, units, results) -> dict:
    supervised = spec.format == "supervised"
    splits = {}
    for name in SPLITS:
        shards = []
        for u in units:
            info = results[u.index]["splits"][name]
            whats = ("tokens", "ends", "mask") if supervised else ("tokens", "ends")
            shards.append({"unit": u.index, "tokens": info["tokens"], "documents": info["documents"],
                           "loss_tokens": info["loss_tokens"], "sha256": info["sha256"],
                           "files": {w: shard_name(u.index, name, w) for w in whats}})
        splits[name] = {"tokens": sum(s["tokens"] for s in shards), "documents": sum(s["documents"] for s in shards),
                        "loss_tokens": sum(s["loss_tokens"] for s in shards), "shards": shards}
    skipped = [results[u.index] for u in units if results[u.index]["skipped"]]
    return {"id": sid, "identity": ident, "vocab_size": vocab, "dtype": dtype, "splits": splits,
            "skipped": {"documents": sum(r["skipped"] for r in skipped),
                        "first": skipped[0]["first_skipped"] if skipped else None},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def remove_partial(root: Path, sid: str) -> None:
    shutil.rmtree(root / f"{sid}.partial", ignore_errors=True)
