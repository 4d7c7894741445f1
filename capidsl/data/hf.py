"""The `hf` data source: Hugging Face `datasets` datasets on local disk (save_to_disk folders or data files),
cut into row ranges and read column by column, so that a store tokenises millions of rows in parallel units.

`datasets` is an optional extra, imported lazily and in offline mode: nothing is fetched from the hub.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

from capidsl.data.errors import DataError

RANGE_BYTES = 16 << 20  # about this much of the dataset's data per row range (one work unit)
BATCH_ROWS = 1024  # rows converted to Python per slice in hf_rows
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
            ".arrow": "arrow"}


def _datasets():
    """The `datasets` module, forced offline: its config reads these variables once, at import."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise DataError("the hf source needs the `datasets` library, which is not installed",
                        subject="data.source", hint="pip install 'capidsl[hf]'") from None
    return datasets


def _data_files(root: Path) -> tuple[str, list[str]]:
    """(builder, files) of a data file or a folder of data files of one kind, in sorted order."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if p.suffix.lower() in BUILDERS]
    kinds = sorted({BUILDERS[p.suffix.lower()] for p in files})
    if len(kinds) != 1:
        found = f"files of kinds {kinds}" if kinds else "no data file of a known kind"
        raise DataError(f"{root} is not a dataset saved with save_to_disk and has {found}", subject="data.path",
                        hint=f"give one kind of data file ({', '.join(BUILDERS)}) or a save_to_disk folder")
    return kinds[0], [str(p) for p in files]


def _load_saved(datasets, root: Path):
    """A Dataset written by save_to_disk, memory-mapped. datasets 5.2 writes no Arrow shard for a
    dataset of 0 rows and then fails to load it (IndexError), so that case is rebuilt from its info."""
    if not json.loads((root / "state.json").read_text()).get("_data_files"):
        features = datasets.DatasetInfo.from_directory(str(root)).features or {}
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features or None)
    return datasets.load_from_disk(str(root), keep_in_memory=False)


def _load(datasets, root: Path, split: str):
    if root.is_dir() and (root / "dataset_dict.json").is_file():  # a DatasetDict: open only the split asked for
        splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise DataError(f"{root} has no split {split!r}; its splits are {sorted(splits)}",
                            subject="data.hf_split", hint="set data.hf_split to one of them")
        return _load_saved(datasets, root / split)
    if root.is_dir() and (root / "state.json").is_file():
        dataset = _load_saved(datasets, root)
    else:
        builder, files = _data_files(root)
        if all(os.path.getsize(f) == 0 for f in files):  # load_dataset raises a bare StopIteration on these
            return datasets.Dataset.from_dict({})
        bars_off = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # capidsl reports progress itself; no bars from worker processes
        try:
            dataset = datasets.load_dataset(builder, data_files=files, split="train",
                                            cache_dir=os.environ.get("HF_DATASETS_CACHE"))
        finally:
            if not bars_off:
                datasets.enable_progress_bars()
    own = {"train", str(dataset.split)} if dataset.split else {"train"}
    if split not in own:
        raise DataError(f"{root} holds one dataset (split {sorted(own)}), not a DatasetDict with split {split!r}",
                        subject="data.hf_split", hint="leave data.hf_split at 'train' or save a DatasetDict")
    return dataset


@functools.lru_cache(maxsize=16)
def _open(path: str, split: str):
    datasets = _datasets()
    root = Path(path)
    if not root.exists():
        raise DataError(f"{path} does not exist", subject="data.path",
                        hint="the hf source reads local datasets only (save_to_disk folders or data files)")
    try:
        return _load(datasets, root, split).with_format(None)
    except DataError:
        raise
    except Exception as err:  # a malformed file, an unreadable save_to_disk folder: name the path
        cause = f" ({err.__cause__})" if err.__cause__ else ""  # DatasetGenerationError wraps the parser's error
        raise DataError(f"{path} cannot be read as a Hugging Face dataset: {type(err).__name__}: {err}{cause}",
                        subject="data.path") from err


def _dataset(path: str, split: str):
    """The split, cached per process (hf_rows runs once per unit), giving Python values: save_to_disk keeps
    a set_format("numpy"/"torch") and load_from_disk restores it."""
    return _open(os.path.abspath(os.path.expanduser(path)), split)


def hf_row_ranges(path: str, split: str) -> list[tuple[int, int, int]]:
    """The split's rows as contiguous ranges (start, end, approx_bytes) of about RANGE_BYTES each."""
    dataset = _dataset(path, split)
    rows = dataset.num_rows
    if rows == 0:
        return []
    row_bytes = dataset.data.nbytes / max(len(dataset.data), 1)
    step = max(1, int(RANGE_BYTES // max(row_bytes, 1.0)))
    return [(a, min(a + step, rows), int((min(a + step, rows) - a) * row_bytes)) for a in range(0, rows, step)]


def hf_rows(path: str, split: str, start: int, end: int, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(row index, {field: value}) for rows [start, end) of the split, reading only `fields`."""
    dataset = _dataset(path, split)
    missing = [f for f in fields if f not in dataset.column_names]
    if missing:
        raise DataError(f"{path} has no column {missing[0]!r}; its columns are {dataset.column_names}",
                        subject="data.field", hint="set data.field (or prompt_field/completion_field) to one of them")
    return _rows(dataset.select_columns(list(dict.fromkeys(fields))), start, min(end, dataset.num_rows), fields)


def _rows(columns, start: int, end: int, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    for a in range(start, end, BATCH_ROWS):  # one Arrow slice → Python lists per batch, not per row
        batch = columns[a:min(a + BATCH_ROWS, end)]
        for k, row in enumerate(zip(*(batch[f] for f in fields))):
            yield a + k, dict(zip(fields, row))
