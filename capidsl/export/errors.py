"""ExportError: the export stage's one error type (ONNX export and gs:// storage), with a subject and a hint."""

from __future__ import annotations

from capidsl.errors import SubjectError


class ExportError(SubjectError):
    """An export or a transfer that cannot be done as asked; `subject` names the file, run or gs:// URL."""


class StorageError(ExportError):
    """Google Cloud Storage refused or could not be reached (after the client's own retries).

    `transient` is true when it could not be reached at all (network, outage): worth retrying
    later, unlike a missing bucket or a permission refused.
    """

    def __init__(self, message: str, *, subject: str | None = None, hint: str | None = None, transient: bool = False):
        super().__init__(message, subject=subject, hint=hint)
        self.transient = transient
