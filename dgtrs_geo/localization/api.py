"""The public entry points: :func:`build_index` (the expensive half) and :func:`localize`."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from .encode import encode_texts, encode_windows
from .errors import Cancelled, IndexMismatchError
from .heatmap import accumulate, auto_cell, grid_windows, normalise, smooth
from .index import EmbeddingIndex, default_index_dir, index_key
from .polygons import heatmap_polygons
from .raster import RasterSource, Stretch, ground_sample_distance
from .reference import reference_finish
from .windows import REFERENCE_SCALES, WindowPlan, plan_windows, scales_to_pixels

__all__ = ["LocalizationResult", "build_index", "localize", "resolve_model"]

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]

#: Smallest window, in pixels, that scales in metres may give (smaller ones carry no scene).
MIN_WINDOW_PX = 16

#: Default polygon thresholds per normalisation.
DEFAULT_THRESHOLDS = {"minmax": 0.5, "cosine": 0.25}

OUTPUTS = ("heatmap", "polygons", "geojson", "overlay")
_SUFFIXES = {"heatmap": ".tif", "polygons": ".gpkg", "geojson": ".geojson", "overlay": ".png"}


@dataclass
class LocalizationResult:
    """One query's answer on one raster.

    Attributes:
        query: the text.
        heatmap: float32 ``[rows, cols]`` scores (NaN: nodata or outside the AOI).
        transform: geotransform of the heatmap grid.
        crs: the raster's CRS (``None``: pixel coordinates).
        polygons: regions at or above ``threshold`` (columns query, score_max, score_mean, area).
        paths: written files by kind (``heatmap``, ``polygons``, ``geojson``, ``overlay``).
        best: ``(x, y)`` map coordinates of the heatmap's maximum.
        score_max: highest raw cosine similarity of a window to the query.
        model_id: the model that scored it.
        mode: ``"fast"`` or ``"reference"``.
        normalise: ``"minmax"`` or ``"cosine"``.
        threshold: the polygon threshold used.

    """

    query: str
    heatmap: np.ndarray
    transform: Affine
    crs: CRS | None
    polygons: gpd.GeoDataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    best: tuple[float, float] = (math.nan, math.nan)
    score_max: float = math.nan
    model_id: str = ""
    mode: str = "fast"
    normalise: str = "minmax"
    threshold: float = 0.5

    def summary(self) -> str:
        """One line: the query, the best location in map coordinates, scores and polygon count."""
        unit = "px" if self.crs is None else (self.crs.to_string() or "map units")
        return (
            f"{self.query!r}: best at x={self.best[0]:.6g}, y={self.best[1]:.6g} ({unit}), "
            f"max cosine {self.score_max:.4f}, "
            f"{len(self.polygons)} polygon(s) >= {self.threshold:g}"
        )


def resolve_model(model, device: str = "auto"):
    """Return ``model`` if it is loaded, else :func:`dgtrs_geo.load_model` of its name or path."""
    if isinstance(model, str | Path):
        from ..models import load_model

        return load_model(model, device=device)
    for attribute in ("encode_image", "encode_text", "model_id", "image_size", "device"):
        if not hasattr(model, attribute):
            raise TypeError(
                f"model must be a registry name, a checkpoint path or a loaded model "
                f"(dgtrs_geo.load_model); {type(model).__name__} has no {attribute!r}"
            )
    return model


def _scaled(progress: ProgressFn | None, lo: float, hi: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(lo + (hi - lo) * fraction, message)


def _aoi_region(
    source: RasterSource, aoi: Sequence[float] | str | Path | None
) -> tuple[tuple[int, int, int, int] | None, list | None]:
    """Return the pixel region ``(col, row, width, height)`` of an AOI and its geometries."""
    if aoi is None:
        return None, None
    geoms = None
    if isinstance(aoi, str | Path):
        frame = gpd.read_file(aoi)
        if frame.empty:
            raise ValueError(f"area-of-interest file {aoi} has no features")
        if frame.crs is not None and source.crs is not None:
            frame = frame.to_crs(source.crs)
        geoms = list(frame.geometry)
        bounds = tuple(frame.total_bounds)
    else:
        bounds = tuple(float(v) for v in aoi)
        if len(bounds) != 4 or bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
            raise ValueError(
                f"area of interest must be (minx, miny, maxx, maxy) in the raster's CRS, got {aoi}"
            )
    inverse = ~source.transform
    corners = [inverse @ (x, y) for x in bounds[0::2] for y in bounds[1::2]]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    col0, row0 = max(0, math.floor(min(cols))), max(0, math.floor(min(rows)))
    col1, row1 = min(source.width, math.ceil(max(cols))), min(source.height, math.ceil(max(rows)))
    if col1 <= col0 or row1 <= row0:
        raise ValueError(
            f"area of interest {bounds} does not overlap the raster {source.path.name} "
            f"(bounds given in its CRS, {source.crs or 'pixel coordinates'})"
        )
    return (col0, row0, col1 - col0, row1 - row0), geoms


def _plan(
    source: RasterSource,
    scales: Sequence[float],
    scale_unit: str,
    region: tuple[int, int, int, int] | None,
) -> WindowPlan:
    match scale_unit:
        case "px":
            pixels = tuple(int(s) for s in scales)
        case "m":
            gsd = ground_sample_distance(source.transform, source.crs, source.width, source.height)
            pixels = scales_to_pixels(scales, gsd)
            if min(pixels) < MIN_WINDOW_PX:
                raise ValueError(
                    f"a window of {min(scales):g} m is only {min(pixels)} px on "
                    f"{source.path.name} (ground sample distance {gsd:.3g} m): give scales of "
                    f"at least {MIN_WINDOW_PX * gsd:.0f} m"
                )
        case _:
            raise ValueError(f"scale_unit must be 'px' or 'm', got {scale_unit!r}")
    return plan_windows(source.width, source.height, pixels, region)


def _plan_meta(plan: WindowPlan, reference_mode: bool, min_valid: float) -> dict:
    return {**plan.to_json(), "reference": bool(reference_mode), "min_valid": float(min_valid)}


def _open(
    raster: str | Path,
    bands: Sequence[int] | None,
    stretch: str | Stretch,
    aoi,
    scales: Sequence[float],
    scale_unit: str,
) -> tuple[RasterSource, WindowPlan, list | None]:
    source = RasterSource(raster, bands=bands, stretch=stretch)
    region, geoms = _aoi_region(source, aoi)
    return source, _plan(source, scales, scale_unit, region), geoms


def _build_or_load(
    source: RasterSource,
    plan: WindowPlan,
    model,
    *,
    reference_mode: bool,
    min_valid: float,
    index_dir: str | Path | None,
    rebuild: bool,
    batch_size: int | None,
    num_workers: int | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> EmbeddingIndex:
    fingerprint = source.fingerprint()
    raster = source.describe()
    plan_meta = _plan_meta(plan, reference_mode, min_valid)
    key = index_key(model.model_id, fingerprint, raster, plan_meta)
    directory = Path(index_dir) if index_dir is not None else default_index_dir(source.path)
    path = directory / f"{source.path.stem}-{key}.dgtrs-index"
    if path.exists() and not rebuild:
        index = EmbeddingIndex.load(path)
        index.check(model.model_id, fingerprint, raster, plan_meta)
        if progress is not None:
            progress(1.0, f"reused embedding index {path.name} ({len(index)} windows)")
        return index
    full = plan_windows(source.width, source.height, plan.scales)
    if plan.region != full.region and not rebuild:
        # An area of interest inside a raster already indexed whole (a map view that moved)
        # reads the windows over it from that index instead of encoding again.
        full_meta = _plan_meta(full, reference_mode, min_valid)
        key = index_key(model.model_id, fingerprint, raster, full_meta)
        full_path = directory / f"{source.path.stem}-{key}.dgtrs-index"
        if full_path.exists():
            index = EmbeddingIndex.load(full_path)
            index.check(model.model_id, fingerprint, raster, full_meta)
            part = index.subset(plan.region, plan_meta)
            if progress is not None:
                progress(1.0, f"reused {len(part)} windows of embedding index {full_path.name}")
            return part
    if progress is not None:
        progress(0.0, f"encoding {len(plan)} windows of {source.path.name}")
    kept, embeddings = encode_windows(
        model,
        source,
        plan.windows,
        reference=reference_mode,
        batch_size=batch_size,
        num_workers=num_workers,
        min_valid=min_valid,
        progress=progress,
        cancel=cancel,
    )
    if len(kept) == 0:
        raise ValueError(
            f"no window of {source.path.name} has at least {min_valid:.0%} valid pixels: the "
            "raster (or the area of interest) is all nodata, or the bands chosen are empty"
        )
    # The mask of the default grid is stored so queries need not read the raster's mask again.
    cell = auto_cell(plan.scales, plan.region[2], plan.region[3])
    shape = grid_windows(plan.windows[:1], plan.region, cell)[1]
    index = EmbeddingIndex.create(
        model_id=model.model_id,
        fingerprint=fingerprint,
        raster=raster,
        plan=plan_meta,
        windows=plan.windows[kept],
        embeddings=embeddings,
        valid=source.valid_grid(shape, plan.region),
        valid_cell=cell,
    )
    index.save(path)
    return index


def build_index(
    raster: str | Path,
    model,
    *,
    scales: Sequence[float] = REFERENCE_SCALES,
    scale_unit: str = "px",
    bands: Sequence[int] | None = None,
    stretch: str | Stretch = "auto",
    aoi: Sequence[float] | str | Path | None = None,
    reference_mode: bool = False,
    min_valid: float = 0.5,
    index_dir: str | Path | None = None,
    rebuild: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> EmbeddingIndex:
    """Embed every window of a raster once, or load the index a previous run saved.

    Args:
        raster: any raster GDAL reads.
        model: a loaded model, a registry name or a checkpoint path.
        scales: window sizes, in ``scale_unit``.
        scale_unit: ``"px"`` or ``"m"`` (converted with the raster's ground sample distance,
            geodesically for geographic CRSs).
        bands: 1-based bands read as R, G, B (default the first three).
        stretch: ``"auto"`` (2-98 percentile stretch for non-uint8 data), ``"none"`` or a
            :class:`~dgtrs_geo.localization.raster.Stretch`.
        aoi: ``(minx, miny, maxx, maxy)`` in the raster's CRS, or a vector file; only windows
            inside its bounding box are planned.
        reference_mode: preprocess crops as the published recipe does (an index of its own).
        min_valid: windows with a smaller share of valid pixels are skipped.
        index_dir: folder of indexes (default: :func:`default_index_dir`).
        rebuild: encode again even if a fitting index exists.
        batch_size: windows per forward (``None``: chosen for the device, halved on OOM).
        num_workers: DataLoader reader processes (``None``: 2 on GPU, 0 on CPU).
        device: for a model given by name or path: ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress: called with ``(fraction, message)``.
        cancel: checked between batches; when set, :class:`Cancelled` is raised and no index is
            written.

    Returns:
        The index (saved under ``index_dir``).

    """
    model = resolve_model(model, device)
    source, plan, _ = _open(raster, bands, stretch, aoi, scales, scale_unit)
    try:
        return _build_or_load(
            source,
            plan,
            model,
            reference_mode=reference_mode,
            min_valid=min_valid,
            index_dir=index_dir,
            rebuild=rebuild,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            cancel=cancel,
        )
    finally:
        source.close()


def _slug(text: str, taken: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "query"
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _check_queries(queries: str | Sequence[str]) -> list[str]:
    queries = [queries] if isinstance(queries, str) else list(queries)
    if not queries or any(not isinstance(q, str) or not q.strip() for q in queries):
        raise ValueError("every query must be non-empty text describing what to find")
    return queries


def localize(
    raster: str | Path,
    queries: str | Sequence[str],
    model,
    *,
    out_dir: str | Path | None = None,
    outputs: Sequence[str] = ("heatmap", "polygons", "overlay"),
    scales: Sequence[float] = REFERENCE_SCALES,
    scale_unit: str = "px",
    bands: Sequence[int] | None = None,
    stretch: str | Stretch = "auto",
    aoi: Sequence[float] | str | Path | None = None,
    threshold: float | None = None,
    normalise_mode: str = "minmax",
    smooth_sigma: float | None = None,
    cell: int | None = None,
    reference_mode: bool = False,
    jpeg_roundtrip: bool = False,
    min_valid: float = 0.5,
    index: EmbeddingIndex | str | Path | None = None,
    index_dir: str | Path | None = None,
    rebuild_index: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> list[LocalizationResult]:
    """Find where each query is on a raster: georeferenced heatmaps and polygons.

    The raster's windows are embedded once and kept in an embedding index; every later call with
    the same raster, model and plan reads the index and costs one text forward and one matrix
    product per call.

    Args:
        raster: any raster GDAL reads (GeoTIFF, COG, VRT, JPEG/PNG with or without world file).
        queries: one text or several (they share the index and the text forward).
        model: a loaded model (:func:`dgtrs_geo.load_model`), a registry name or a checkpoint path.
        out_dir: where to write outputs (created); ``None`` writes nothing.
        outputs: which files to write: ``heatmap`` (float32 GeoTIFF), ``polygons`` (GeoPackage),
            ``geojson`` (GeoJSON, WGS 84), ``overlay`` (PNG of the heatmap over the image).
        scales: window sizes in ``scale_unit`` (reference: 256, 512, 768 px).
        scale_unit: ``"px"`` or ``"m"``.
        bands: 1-based bands read as R, G, B (default the first three).
        stretch: ``"auto"``, ``"none"`` or a :class:`~dgtrs_geo.localization.raster.Stretch`.
        aoi: ``(minx, miny, maxx, maxy)`` in the raster's CRS, or a vector file (cells outside
            its geometries are NaN).
        threshold: score a heatmap cell needs to be inside a polygon (default 0.5 for min-max
            maps, 0.25 for raw cosine).
        normalise_mode: ``"minmax"`` (each map to [0, 1], like the reference) or ``"cosine"``
            (raw cosine similarity, comparable across rasters and queries).
        smooth_sigma: Gaussian smoothing in metres (pixels for rasters without a CRS);
            ``None``: a quarter of the smallest window; 0: off. Fast mode only.
        cell: heatmap cell side in raster pixels (``None``: a sixteenth of the smallest window,
            and the longer side at most 4096 cells). Reference mode always uses 1.
        reference_mode: reproduce the published recipe (crop preprocessing, uint8, median blur
            251 px, full resolution) instead of the fast mode.
        jpeg_roundtrip: in reference mode, also the authors' JPEG save and re-read.
        min_valid: windows with a smaller share of valid (not nodata) pixels are skipped.
        index: a built index (object or directory) to use; it must fit the raster, model and
            plan, else :class:`IndexMismatchError`.
        index_dir: folder of cached indexes (default next to the raster, or
            ``$DGTRS_GEO_CACHE/indexes`` when that variable is set).
        rebuild_index: encode again even if a fitting index exists.
        batch_size: windows per forward (``None``: chosen for the device, halved on OOM).
        num_workers: DataLoader reader processes (``None``: 2 on GPU, 0 on CPU).
        device: for a model given by name or path.
        progress: called with ``(fraction in [0, 1], message)``.
        cancel: a ``threading.Event`` checked between batches and before writing; when set,
            :class:`Cancelled` is raised and no file is left behind.

    Returns:
        One :class:`LocalizationResult` per query, in order.

    Raises:
        ValueError: on an empty query, an unreadable raster, bad bands, an all-nodata raster, an
            unwritable ``out_dir`` or a bad option.
        IndexMismatchError: if ``index`` does not fit.
        Cancelled: if ``cancel`` was set.

    """
    queries = _check_queries(queries)
    if normalise_mode not in DEFAULT_THRESHOLDS:
        raise ValueError(f"normalise_mode must be 'minmax' or 'cosine', got {normalise_mode!r}")
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown output kind(s) {unknown}: choose from {list(OUTPUTS)}")
    if out_dir is not None and outputs:
        from .writers import check_writable

        out_dir = check_writable(out_dir)
    model = resolve_model(model, device)
    source, plan, geoms = _open(raster, bands, stretch, aoi, scales, scale_unit)
    try:
        if index is None:
            index = _build_or_load(
                source,
                plan,
                model,
                reference_mode=reference_mode,
                min_valid=min_valid,
                index_dir=index_dir,
                rebuild=rebuild_index,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=_scaled(progress, 0.0, 0.9),
                cancel=cancel,
            )
        else:
            if not isinstance(index, EmbeddingIndex):
                index = EmbeddingIndex.load(index)
            index.check(
                model.model_id,
                source.fingerprint(),
                source.describe(),
                _plan_meta(plan, reference_mode, min_valid),
            )
        if cancel is not None and cancel.is_set():
            raise Cancelled("localization cancelled")
        if progress is not None:
            progress(0.9, f"scoring {len(queries)} query(ies)")
        results = _score(
            source,
            plan,
            index,
            model,
            queries,
            geoms=geoms,
            threshold=threshold,
            normalise_mode=normalise_mode,
            smooth_sigma=smooth_sigma,
            cell=cell,
            reference_mode=reference_mode,
            jpeg_roundtrip=jpeg_roundtrip,
        )
        if cancel is not None and cancel.is_set():
            raise Cancelled("localization cancelled")
        if out_dir is not None and outputs:
            _write_all(results, source, plan.region, Path(out_dir), outputs)
    finally:
        source.close()
    if progress is not None:
        progress(1.0, "done")
    return results


def _score(
    source: RasterSource,
    plan: WindowPlan,
    index: EmbeddingIndex,
    model,
    queries: list[str],
    *,
    geoms: list | None,
    threshold: float | None,
    normalise_mode: str,
    smooth_sigma: float | None,
    cell: int | None,
    reference_mode: bool,
    jpeg_roundtrip: bool,
) -> list[LocalizationResult]:
    """Score every query against the index: one text forward, one product, one accumulation."""
    texts = encode_texts(model, queries)
    if texts.shape[1] != index.embeddings.shape[1]:
        raise IndexMismatchError(
            f"the index holds {index.embeddings.shape[1]}-d embeddings but the model gives "
            f"{texts.shape[1]}-d ones: rebuild the index with this model"
        )
    scores = index.embeddings @ texts.T
    col0, row0, width, height = plan.region
    if reference_mode:
        cell = 1
    elif cell is None:
        cell = auto_cell(plan.scales, width, height)
    boxes, shape = grid_windows(index.windows, plan.region, cell)
    means = accumulate(boxes, scores, shape)
    transform = source.transform @ Affine.translation(col0, row0) @ Affine.scale(cell)
    invalid = np.zeros(shape, dtype=bool)
    if index.meta.get("valid_cell") == cell and index.valid is not None:
        valid = index.valid
    elif index.meta.get("valid_cell") == cell:
        valid = None  # the index found every pixel valid
    else:
        valid = source.valid_grid(shape, plan.region)
    if valid is not None:
        invalid |= ~valid
    if geoms:
        from rasterio.features import geometry_mask

        invalid |= geometry_mask(geoms, out_shape=shape, transform=transform)
    mode = "reference" if reference_mode else "fast"
    norm = "minmax" if reference_mode else normalise_mode
    threshold = DEFAULT_THRESHOLDS[norm] if threshold is None else float(threshold)
    if smooth_sigma is None:
        sigma_px = min(plan.scales) / 4
    elif source.crs is None:
        sigma_px = float(smooth_sigma)
    else:
        gsd = ground_sample_distance(source.transform, source.crs, source.width, source.height)
        sigma_px = float(smooth_sigma) / gsd
    results = []
    for q, query in enumerate(queries):
        heat = means[q]
        heat[invalid] = np.nan
        if reference_mode:
            heat = reference_finish(heat, jpeg_roundtrip=jpeg_roundtrip)
        else:
            heat = normalise(smooth(heat, sigma_px / cell), norm)
        if np.isfinite(heat).any():
            row, col = np.unravel_index(np.nanargmax(heat), heat.shape)
            best = tuple(float(v) for v in transform @ (col + 0.5, row + 0.5))
        else:
            best = (math.nan, math.nan)
        results.append(
            LocalizationResult(
                query=query,
                heatmap=heat,
                transform=transform,
                crs=source.crs,
                polygons=heatmap_polygons(heat, transform, source.crs, threshold, query),
                best=best,
                score_max=float(scores[:, q].max()),
                model_id=model.model_id,
                mode=mode,
                normalise=norm,
                threshold=threshold,
            )
        )
    return results


def _write_all(
    results: list[LocalizationResult],
    source: RasterSource,
    region: tuple[int, int, int, int],
    out_dir: Path,
    outputs: Sequence[str],
) -> None:
    """Write every result's files; on any failure remove the ones this call wrote."""
    from .writers import write_heatmap, write_overlay, write_polygons

    written: list[Path] = []
    taken: set[str] = set()
    image = valid = None
    try:
        for result in results:
            stem = _slug(result.query, taken)
            paths = {
                kind: out_dir / f"{stem}{_SUFFIXES[kind]}" for kind in OUTPUTS if kind in outputs
            }
            for kind, path in paths.items():
                match kind:
                    case "heatmap":
                        tags = {
                            "query": result.query,
                            "model_id": result.model_id,
                            "mode": result.mode,
                            "normalise": result.normalise,
                            "threshold": str(result.threshold),
                        }
                        write_heatmap(path, result.heatmap, result.transform, result.crs, tags)
                    case "polygons" | "geojson":
                        write_polygons(path, result.polygons)
                    case "overlay":
                        if image is None:
                            image, valid = source.read_decimated(1024, region)
                        write_overlay(
                            path, image, result.heatmap, _extent(result), _title(result), valid
                        )
                written.append(path)
            result.paths = paths
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _extent(result: LocalizationResult) -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` for matplotlib, whichever way the grid's y axis runs."""
    rows, cols = result.heatmap.shape
    x0, y0 = result.transform @ (0, 0)
    x1, y1 = result.transform @ (cols, rows)
    return (x0, x1, y1, y0)


def _title(result: LocalizationResult) -> str:
    return f"{result.query}\nmodel {result.model_id} · {result.mode} mode · {result.normalise}"
