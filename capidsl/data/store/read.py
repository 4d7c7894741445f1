"""Reading a prepared store: its manifest, and each split's tokens as one memory-mapped sequence.

A split is the concatenation of its shards in unit order (the corpus's document order). Indexing
gathers only the positions asked for, shard by shard, so a process reading its own rows touches
only the pages that hold them, and nothing is read at open but the manifest and the npy headers.
A TokenSplit pickles as its file names (grain's worker processes reopen the maps, never copy them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from capidsl.data.errors import DataError

MANIFEST = "manifest.json"


class TokenSplit:
    """One split of a store: `len()` tokens; `split[idx]` (an int array or a slice) gathers them."""

    def __init__(self, root: Path, files: list[str], lengths: list[int], dtype: str):
        keep = [(f, n) for f, n in zip(files, lengths) if n > 0]
        self.root, self.files, self.lengths, self.dtype = Path(root), [f for f, _ in keep], [n for _, n in keep], np.dtype(dtype)
        self.bounds = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        self._maps: list | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_maps"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._maps = None

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _open(self) -> list:
        if self._maps is None:
            maps = []
            for f, n in zip(self.files, self.lengths):
                try:
                    arr = np.load(self.root / f, mmap_mode="r")
                except (OSError, ValueError) as err:
                    raise DataError(f"token store {self.root}: shard {f} cannot be read ({err})", subject="data",
                                    hint="delete the store directory; `capidsl data prepare` makes it again") from None
                if arr.shape != (n,):
                    raise DataError(f"token store {self.root}: shard {f} holds {arr.shape[0]} tokens, the manifest "
                                    f"says {n}", subject="data", hint="delete the store directory and prepare it again")
                maps.append(arr)
            self._maps = maps
        return self._maps

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            idx = np.arange(start, stop, step, dtype=np.int64)
        idx = np.asarray(idx, dtype=np.int64)
        flat = idx.ravel()
        maps = self._open()
        if len(maps) == 1:
            return np.asarray(maps[0][flat]).reshape(idx.shape)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range [0, {len(self)})")
        which = np.searchsorted(self.bounds, flat, side="right") - 1
        out = np.empty(flat.shape, self.dtype)
        for k in np.unique(which):
            sel = which == k
            out[sel] = maps[k][flat[sel] - self.bounds[k]]
        return out.reshape(idx.shape)

    def max(self, initial=0) -> int:
        return max([int(m.max()) for m in self._open() if len(m)] + [initial])


class Store:
    """A prepared token store: `manifest` (counts, checksums, what it was made from) and its splits."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self.manifest = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"token store {self.root} has no readable manifest ({err})", subject="data",
                            hint="`capidsl data prepare RECIPE` makes it") from None
        self.id = self.manifest["id"]
        self.vocab_size = int(self.manifest["vocab_size"])

    def split(self, name: str, what: str = "tokens") -> TokenSplit:
        """`what`: tokens, mask (supervised: 1 where a token is a loss target) or ends (document ends)."""
        shards = self.manifest["splits"][name]["shards"]
        lengths = [s["documents"] if what == "ends" else s["tokens"] for s in shards]
        dtype = {"tokens": self.manifest["dtype"], "mask": "uint8", "ends": "int64"}[what]
        return TokenSplit(self.root, [s["files"][what] for s in shards], lengths, dtype)

    @property
    def supervised(self) -> bool:
        return self.manifest["identity"]["format"] == "supervised"

    def counts(self, name: str) -> dict:
        s = self.manifest["splits"][name]
        return {"tokens": s["tokens"], "documents": s["documents"], "loss_tokens": s["loss_tokens"]}

    def document_spans(self, name: str) -> list[tuple[int, int]]:
        """[start, end) token offsets of every document of a split, in order."""
        spans, base = [], 0
        for shard in self.manifest["splits"][name]["shards"]:
            if shard["documents"]:
                ends = np.load(self.root / shard["files"]["ends"])
                starts = np.concatenate([[0], ends[:-1]])
                spans.extend(zip((starts + base).tolist(), (ends + base).tolist()))
            base += shard["tokens"]
        return spans
