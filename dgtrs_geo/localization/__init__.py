"""Semantic localization on rasters: windows, embedding index, heatmaps, polygons, raster I/O.

The expensive step (embedding every window of a raster) is kept apart from the cheap one (scoring
a text query against those embeddings). A :class:`Localizer` session holds a model and
:class:`LocalizationOptions`; ``Localizer.index(raster)`` does the first step and keeps the
:class:`EmbeddingIndex` (on disk and in memory), ``Localizer.query(raster, texts)`` the second.
:func:`build_index` and :func:`localize` are one-call wrappers over a session.

Names are imported on first use, so the command line can read :class:`LocalizationOptions`
without loading torch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "REFERENCE_SCALES": "windows",
    "Cancelled": "errors",
    "EmbeddingIndex": "index",
    "IndexMismatchError": "errors",
    "LocalizationOptions": "options",
    "Localizer": "session",
    "LocalizationResult": "session",
    "RasterSource": "raster",
    "Stretch": "raster",
    "WindowPlan": "windows",
    "build_index": "api",
    "default_index_dir": "index",
    "fast_probability_map": "reference",
    "ground_sample_distance": "raster",
    "localize": "api",
    "plan_windows": "windows",
    "reference_probability_map": "reference",
    "resolve_model": "session",
    "scales_to_pixels": "windows",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
