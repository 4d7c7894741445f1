"""`capidsl run gs://bucket/recipe.yaml`: the recipe, and the parents its `extends` chain names, downloaded.

The chain is followed with the recipe front end's own hardened YAML reader (size, depth and alias
limits), so a hostile remote recipe is refused here exactly as a local one would be; anything it
cannot read is left for the recipe loader to report, with its position.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from capidsl.recipe.errors import RecipeError
from capidsl.recipe.load import MAX_EXTENDS
from capidsl.recipe.yaml12 import decode, read_bytes, read_yaml


def _extends(path: Path) -> str | None:
    try:
        data = read_yaml(decode(read_bytes(path, str(path)), str(path)), str(path)).data
    except RecipeError:
        return None
    parent = data.get("extends") if isinstance(data, dict) else None
    return parent if isinstance(parent, str) and not posixpath.isabs(parent) else None


def fetch_recipe(text: str) -> Path:
    """A gs:// recipe (and the files its `extends` chain names, relative to it) downloaded; its local path."""
    from capidsl.storage.errors import StorageError
    from capidsl.storage.gcs import GsUrl
    from capidsl.storage.gcs import Store
    from capidsl.storage.workdir import fetch_file

    url = GsUrl.parse(text)
    if not url.prefix:
        raise StorageError("a recipe URL names an object, not a bucket", subject=text)
    store = Store(GsUrl(url.bucket, ""))
    first = path = fetch_file(url, store)
    seen = {url.prefix}
    for _ in range(MAX_EXTENDS):  # deeper chains, and cycles, are reported by the recipe loader itself
        parent = _extends(path)
        if parent is None:
            break
        name = posixpath.normpath(posixpath.join(posixpath.dirname(url.prefix), parent))
        if name.startswith("..") or name in seen:
            break
        seen.add(name)
        url = GsUrl(url.bucket, name)
        path = fetch_file(url, store)
    return first
