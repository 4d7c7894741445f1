"""Checking a store's shards against the sha256 its manifest recorded when they were written."""

from __future__ import annotations

import hashlib

from capidsl.data.store.read import Store


def verify(store: Store) -> list[str]:
    """The shard files whose contents differ from the manifest's checksums (or are missing)."""
    bad = []
    for split in store.manifest["splits"].values():
        for shard in split["shards"]:
            for what, name in shard["files"].items():
                try:
                    with open(store.root / name, "rb") as fh:
                        digest = hashlib.file_digest(fh, "sha256").hexdigest()
                except OSError:
                    digest = None
                if digest != shard["sha256"][what]:
                    bad.append(name)
    return bad
