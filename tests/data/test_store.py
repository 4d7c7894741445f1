"""The token store: reused when its inputs are the same, never when they change; prepared in parallel
units that give the same bytes as one; atomic under interruption; bad input is a located error."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from capidsl.data.errors import DataError
from capidsl.data.store import StoreSpec, ensure_store, locate, plan_stores
from capidsl.data.store import prepare as prepare_mod
from capidsl.data.store import shard as shard_mod
from capidsl.data.store import units as units_mod
from capidsl.data.tokenize import SEPARATOR

WORDS = "the of and to in is for that with as on was by it this are be from at or an which".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A JSONL corpus of 3,000 documents (~300 KB) and a 512-token BPE tokenizer trained on it."""
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, rng.integers(3, 40)))}) for _ in range(3000)]
    (root / "c.jsonl").write_text("\n".join(lines) + "\n")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([str(root / "c.jsonl")], trainers.BpeTrainer(vocab_size=512, special_tokens=["<sep>", "<unk>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(root / "bpe.json"))
    return root


def _spec(root, **kw):
    return StoreSpec(**{"source": "jsonl", "path": str(root / "c.jsonl"), "field": "text", "tokenizer": "byte",
                        "validation_fraction": 0.1, **kw})


def test_a_store_is_reused_and_its_id_follows_its_inputs(corpus, tmp_path):
    cache = str(tmp_path / "cache")
    first = ensure_store(_spec(corpus), cache)
    created = (first.root / "manifest.json").stat().st_mtime_ns
    again = ensure_store(_spec(corpus), cache)
    assert again.id == first.id and (again.root / "manifest.json").stat().st_mtime_ns == created
    assert locate(_spec(corpus), str(tmp_path / "elsewhere"))[1] == first.id  # the cache is not an input
    ids = {first.id, locate(_spec(corpus, validation_fraction=0.2), cache)[1],
           locate(_spec(corpus, tokenizer=str(corpus / "bpe.json")), cache)[1],
           locate(_spec(corpus, bad_documents="skip"), cache)[1]}
    assert len(ids) == 4
    (tmp_path / "moved").mkdir()
    copy = tmp_path / "moved" / "c.jsonl"  # the same file elsewhere (its name is its documents' key): the same store
    copy.write_bytes((corpus / "c.jsonl").read_bytes())
    assert locate(_spec(corpus, path=str(copy)), cache)[1] == first.id
    with copy.open("a") as fh:
        fh.write('{"text": "one more"}\n')
    assert locate(_spec(corpus, path=str(copy)), cache)[1] != first.id


def test_documents_and_split_are_kept(corpus, tmp_path):
    store = ensure_store(_spec(corpus), str(tmp_path))
    from capidsl.data.corpus import in_validation

    expect = ([], [])
    for n, line in enumerate((corpus / "c.jsonl").read_text().splitlines(), 1):
        text = json.loads(line)["text"].encode()
        expect[in_validation(f"c.jsonl:{n}", 0.1)].append(np.append(np.frombuffer(text, np.uint8), SEPARATOR))
    for i, name in enumerate(("train", "val")):
        assert np.array_equal(store.split(name)[:], np.concatenate(expect[i]))
        assert store.counts(name)["documents"] == len(expect[i])
    assert store.manifest["dtype"] == "uint8"


def test_parallel_units_give_the_bytes_of_one(corpus, tmp_path, monkeypatch):
    spec = _spec(corpus, tokenizer=str(corpus / "bpe.json"))
    one = ensure_store(spec, str(tmp_path / "one"))
    monkeypatch.setattr(units_mod, "UNIT_BYTES", 20_000)
    monkeypatch.setattr(prepare_mod, "UNIT_BYTES", 1)  # spawn worker processes whatever the size
    many = ensure_store(spec, str(tmp_path / "many"), workers=2)
    assert many.id == one.id and len(many.manifest["splits"]["train"]["shards"]) > 10
    assert many.manifest["dtype"] == "uint16" and 256 < many.vocab_size <= 512
    for name in ("train", "val"):
        assert np.array_equal(many.split(name)[:], one.split(name)[:])
        assert many.document_spans(name) == one.document_spans(name)
    rows = np.array([[5, 6, 7], [19_990, 20_010, 45_000]])  # gathers across shard borders
    assert np.array_equal(many.split("train")[rows], one.split("train")[:][rows])
    assert len(pickle.dumps(many.split("train"))) < 10_000  # pickles as file names, not tokens


def test_an_interrupted_preparation_continues_and_is_never_mistaken_for_complete(corpus, tmp_path, monkeypatch):
    spec, cache = _spec(corpus), str(tmp_path)
    monkeypatch.setattr(units_mod, "UNIT_BYTES", 50_000)
    real, calls = shard_mod.tokenise_unit, []

    def interrupted(unit, *args):
        calls.append(unit.index)
        if unit.index == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle
        return real(unit, *args)

    monkeypatch.setattr(prepare_mod, "tokenise_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_store(spec, cache)
    _root, sid, _files, _ = locate(spec, cache)
    assert not (tmp_path / sid).exists() and (tmp_path / f"{sid}.partial").is_dir()
    calls.clear()
    monkeypatch.setattr(prepare_mod, "tokenise_unit", lambda unit, *a: calls.append(unit.index) or real(unit, *a))
    store = ensure_store(spec, cache)
    assert calls[0] == 3  # units 0-2 were kept
    clean = ensure_store(spec, str(tmp_path / "clean"))
    assert np.array_equal(store.split("train")[:], clean.split("train")[:])
    assert not (tmp_path / f"{sid}.partial").exists()


def _write(path, text: bytes):
    path.write_bytes(text)
    return path


def test_bad_documents_are_located_errors_or_skipped_by_policy(corpus, tmp_path):
    bpe = str(corpus / "bpe.json")
    bad = _write(tmp_path / "bad.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8 \(byte offset 30 in the file\)") as err:
        ensure_store(_spec(corpus, path=str(bad), tokenizer=bpe), str(tmp_path / "c1"))
    assert "bad_documents: skip" in err.value.render()
    assert not any(p.name.endswith(("manifest.json",)) for p in (tmp_path / "c1").rglob("*"))
    empty = _write(tmp_path / "empty.jsonl", b'{"text": "fine"}\n\n{"text": ""}\n')
    with pytest.raises(DataError, match="empty.jsonl:3: empty document"):
        ensure_store(_spec(corpus, path=str(empty)), str(tmp_path / "c2"))
    store = ensure_store(_spec(corpus, path=str(empty), bad_documents="skip", validation_fraction=0.0),
                         str(tmp_path / "c2"))
    assert store.manifest["skipped"]["documents"] == 1 and store.manifest["skipped"]["first"].endswith("empty.jsonl:3")
    assert bytes(store.split("train")[:]) == b"fine\x00"
    nofield = _write(tmp_path / "nofield.jsonl", b'{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"nofield.jsonl:2: no field 'text'; the record has \['body'\]"):
        ensure_store(_spec(corpus, path=str(nofield), bad_documents="skip"), str(tmp_path / "c3"))


def test_a_plan_whose_files_changed_is_refused_naming_them(corpus, tmp_path):
    from types import SimpleNamespace

    src = tmp_path / "data"
    src.mkdir()
    (src / "a.txt").write_text("alpha " * 50)
    (src / "b.txt").write_text("beta " * 50)
    spec = StoreSpec("text", str(src), "text", "byte", 0.0)
    old = ensure_store(spec, str(tmp_path / "cache"))
    (src / "b.txt").write_text("changed " * 50)
    data = SimpleNamespace(kind="lm", mixture=(), source="text", path=str(src), field="text", tokenizer="byte",
                           validation_fraction=0.0, cache=str(tmp_path / "cache"), store=old.id)
    with pytest.raises(DataError, match="the data changed since the plan was compiled .*changed: b.txt"):
        plan_stores(data)


def test_a_full_disk_is_an_error_that_leaves_no_store(corpus, tmp_path):
    """A real write limit (RLIMIT_FSIZE) in a child process: the write fails with EFBIG as a full disk would."""
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from capidsl.data.errors import DataError
from capidsl.data.store import StoreSpec, ensure_store
try:
    ensure_store(StoreSpec("jsonl", {str(corpus / 'c.jsonl')!r}, "text", "byte", 0.1), {str(tmp_path)!r})
except DataError as err:
    print(err.render())
    sys.exit(3)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CAPIDSL_CACHE": str(tmp_path)})
    assert out.returncode == 3, out.stderr[-2000:]
    assert "no space left" in out.stdout and "continues from it" in out.stdout
    assert not any((p / "manifest.json").exists() for p in tmp_path.iterdir() if p.is_dir())


def test_an_hf_dataset_on_disk_is_a_store_like_its_jsonl(corpus, tmp_path, monkeypatch):
    import datasets  # a test extra (capidsl[hf]): the suite fails, not skips, without it

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    texts = [json.loads(line)["text"] for line in (corpus / "c.jsonl").read_text().splitlines()[:500]]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    store = ensure_store(StoreSpec("hf", str(tmp_path / "ds"), "text", "byte", 0.0), str(tmp_path / "cache"))
    expect = b"".join(t.encode() + b"\x00" for t in texts)
    assert bytes(store.split("train")[:]) == expect and store.counts("train")["documents"] == 500


def test_a_tokenizer_larger_than_the_model_is_refused_at_model_vocab_size(corpus, tmp_path):
    from capidsl.plan.compile import compile_plan
    from capidsl.plan.errors import PlanError
    from capidsl.plan.topology import simulated
    from capidsl.recipe import Recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: small
model: {{family: gpt, vocab_size: 256, seq_len: 16, d_model: 16, n_layers: 1, n_heads: 2}}
data: {{source: jsonl, path: {corpus / 'c.jsonl'}, tokenizer: {corpus / 'bpe.json'}}}
training: {{batch_size: 4, duration: "2 steps"}}
""")
    with pytest.raises(PlanError) as err:
        compile_plan(Recipe.from_yaml(str(recipe)), simulated("cpu", 1))
    text = err.value.render()
    assert "r.yaml:2:" in text and "model.vocab_size" in text and "the tokenizer has" in text
