"""Exceptions of the localization engine (defined in :mod:`dgtrs_geo.errors`)."""

from __future__ import annotations

from ..errors import Cancelled, IndexMismatchError

__all__ = ["Cancelled", "IndexMismatchError"]
