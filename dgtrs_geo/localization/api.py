"""One-call entry points, :func:`build_index` and :func:`localize`, each over a :class:`Localizer`.

Both take their options as :class:`LocalizationOptions` (``options=``) and/or as keywords named
like its fields. A program that runs many queries keeps one :class:`Localizer` instead, so loaded
indexes stay in memory between calls.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .index import EmbeddingIndex
from .options import LocalizationOptions
from .session import LocalizationResult, Localizer, ProgressFn, plan_meta, resolve_model

__all__ = ["DEPRECATED_KEYWORDS", "LocalizationResult", "build_index", "localize", "resolve_model"]

#: Keyword spellings of version 0.1, accepted until 0.3 with a DeprecationWarning: old -> new.
DEPRECATED_KEYWORDS = {
    "normalise_mode": "normalise",
    "smooth_sigma": "smooth",
    "reference_mode": "reference",
    "rebuild_index": "rebuild",
}

# benchmarks/localize.py of 0.1 imports the plan record under its old private name.
_plan_meta = plan_meta


def renamed_options(
    caller: str, keywords: Mapping[str, Any], old: Mapping[str, str] = DEPRECATED_KEYWORDS
) -> dict[str, Any]:
    """Return ``keywords`` with deprecated names replaced by the field names, warning for each.

    Raises:
        TypeError: if an option is given under both its old and its new name.

    """
    renamed: dict[str, Any] = {}
    for key, value in keywords.items():
        if key in old:
            warnings.warn(
                f"{caller}({key}=...) is deprecated and will be removed in 0.3: use {old[key]}=...",
                DeprecationWarning,
                stacklevel=4,  # the caller of localize() or build_index()
            )
            if old[key] in keywords:
                raise TypeError(f"{caller}() got {old[key]!r} and its old name {key!r}: give one")
            key = old[key]
        renamed[key] = value
    return renamed


def _options(
    caller: str, options: LocalizationOptions | None, keywords: Mapping[str, Any]
) -> LocalizationOptions:
    changes = renamed_options(caller, keywords)
    try:
        return (options or LocalizationOptions()).replace(**changes)
    except TypeError as error:
        raise TypeError(f"{caller}(): {error} (see LocalizationOptions for the options)") from None


def build_index(
    raster: str | Path,
    model: Any,
    options: LocalizationOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **option_keywords: Any,
) -> EmbeddingIndex:
    """Embed every window of a raster once, or load the index a previous run saved.

    Args:
        raster: any raster GDAL reads.
        model: a loaded model, a registry name or a checkpoint path.
        options: run options; ``option_keywords`` change some of them.
        progress: called with ``(fraction, message)`` (or a third argument, the stage).
        cancel: checked between batches; when set, :class:`~dgtrs_geo.errors.Cancelled` is
            raised and no index is written.
        **option_keywords: :class:`LocalizationOptions` fields (``scales``, ``scale_unit``,
            ``bands``, ``stretch``, ``aoi``, ``reference``, ``min_valid``, ``index_dir``,
            ``rebuild``, ``batch_size``, ``num_workers``, ``device``, ``force``).

    Returns:
        The index (saved under ``index_dir``, or a subset of the whole raster's index for an
        AOI inside a raster already indexed).

    """
    options = _options("build_index", options, option_keywords)
    return Localizer(model, options).index(raster, progress=progress, cancel=cancel)


def localize(
    raster: str | Path,
    queries: str | Sequence[str],
    model: Any,
    options: LocalizationOptions | None = None,
    *,
    index: EmbeddingIndex | str | Path | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **option_keywords: Any,
) -> list[LocalizationResult]:
    """Find where each query is on a raster: georeferenced heatmaps and polygons.

    The raster's windows are embedded once and kept in an embedding index; every later call with
    the same raster, model and plan reads the index and costs one text forward and one matrix
    product per call.

    Args:
        raster: any raster GDAL reads (GeoTIFF, COG, VRT, JPEG/PNG with or without world file).
        queries: one text or several (they share the index and the text forward).
        model: a loaded model (:func:`dgtrs_geo.load_model`), a registry name or a checkpoint path.
        options: run options; ``option_keywords`` change some of them.
        index: a built index (object or directory) to use; it must fit the raster, model and
            plan, else :class:`~dgtrs_geo.errors.IndexMismatchError`.
        progress: called with ``(fraction in [0, 1], message)`` (or a third argument, the stage).
        cancel: a ``threading.Event`` checked between batches and before writing; when set,
            :class:`~dgtrs_geo.errors.Cancelled` is raised and no file is left behind.
        **option_keywords: :class:`LocalizationOptions` fields: ``out_dir``, ``outputs``,
            ``scales``, ``scale_unit``, ``bands``, ``stretch``, ``aoi``, ``threshold``,
            ``normalise``, ``smooth``, ``cell``, ``reference``, ``jpeg_roundtrip``,
            ``min_valid``, ``index_dir``, ``rebuild``, ``batch_size``, ``num_workers``,
            ``device``, ``force``. The 0.1 names ``normalise_mode``, ``smooth_sigma``,
            ``reference_mode`` and ``rebuild_index`` still work, with a DeprecationWarning.

    Returns:
        One :class:`LocalizationResult` per query, in order.

    Raises:
        InputError: on an empty query, an unreadable raster, bad bands, an all-nodata raster or
            an option out of range.
        OutputError: on an output or index folder that cannot be written, or a full disk.
        IndexMismatchError: if ``index`` does not fit.
        Cancelled: if ``cancel`` was set.

    """
    options = _options("localize", options, option_keywords)
    return Localizer(model, options).query(raster, queries, index, progress=progress, cancel=cancel)
