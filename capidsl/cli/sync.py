"""`capidsl sync RUN_DIR gs://bucket/prefix`: upload what of a run directory is not in Cloud Storage yet, then check it all."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a local run directory (a gs:// run's working copy, as its summary names it)")
    p.add_argument("url", metavar="GS_URL", help="gs://bucket/prefix to bring up to date with it")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from capidsl.storage.errors import StorageError
    from capidsl.storage.gcs import GsUrl, Store
    from capidsl.storage.sync import Crcs, mismatches, sync_tree

    local = Path(args.run_dir)
    if not local.is_dir():
        raise StorageError("no such run directory", subject=args.run_dir)
    url = GsUrl.parse(args.url)
    store = Store(url)
    store.check()
    crcs = Crcs()
    report = sync_tree(store, local, crcs)
    print(f"{url}: {report.describe()}")
    wrong = mismatches(store, local, crcs)
    if wrong:
        raise StorageError(f"{len(wrong)} files differ from their local copy after the sync (first: {wrong[0]})",
                           subject=str(url), hint="the run directory changed while syncing? run `capidsl sync` again")
    print(f"{url}: every mirrored file matches its local copy (size and CRC32C)")
    return 0
