"""gs://bucket/prefix locations, and the few Google Cloud Storage calls capidsl makes, as glue over the client.

The google-cloud-storage client owns the protocol; this module only decides how it is called:
- **Credentials**: Google application-default credentials; with `STORAGE_EMULATOR_HOST` set (a
  local emulator) the client is anonymous, as emulators expect.
- **Retries**: every request uses the client's `DEFAULT_RETRY` (exponential back-off on 429, 5xx
  and connection errors) with its deadline from `CAPIDSL_GCS_RETRY_S` (default 120 s, the
  client's own). Uploads are retried unconditionally: each object is written whole with the
  same bytes, so a repeated upload cannot duplicate or corrupt anything.
- **Checksums**: uploads and downloads pass `checksum="crc32c"` (the client checks the bytes it
  sent or received against the server's CRC32C), and after an upload the object's CRC32C is
  compared with the local file's once more before the upload counts as done.
- **Large files** go up as resumable uploads in `CHUNK_BYTES` chunks (the client switches from
  one-shot multipart to resumable above 8 MiB); a failed chunk is retried, not the whole file.
Every failure leaves here as a `StorageError` naming the object and what to do.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capidsl.storage.errors import StorageError

SCHEME = "gs://"
CHUNK_BYTES = 32 * 2**20  # a multiple of 256 KiB, as resumable uploads require
RETRY_ENV = "CAPIDSL_GCS_RETRY_S"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def is_gs_url(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and os.fspath(value).startswith(SCHEME)


@dataclass(frozen=True)
class GsUrl:
    """A bucket and an object-name prefix ("" or "a/b", without leading or trailing slashes)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str | os.PathLike) -> "GsUrl":
        text = os.fspath(text)
        if not text.startswith(SCHEME):
            raise StorageError("not a gs:// URL", subject=text, hint="write gs://BUCKET/PREFIX")
        bucket, _, prefix = text[len(SCHEME):].partition("/")
        if not _BUCKET.match(bucket):
            raise StorageError(f"{bucket!r} is not a bucket name", subject=text,
                               hint="bucket names are 3-222 lower-case letters, digits, '-', '_' and '.'")
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise StorageError("'.' and '..' have no meaning in object names", subject=text)
        return cls(bucket, "/".join(parts))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def name(self, rel: str = "") -> str:
        """The object name of `rel` (a '/'-separated path) under this prefix."""
        rel = rel.strip("/")
        return "/".join(p for p in (self.prefix, rel) if p)

    def child(self, rel: str) -> "GsUrl":
        return GsUrl(self.bucket, self.name(rel))

    @property
    def parent(self) -> "GsUrl":
        return GsUrl(self.bucket, self.prefix.rpartition("/")[0])

    @property
    def basename(self) -> str:
        return self.prefix.rpartition("/")[2]


@dataclass(frozen=True)
class RemoteObject:
    """One stored object, by its path relative to the listed prefix."""

    rel: str
    size: int
    crc32c: str | None  # base64 of the big-endian CRC32C, as GCS reports it
    md5: str | None
    generation: int | None


def file_crc32c(path: str | os.PathLike) -> str:
    """CRC32C of a local file, base64 big-endian: the form GCS reports (`blob.crc32c`)."""
    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            c.update(chunk)
    return base64.b64encode(c.digest()).decode("ascii")


