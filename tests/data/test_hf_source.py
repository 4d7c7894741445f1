"""The hf source (capidsl/data/hf.py) on real, tiny `datasets` datasets written to tmp folders."""

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capidsl.data import hf
from capidsl.data.errors import DataError
from capidsl.data.hf import hf_row_ranges, hf_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def hf_cache(tmp_path_factory):
    """load_dataset's Arrow cache in tmp, never under ~ (hf.py reads the variable at each call)."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def datasets():
    import datasets  # a test extra: the suite fails, not skips, without it

    return datasets


def texts(n):
    return [f"document {i} " + "x" * (i % 7) for i in range(n)]


@pytest.fixture(scope="session")
def saved(datasets, tmp_path_factory):
    """A Dataset saved with save_to_disk, 2500 rows (over two of hf_rows' batches), a null in row 3."""
    path = tmp_path_factory.mktemp("saved") / "ds"
    text = texts(2500)
    text[3] = None
    datasets.Dataset.from_dict({"text": text, "n": list(range(2500)), "other": [0.5] * 2500}).save_to_disk(str(path))
    return str(path), text


@pytest.fixture(scope="session")
def saved_dict(datasets, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved_dict") / "dd"
    def make(n, tag):
        return datasets.Dataset.from_dict({"prompt": [f"{tag} q{i}" for i in range(n)],
                                           "completion": [f"{tag} a{i}" for i in range(n)]})

    datasets.DatasetDict({"train": make(30, "tr"), "validation": make(7, "va")}).save_to_disk(str(path))
    return str(path)


def test_ranges_cover_every_row_once_in_order(saved, monkeypatch):
    path, _ = saved
    (whole,) = hf_row_ranges(path, "train")  # a few KiB: one range
    assert whole[:2] == (0, 2500) and whole[2] > 0
    monkeypatch.setattr(hf, "RANGE_BYTES", 4096)
    ranges = hf_row_ranges(path, "train")
    assert len(ranges) > 3
    assert ranges[0][0] == 0 and ranges[-1][1] == 2500
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(end > start and size > 0 for start, end, size in ranges)
    assert max(size for _, _, size in ranges) <= 4096 and sum(size for _, _, size in ranges) == pytest.approx(
        whole[2], abs=len(ranges))


def test_rows_values_and_indices(saved, monkeypatch):
    path, text = saved
    monkeypatch.setattr(hf, "RANGE_BYTES", 4096)
    got = [row for start, end, _ in hf_row_ranges(path, "train") for row in hf_rows(path, "train", start, end, ("text",))]
    assert got == [(i, {"text": t}) for i, t in enumerate(text)]
    assert got[3] == (3, {"text": None})
    both = list(hf_rows(path, "train", 1020, 1030, ("n", "text")))  # across a batch boundary, two fields in order
    assert both == [(i, {"n": i, "text": text[i]}) for i in range(1020, 1030)]
    assert list(both[0][1]) == ["n", "text"]
    assert list(hf_rows(path, "train", 2498, 9999, ("n",))) == [(2498, {"n": 2498}), (2499, {"n": 2499})]


def test_dataset_dict_split_and_missing_split(saved_dict):
    assert hf_row_ranges(saved_dict, "validation")[0][:2] == (0, 7)
    rows = list(hf_rows(saved_dict, "validation", 0, 7, ("prompt", "completion")))
    assert rows[6] == (6, {"prompt": "va q6", "completion": "va a6"})
    assert list(hf_rows(saved_dict, "train", 29, 30, ("prompt",))) == [(29, {"prompt": "tr q29"})]
    with pytest.raises(DataError) as err:
        hf_row_ranges(saved_dict, "test")
    assert err.value.subject == "data.hf_split"
    assert str(err.value) == f"{saved_dict} has no split 'test'; its splits are ['train', 'validation']"


def test_missing_column_names_path_field_and_columns(saved):
    path, _ = saved
    with pytest.raises(DataError) as err:
        hf_rows(path, "train", 0, 10, ("text", "body"))
    assert err.value.subject == "data.field"
    assert str(err.value) == f"{path} has no column 'body'; its columns are ['text', 'n', 'other']"


def test_single_dataset_has_only_train(saved):
    with pytest.raises(DataError) as err:
        hf_row_ranges(saved[0], "validation")
    assert err.value.subject == "data.hf_split" and "not a DatasetDict" in str(err.value)


def test_saved_format_is_ignored(datasets, tmp_path):
    """save_to_disk keeps set_format("numpy") and load_from_disk restores it; rows must stay Python values."""
    ds = datasets.Dataset.from_dict({"text": ["a", "bb"], "n": [1, 2]})
    ds.set_format("numpy")
    ds.save_to_disk(str(tmp_path / "np"))
    assert datasets.load_from_disk(str(tmp_path / "np")).format["type"] == "numpy"
    rows = list(hf_rows(str(tmp_path / "np"), "train", 0, 2, ("text", "n")))
    assert rows == [(0, {"text": "a", "n": 1}), (1, {"text": "bb", "n": 2})]
    assert type(rows[0][1]["text"]) is str and type(rows[0][1]["n"]) is int


def test_empty_datasets_have_no_ranges(datasets, tmp_path):
    """datasets 5.2 saves 0 rows without an Arrow shard and its own load_from_disk then fails."""
    empty = datasets.Dataset.from_dict({"text": []})
    empty.save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(IndexError):
        datasets.load_from_disk(str(tmp_path / "empty"))
    assert hf_row_ranges(str(tmp_path / "empty"), "train") == []
    assert list(hf_rows(str(tmp_path / "empty"), "train", 0, 0, ("text",))) == []
    datasets.DatasetDict({"train": empty, "validation": empty}).save_to_disk(str(tmp_path / "dict"))
    assert hf_row_ranges(str(tmp_path / "dict"), "validation") == []
    (tmp_path / "empty.jsonl").write_text("")
    assert hf_row_ranges(str(tmp_path / "empty.jsonl"), "train") == []


def test_jsonl_file_and_folder_through_load_dataset(datasets, tmp_path, hf_cache):
    one = tmp_path / "one.jsonl"
    one.write_text("".join(f'{{"text": "line {i}", "id": {i}}}\n' for i in range(5)))
    assert hf_row_ranges(str(one), "train")[0][:2] == (0, 5)
    assert list(hf_rows(str(one), "train", 1, 3, ("text",))) == [(1, {"text": "line 1"}), (2, {"text": "line 2"})]
    cached = hf._dataset(str(one), "train").cache_files[0]["filename"]
    assert Path(cached).is_relative_to(hf_cache)  # load_dataset wrote its Arrow copy in the tmp cache, not ~
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.jsonl").write_text('{"text": "b0"}\n{"text": "b1"}\n')
    (folder / "a.jsonl").write_text('{"text": "a0"}\n')
    (folder / "sub" / "c.jsonl").write_text('{"text": "c0"}\n')
    (folder / ".hidden.jsonl").write_text('{"text": "hidden"}\n')
    rows = list(hf_rows(str(folder), "train", 0, 10, ("text",)))
    assert [r["text"] for _, r in rows] == ["a0", "b0", "b1", "c0"]  # sorted paths, as the store's identity lists them
    mixed = tmp_path / "mixed"  # a new path: the opened folder above stays cached for this process
    mixed.mkdir()
    (mixed / "a.jsonl").write_text('{"text": "a0"}\n')
    (mixed / "d.csv").write_text("text\nd0\n")
    with pytest.raises(DataError, match=r"files of kinds \['csv', 'json'\]"):
        hf_row_ranges(str(mixed), "train")


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as err:
        hf_row_ranges(str(tmp_path / "nope"), "train")
    assert err.value.subject == "data.path" and str(err.value) == f"{tmp_path / 'nope'} does not exist"


def test_without_datasets_installed(tmp_path):
    """A process where `import datasets` fails: importing hf.py works, using it names the extra."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["datasets"] = None  # import datasets -> ImportError
        import capidsl.data.hf as hf
        from capidsl.data.errors import DataError
        try:
            hf.hf_row_ranges({str(tmp_path)!r}, "train")
        except DataError as err:
            print(err.render())
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("data.source: the hf source needs the `datasets` library, which is not installed\n"
                                  "  hint: pip install 'capidsl[hf]'")


def test_import_does_not_import_datasets():
    code = "import sys, capidsl.data.hf; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_csv_and_text_files(datasets, tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nfirst,1\n\"with, comma\",2\n")
    assert list(hf_rows(str(tmp_path / "t.csv"), "train", 0, 2, ("text",))) == [
        (0, {"text": "first"}), (1, {"text": "with, comma"})]
    (tmp_path / "lines.txt").write_text("one\ntwo\n")  # the text builder: a row per line, column "text"
    assert list(hf_rows(str(tmp_path / "lines.txt"), "train", 0, 2, ("text",))) == [(0, {"text": "one"}),
                                                                                  (1, {"text": "two"})]


def test_malformed_file_names_path_and_parser_error(datasets, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="JSON parse error") as err:
        hf_row_ranges(str(bad), "train")
    assert err.value.subject == "data.path" and str(err.value).startswith(f"{bad} cannot be read")
