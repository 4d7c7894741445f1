"""gs:// glue against a real emulator, in process: URLs, chunked uploads, directory sync, clear refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gcs_emulator import crc32c_md5, free_port, remote_objects
from storage_runs import BUCKET

from capidsl.cli.main import main as cli
from capidsl.exec.checkpoint import MANIFEST, file_digests
from capidsl.storage.errors import StorageError
from capidsl.storage.gcs import CHUNK_BYTES, GsUrl, Store
from capidsl.storage.remote_run import StorageWarning, mirrored_run_dir
from capidsl.storage.sync import mismatches, sync_tree
from capidsl.storage.workdir import working_copy


@pytest.mark.parametrize("text, bucket, prefix", [
    ("gs://b-1/runs/a", "b-1", "runs/a"), ("gs://b.x/runs//a/", "b.x", "runs/a"), ("gs://bkt", "bkt", ""),
])
def test_urls(text, bucket, prefix):
    url = GsUrl.parse(text)
    assert (url.bucket, url.prefix) == (bucket, prefix)
    assert GsUrl.parse(str(url)) == url


@pytest.mark.parametrize("text, words", [
    ("s3://b/x", "not a gs:// URL"), ("gs://B/x", "is not a bucket name"), ("gs://bkt/a/../b", "'..'"),
])
def test_bad_urls_say_why(text, words):
    with pytest.raises(StorageError, match=words):
        GsUrl.parse(text)


def test_a_large_file_goes_up_in_resumable_chunks_with_its_crc32c(emulator, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(CHUNK_BYTES + 3 * 2**20))  # more than one chunk
    store = Store(GsUrl(BUCKET, "chunks"))
    obj = store.upload("big.bin", big)
    assert (obj.crc32c, obj.md5) == crc32c_md5(big) and obj.size == big.stat().st_size
    log = emulator.log.read_text()
    assert "uploadType=resumable" in log
    assert log.count('"PUT /upload/') >= 2  # one request per chunk
    back = tmp_path / "back.bin"
    store.download("big.bin", back)
    assert back.read_bytes() == big.read_bytes()


def _run_dir(root: Path) -> Path:
    """A run directory's shape: two committed steps (one without its manifest), orbax's unfinished one, temp files."""
    for step in (10, 20):
        d = root / "checkpoints" / str(step)
        (d / "state").mkdir(parents=True)
        (d / "state" / "arrays").write_bytes(os.urandom(5000))
        (d / "_CHECKPOINT_METADATA").write_text("{}")
    d10 = root / "checkpoints" / "10"
    (d10 / MANIFEST).write_text(json.dumps({"step": 10, "files": file_digests(d10)}))
    unfinished = root / "checkpoints" / "30.orbax-checkpoint-tmp-1234"
    unfinished.mkdir()
    (unfinished / "partial").write_bytes(b"half")
    (root / "metrics.jsonl").write_text('{"step": 5}\n')
    (root / "plan.json").write_text("{}")
    (root / "summary.json").write_text("{}")
    (root / "plan.json.tmp").write_text("being written")
    (root / "tensorboard").mkdir()
    (root / "tensorboard" / "events.out").write_bytes(b"tb")
    return root


def test_sync_uploads_what_differs_and_only_committed_steps(emulator, tmp_path):
    local = _run_dir(tmp_path / "run")
    store = Store(GsUrl(BUCKET, "sync/run"))
    first = sync_tree(store, local)
    remote = remote_objects(emulator.client(), BUCKET, "sync/run")
    assert sorted(remote) == sorted([
        "checkpoints/10/_CHECKPOINT_METADATA", "checkpoints/10/state/arrays", f"checkpoints/10/{MANIFEST}",
        "metrics.jsonl", "plan.json", "summary.json", "tensorboard/events.out"])
    assert first.unmirrored == ["checkpoints/20"] and first.uploaded_files == 7
    for rel, blob in remote.items():
        assert (blob.crc32c, blob.md5_hash) == crc32c_md5(local / rel), rel
    assert mismatches(store, local) == []

    again = sync_tree(store, local)
    assert again.uploaded_files == 0 and again.identical_files == 7
    (local / "metrics.jsonl").write_text('{"step": 5}\n{"step": 10}\n')
    d20 = local / "checkpoints" / "20"
    (d20 / MANIFEST).write_text(json.dumps({"step": 20, "files": file_digests(d20)}))
    third = sync_tree(store, local)
    assert third.uploaded_files == 4 and third.unmirrored == []  # metrics + step 20's three files
    assert mismatches(store, local) == []


def test_a_missing_bucket_is_one_clear_line(emulator, tmp_path, capsys):
    assert cli(["sync", str(_run_dir(tmp_path / "run")), "gs://no-such-bucket/run"]) == 1
    err = capsys.readouterr().err
    assert "gs://no-such-bucket/run: listing: the bucket 'no-such-bucket' does not exist" in err
    assert "gcloud storage buckets create" in err and "Traceback" not in err


def test_unreachable_storage_refuses_a_fresh_run_but_not_one_with_local_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("CAPIDSL_GCS_RETRY_S", "0.5")
    monkeypatch.setenv("CAPIDSL_GCS_DRAIN_S", "1")
    monkeypatch.setenv("CAPIDSL_CACHE_DIR", str(tmp_path / "cache"))
    url = f"gs://{BUCKET}/fresh"
    with pytest.raises(StorageError) as info:  # it cannot be told whether the remote run has checkpoints
        with mirrored_run_dir(url):
            pass
    assert info.value.transient and "whether it holds checkpoints" in info.value.render()

    local = working_copy(GsUrl(BUCKET, "fresh"))
    _run_dir(local)  # the working copy holds a committed checkpoint: training may go on from it
    with pytest.warns(StorageWarning) as caught:
        with mirrored_run_dir(url) as run:
            run.mirror.checkpoint_committed(10)
    messages = [str(w.message) for w in caught]
    assert any("training goes on from the working copy" in m for m in messages)
    assert any(f"capidsl sync {local} {url}" in m for m in messages)
    report = run.mirror.report()
    assert not report["complete"] and report["upload_failures"] >= 1 and "checkpoints/10" in report["pending"]
