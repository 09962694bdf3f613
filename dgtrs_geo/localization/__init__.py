"""Semantic localization on rasters: windows, embedding index, heatmaps, polygons, raster I/O.

The expensive step (embedding every window of a raster) is kept apart from the cheap one (scoring
a text query against those embeddings): :func:`build_index` does the first and stores an
:class:`EmbeddingIndex`; :func:`localize` reuses it for every query.
"""

from .api import LocalizationResult, build_index, localize, resolve_model
from .errors import Cancelled, IndexMismatchError
from .index import EmbeddingIndex, default_index_dir
from .raster import RasterSource, Stretch, ground_sample_distance
from .reference import fast_probability_map, reference_probability_map
from .windows import REFERENCE_SCALES, WindowPlan, plan_windows, scales_to_pixels

__all__ = [
    "REFERENCE_SCALES",
    "Cancelled",
    "EmbeddingIndex",
    "IndexMismatchError",
    "LocalizationResult",
    "RasterSource",
    "Stretch",
    "WindowPlan",
    "build_index",
    "default_index_dir",
    "fast_probability_map",
    "ground_sample_distance",
    "localize",
    "plan_windows",
    "reference_probability_map",
    "resolve_model",
    "scales_to_pixels",
]
