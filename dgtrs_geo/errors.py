"""What a user can fix: one base class, one family per kind of mistake.

The ``dgtrs-geo`` command turns a :class:`DgtrsGeoError` (and only that) into one line on stderr
and exit code 2; the worker sends the class name to the QGIS plugin. Any other exception is a bug
and keeps its traceback. Each family also derives from the built-in exception callers caught
before it existed (``ValueError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "DgtrsGeoError",
    "EmbeddingIndexError",
    "IndexMismatchError",
    "InputError",
    "ModelError",
    "OutputError",
]


class DgtrsGeoError(Exception):
    """Base of every failure the user can fix; its message names the file and the fix."""


class InputError(DgtrsGeoError, ValueError):
    """A raster, vector, query, option value or data set that cannot be used as given."""


class ModelError(DgtrsGeoError, ValueError):
    """A checkpoint or model name that cannot be loaded, or weights that are unusable."""


class EmbeddingIndexError(DgtrsGeoError, ValueError):
    """An embedding index (or catalog part) that is corrupt, foreign or cannot be built here."""


class IndexMismatchError(EmbeddingIndexError):
    """An embedding index built for another raster, model or window plan."""


class OutputError(DgtrsGeoError, OSError):
    """An output or cache location that cannot be written (exists, read-only, disk full)."""


class Cancelled(DgtrsGeoError):
    """The caller cancelled (cancel event, SIGINT or SIGTERM); no partial output is left."""
