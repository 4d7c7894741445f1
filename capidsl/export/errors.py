"""ExportError: the export stage's one error type, with a subject and a hint."""

from __future__ import annotations

from capidsl.errors import SubjectError


class ExportError(SubjectError):
    """An export that cannot be done as asked; `subject` names the file, run or target."""
