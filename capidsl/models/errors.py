"""ModelError: a model family's one error type (an unknown family, options it cannot build)."""

from __future__ import annotations

from capidsl.errors import SubjectError


class ModelError(SubjectError):
    """A model name or option that cannot be honoured, with the subject it concerns and a hint."""
