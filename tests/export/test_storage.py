"""gs:// run directories end to end: `capidsl` subprocesses against a real emulator.

- A recipe read from gs:// (with its extends), trained in two pieces on two "machines" (two
  fresh working-copy caches): the second resumes from what the first left in the bucket, and the
  bucket then holds every committed checkpoint and the export, byte-identical to the local files.
  `capidsl export gs://... --step N --out gs://...` from a third, empty cache.
- The emulator stopped in the middle of a run and started again: the run finishes (exit 0),
  reports the failed uploads, and after `capidsl sync` nothing is missing. The emulator keeps its
  objects on disk here: a restarted in-memory emulator would be an empty server, which is a bucket
  that lost its data (the sync would then fail: the bucket no longer exists), not a network outage.
  On disk, the objects uploaded before the outage survive it; the test checks that the sync does
  not upload them again (same generation) and uploads everything else.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from gcs_emulator import crc32c_md5, local_files, remote_objects
from storage_runs import BUCKET, RECIPE, capidsl, runs, start_capidsl, subprocess_env, summary

from capidsl.rundir import MANIFEST


def assert_mirrored(client, prefix: str, local: Path) -> dict:
    """Every local file is in gs://BUCKET/prefix with the same size, CRC32C and MD5; no temporary object is."""
    remote = remote_objects(client, BUCKET, prefix)
    files = local_files(local)
    missing = sorted(set(files) - set(remote))
    assert not missing, f"not uploaded: {missing}"
    for rel, path in files.items():
        blob = remote[rel]
        assert blob.size == path.stat().st_size and (blob.crc32c, blob.md5_hash) == crc32c_md5(path), rel
    assert not [r for r in remote if r.endswith(".tmp") or "orbax-checkpoint-tmp" in r or ".capidsl-" in r]
    return remote


def committed_steps(local: Path) -> list[int]:
    return sorted(int(p.name) for p in (local / "checkpoints").iterdir() if p.name.isdigit())


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_gs_run_resumes_elsewhere_and_mirrors_every_checkpoint_and_the_export(emulator, tmp_path, xla_cache):
    client = emulator.client()
    bucket = client.bucket(BUCKET)
    base, _, _ = RECIPE.partition("export:")
    bucket.blob("recipes/base/tiny.yaml").upload_from_string(base)
    bucket.blob("recipes/child.yaml").upload_from_string("extends: base/tiny.yaml\nexport: {format: onnx}\n")
    url = f"gs://{BUCKET}/runs/r"

    first = capidsl("run", f"gs://{BUCKET}/recipes/child.yaml", "--run-dir", url, "--steps", "20",
                    environ=subprocess_env(emulator, tmp_path / "machine-a", xla_cache))
    assert first.returncode == 0, first.stderr
    assert "resumable" in first.stdout
    a = tmp_path / "machine-a" / "gs" / BUCKET / "runs" / "r"
    sa = summary(a)
    assert sa["steps"] == 20 and sa["storage"]["complete"] and sa["export"] == {}  # a paused run does not export
    assert committed_steps(a) == [10, 20]
    assert_mirrored(client, "runs/r", a)

    second = capidsl("run", f"gs://{BUCKET}/recipes/child.yaml", "--run-dir", url,
                     environ=subprocess_env(emulator, tmp_path / "machine-b", xla_cache))
    assert second.returncode == 0, second.stderr
    b = tmp_path / "machine-b" / "gs" / BUCKET / "runs" / "r"
    assert f"downloaded checkpoints 10, 20 from {url}" in second.stdout
    assert "from step 20" in second.stdout and "completed" in second.stdout
    sb = summary(b)
    assert sb["resumed_from"] == 20 and sb["steps"] == 40
    assert sb["storage"]["complete"] and sb["storage"]["upload_failures"] == 0 and sb["storage"]["pending"] == []
    assert sb["export"]["max_abs_diff"] <= 1e-4 and sb["export"]["step"] == sb["params_step"]
    assert "onnxruntime matches JAX to" in second.stdout

    remote = assert_mirrored(client, "runs/r", b)  # checkpoints 10-40, the export, metrics, TensorBoard, summary
    assert committed_steps(b) == [10, 20, 30, 40]
    for step in committed_steps(b):
        listed = json.loads((b / "checkpoints" / str(step) / MANIFEST).read_text())["files"]
        assert all(f"checkpoints/{step}/{f}" in remote for f in listed)
    assert "export/model.onnx" in remote and list(b.glob("tensorboard/*"))
    train = [x for x in lines(b) if "loss" in x]
    assert [x["step"] for x in train] == list(range(5, 41, 5))  # the first piece's lines came down with it
    assert all("upload_failures" in x for x in train if x["step"] > 20)

    # A third machine exports an older checkpoint straight into the bucket.
    out = f"gs://{BUCKET}/models/step10.onnx"
    exported = capidsl("export", url, "--step", "10", "--out", out,
                       environ=subprocess_env(emulator, tmp_path / "machine-c", xla_cache))
    assert exported.returncode == 0, exported.stderr
    assert f"uploaded to {out}" in exported.stdout and "max abs diff" in exported.stdout
    c = tmp_path / "machine-c" / "gs" / BUCKET / "runs" / "r"
    blob = client.bucket(BUCKET).get_blob("models/step10.onnx")
    assert (blob.crc32c, blob.md5_hash) == crc32c_md5(c / "export" / "step10.onnx")


@pytest.mark.slow
def test_an_outage_mid_run_loses_nothing_once_sync_runs(disk_emulator, tmp_path, xla_cache):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    url = f"gs://{BUCKET}/runs/o"
    environ = subprocess_env(disk_emulator, tmp_path / "cache", xla_cache,
                             CAPIDSL_GCS_RETRY_S="1", CAPIDSL_GCS_DRAIN_S="2")
    local = tmp_path / "cache" / "gs" / BUCKET / "runs" / "o"
    proc = start_capidsl("run", str(recipe), "--run-dir", url, environ=environ)
    try:
        runs.wait_for_checkpoint(local, proc, min_step=20)
        # listed while the run still runs: the emulator serves one connection at a time (http.server's
        # HTTPServer), so a run stopped in the middle of a request would keep this listing out for good
        before = {k: v.generation for k, v in remote_objects(disk_emulator.client(), BUCKET, "runs/o").items()}
        os.kill(proc.pid, signal.SIGSTOP)  # hold the run still while the storage goes away
        disk_emulator.stop()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err  # training never waits for, or dies of, the storage
    s = summary(local)
    assert s["steps"] == 40 and s["export"]["max_abs_diff"] <= 1e-4
    st = s["storage"]
    assert not st["complete"] and st["upload_failures"] >= 1 and st["pending"]
    assert st["sync_command"] == f"capidsl sync {local} {url}"
    assert st["sync_command"] in err and "nothing is lost locally" in err
    assert all("upload_failures" in x for x in lines(local) if "loss" in x)

    disk_emulator.start()  # the same port and the same objects: the outage is over
    synced = capidsl(*st["sync_command"].split()[1:], environ=environ)
    assert synced.returncode == 0, synced.stderr
    assert "every mirrored file matches its local copy" in synced.stdout
    remote = assert_mirrored(disk_emulator.client(), "runs/o", local)
    assert committed_steps(local) == [10, 20, 30, 40] and "export/model.onnx" in remote
    kept = {k: g for k, g in before.items() if k.startswith("checkpoints/")}
    assert kept and all(remote[k].generation == g for k, g in kept.items())  # not uploaded twice
