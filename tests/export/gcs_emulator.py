"""A real gcp-storage-emulator in a subprocess on 127.0.0.1, for the storage tests (CI starts nothing else).

In memory by default; with `data_dir` it keeps its objects on disk, so that stopping and
starting it again models a network outage of a real bucket (its objects survive) rather than a
bucket that loses everything.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, log: Path, data_dir: Path | None = None, port: int | None = None):
        self.log, self.data_dir = log, data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Emulator":
        store = ["-d", str(self.data_dir)] if self.data_dir else []
        where = [] if self.data_dir else ["--in-memory"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gcp_storage_emulator", *store, "start", "--host", "127.0.0.1",
                 "--port", str(self.port), *where], stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the storage emulator did not start:\n{self.log.read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.host})

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.host}


def remote_objects(client, bucket: str, prefix: str) -> dict:
    """relative name -> blob, for every object under gs://bucket/prefix/."""
    return {b.name[len(prefix) + 1:]: b for b in client.list_blobs(bucket, prefix=prefix + "/")}


def local_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def crc32c_md5(path: Path) -> tuple[str, str]:
    """The two checksums GCS reports for an object (base64), computed here independently of capidsl."""
    import base64
    import hashlib

    import google_crc32c

    data = path.read_bytes()
    return (base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
            base64.b64encode(hashlib.md5(data).digest()).decode())


