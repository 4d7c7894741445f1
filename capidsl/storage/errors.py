"""StorageError: the storage stage's one error type (gs:// run directories, recipes and exports)."""

from __future__ import annotations

from capidsl.errors import SubjectError


class StorageError(SubjectError):
    """Google Cloud Storage refused or could not be reached (after the client's own retries).

    `subject` names the gs:// URL. `transient` is true when it could not be reached at all
    (network, outage): worth retrying later, unlike a missing bucket or a permission refused.
    """

    def __init__(self, message: str, *, subject: str | None = None, hint: str | None = None, transient: bool = False):
        super().__init__(message, subject=subject, hint=hint)
        self.transient = transient
