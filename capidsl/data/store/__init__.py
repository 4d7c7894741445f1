"""Token stores: a corpus tokenised once into memory-mapped shards, found again by a content id.

`ensure_store(spec)` returns the store of a source (prepared first when the cache lacks it);
`locate(spec)` names it without reading any tokens. docs/data.md describes the layout.
"""

from capidsl.data.store.prepare import Silent, ensure_store, locate, plan_stores
from capidsl.data.store.read import Store, TokenSplit
from capidsl.data.store.spec import DOCUMENT_SOURCES, StoreSpec, cache_root, spec_of

__all__ = ["DOCUMENT_SOURCES", "Silent", "Store", "StoreSpec", "TokenSplit", "cache_root", "ensure_store", "locate", "plan_stores",
           "spec_of"]