def bytes_crc32c(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable `name` (unset or empty: `default`)."""
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number of seconds", subject=name) from None


def retry_deadline_s() -> float:
    return env_seconds(RETRY_ENV, 120.0)


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(retry_deadline_s())


def make_client():
    """A storage client: anonymous against `STORAGE_EMULATOR_HOST`, application-default credentials otherwise."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "capidsl-emulator",
                              credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as err:  # noqa: BLE001 - google.auth raises several types; all mean "no credentials"
        raise StorageError(f"no Google Cloud credentials ({type(err).__name__}: {err})", subject="gs://",
                           hint="run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS; "
                           "for a local emulator set STORAGE_EMULATOR_HOST") from err


def storage_error(err: BaseException, what: str, url: GsUrl | str) -> StorageError:
    """A client exception as a StorageError that says what was being done to which object."""
    from google.api_core import exceptions as gexc

    if isinstance(err, StorageError):
        return err
    subject = str(url)
    if isinstance(err, gexc.NotFound) and "/o/" not in str(err):
        bucket = url.bucket if isinstance(url, GsUrl) else subject
        return StorageError(f"{what}: the bucket {bucket!r} does not exist", subject=subject,
                            hint=f"create it (gcloud storage buckets create gs://{bucket}) or fix the URL")
    if isinstance(err, (gexc.Forbidden, gexc.Unauthorized)):
        return StorageError(f"{what}: permission denied ({err})", subject=subject,
                            hint="the credentials need storage.objects.create/get/list on the bucket")
    import requests

    if isinstance(err, (gexc.RetryError, ConnectionError, requests.ConnectionError, requests.Timeout)):
        return StorageError(f"{what}: cannot reach Google Cloud Storage after retrying for "
                            f"{retry_deadline_s():g} s ({type(err).__name__}: {str(err)[:200]})", subject=subject,
                            hint="check the network (or STORAGE_EMULATOR_HOST); nothing local is lost, "
                            "run `capidsl sync` when it is back", transient=True)
    return StorageError(f"{what}: {type(err).__name__}: {str(err)[:300]}", subject=subject)


def _client_errors() -> tuple[type[BaseException], ...]:
    """The exception types a storage call may raise for reasons outside our code."""
    import requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

    return (GoogleAPIError, GoogleAuthError, DataCorruption, InvalidResponse, requests.RequestException, OSError)


class Store:
    """Objects under one gs:// prefix, addressed by '/'-separated paths relative to it."""

    def __init__(self, url: GsUrl, client=None):
        self.url = url
        self.client = client if client is not None else make_client()
        self._bucket = self.client.bucket(url.bucket)
        self._errors = _client_errors()

    def check(self) -> None:
        """Raise StorageError unless the bucket exists and can be listed (one small request)."""
        try:
            next(iter(self.client.list_blobs(self.url.bucket, prefix=self.url.name() or None, max_results=1,
                                             retry=_retry())), None)
        except self._errors as err:
            raise storage_error(err, "listing", self.url) from err

    def list(self, rel_prefix: str = "", *, recursive: bool = True) -> dict[str, RemoteObject]:
        """Objects whose relative path starts with `rel_prefix` ('a/' for a folder), by relative path."""
        base = self.url.name()
        full = self.url.name(rel_prefix) + ("/" if rel_prefix.endswith("/") else "")
        if not rel_prefix:
            full = base + "/" if base else ""
        try:
            blobs = self.client.list_blobs(self.url.bucket, prefix=full or None,
                                           delimiter=None if recursive else "/", retry=_retry())
            out = {}
            for b in blobs:
                rel = b.name[len(base) + 1:] if base else b.name
                out[rel] = RemoteObject(rel, int(b.size or 0), b.crc32c, b.md5_hash, b.generation)
            return out
        except self._errors as err:
            raise storage_error(err, "listing", self.url.child(rel_prefix)) from err

    def upload(self, rel: str, path: Path, *, snapshot: bool = False) -> RemoteObject:
        """Upload a file (a file still being appended to is read once into memory: `snapshot`)
        and confirm the stored object's CRC32C equals the bytes sent."""
        blob = self._bucket.blob(self.url.name(rel), chunk_size=CHUNK_BYTES)
        try:
            if snapshot:
                data = path.read_bytes()
                expected = bytes_crc32c(data)
                blob.upload_from_string(data, content_type="application/octet-stream", checksum="crc32c",
                                        retry=_retry())
            else:
                expected = file_crc32c(path)
                blob.upload_from_filename(str(path), content_type="application/octet-stream", checksum="crc32c",
                                          retry=_retry())
        except FileNotFoundError:
            raise
        except self._errors as err:
            raise storage_error(err, f"uploading {path}", self.url.child(rel)) from err
        if blob.crc32c != expected:
            raise StorageError(f"the stored object's CRC32C {blob.crc32c} differs from the file's {expected}",
                               subject=str(self.url.child(rel)), hint="the upload is retried; run `capidsl sync` again")
        return RemoteObject(rel, int(blob.size or 0), blob.crc32c, blob.md5_hash, blob.generation)

    def download(self, rel: str, dest: Path) -> None:
        """Download to `dest` through a temporary file beside it (CRC32C-checked by the client)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".capidsl-download.{dest.name}")
        try:
            self._bucket.blob(self.url.name(rel)).download_to_filename(str(tmp), checksum="crc32c", retry=_retry())
            os.replace(tmp, dest)
        except self._errors as err:
            tmp.unlink(missing_ok=True)
            raise storage_error(err, f"downloading to {dest}", self.url.child(rel)) from err

    def read_bytes(self, rel: str) -> bytes | None:
        """An object's bytes, or None if it does not exist."""
        from google.api_core.exceptions import NotFound

        try:
            return self._bucket.blob(self.url.name(rel)).download_as_bytes(checksum="crc32c", retry=_retry())
        except NotFound:
            return None
        except self._errors as err:
            raise storage_error(err, "reading", self.url.child(rel)) from err

    def delete(self, rel: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._bucket.blob(self.url.name(rel)).delete(retry=_retry())
        except NotFound:
            pass
        except self._errors as err:
            raise storage_error(err, "deleting", self.url.child(rel)) from err
