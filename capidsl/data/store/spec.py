"""What a token store is made from: the source, its files, the tokenizer and the split rule.

A `StoreSpec` holds exactly the fields of a recipe's (or plan's) `data:` section that decide the
tokens a store holds. Two specs over files with the same contents make the same store id
(identity.py); anything else (the cache directory, the batch, the model) does not enter it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DOCUMENT_SOURCES = ("stdlib", "text", "jsonl", "csv", "parquet", "hf")  # tokenised into a store
STORE_FORMAT = 1  # bump when the layout or the tokenisation rules change: old stores are not reused


@dataclass(frozen=True)
class StoreSpec:
    source: str
    path: str | None
    field: str
    tokenizer: str
    validation_fraction: float
    hf_split: str = "train"
    format: str = "text"  # text | supervised
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    bad_documents: str = "error"  # error | skip

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields read from each record."""
        return (self.prompt_field, self.completion_field) if self.format == "supervised" else (self.field,)

    def describe(self) -> str:
        where = "the Python standard library" if self.source == "stdlib" else f"{self.source} {self.path}"
        return f"{where}, tokenizer {self.tokenizer}"


def spec_of(data, **source) -> StoreSpec:
    """The spec of a DataPlan or a recipe's DataConfig (or one mixture source's fields over it)."""
    get = lambda name, default=None: source.get(name, getattr(data, name, default))  # noqa: E731
    return StoreSpec(source=get("source"), path=get("path"), field=get("field", "text"), tokenizer=data.tokenizer,
                     validation_fraction=float(data.validation_fraction), hf_split=get("hf_split", "train") or "train",
                     format=getattr(data, "format", "text"), prompt_field=getattr(data, "prompt_field", "prompt"),
                     completion_field=getattr(data, "completion_field", "completion"),
                     bad_documents=getattr(data, "bad_documents", "error"))


def cache_root(configured: str | None = None) -> Path:
    """Where stores live: the recipe's `data.cache`, else $CAPIDSL_CACHE, else the user's cache directory."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("CAPIDSL_CACHE"):
        return Path(os.environ["CAPIDSL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "capidsl" / "tokens"
