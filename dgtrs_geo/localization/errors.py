"""Exceptions of the localization engine."""

from __future__ import annotations

__all__ = ["Cancelled", "IndexMismatchError"]


class Cancelled(Exception):
    """Raised when a caller's cancel event is set; the run leaves no partial output."""


class IndexMismatchError(ValueError):
    """Raised when an embedding index was built for another raster, model or window plan."""
