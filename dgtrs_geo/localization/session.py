"""A localization session: one model, one set of options, embedding indexes kept warm.

:class:`Localizer` is what every door calls: :func:`~dgtrs_geo.localization.localize` and
:func:`~dgtrs_geo.localization.build_index` make one per call, the ``dgtrs-geo`` command one per
run, the QGIS worker one per loaded model. ``index(raster)`` opens (or builds, under the index
module's lock) the raster's embedding index; ``query(raster, texts)`` scores texts against it.
Loaded indexes stay in an in-memory LRU keyed by the index key (model, raster content
fingerprint, raster description, plan), so a changed raster is never answered from memory.

Progress callbacks are called with ``(fraction, message)``, or with ``(fraction, message,
stage)`` when they take a third argument; ``stage`` is ``"encoding"`` (building, or finding,
the index), ``"scoring"`` or ``"writing"``.
"""

from __future__ import annotations

import inspect
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from ..errors import (
    Cancelled,
    DgtrsGeoError,
    IndexMismatchError,
    InputError,
    ModelError,
    OutputError,
)
from .encode import encode_texts, encode_windows
from .heatmap import (
    accumulate,
    auto_cell,
    grid_shape,
    grid_transform,
    grid_windows,
    normalise,
    smooth,
)
from .index import EmbeddingIndex, default_index_dir, index_key, open_or_build, try_open
from .options import DEFAULT_THRESHOLDS, MIN_WINDOW_PX, LocalizationOptions, model_patch_size
from .polygons import heatmap_polygons
from .raster import RasterSource, ground_sample_distance
from .reference import reference_finish
from .windows import WindowPlan, plan_windows, scales_to_pixels
from .writers import check_space, check_writable, out_of_space, write_results

__all__ = ["CacheInfo", "LocalizationResult", "Localizer", "plan_meta", "resolve_model"]

#: Progress callback: ``(fraction, message)`` or ``(fraction, message, stage)``.
ProgressFn = Callable[..., None]

#: Loaded indexes a session keeps in memory by default.
MAX_INDEXES = 8


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
        score_min: lowest raw cosine similarity of a window to the query (with ``score_max``,
            the raw range a min-max normalised map was scaled from).
        model_id: the model that scored it.
        mode: ``"fast"`` or ``"reference"``.
        normalise: ``"minmax"`` or ``"cosine"``.
        threshold: the polygon threshold used.
        windows: how many window embeddings were scored.

    """

    query: str
    heatmap: np.ndarray[Any, Any]
    transform: Affine
    crs: CRS | None
    polygons: gpd.GeoDataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    best: tuple[float, float] = (math.nan, math.nan)
    score_max: float = math.nan
    score_min: float = math.nan
    model_id: str = ""
    mode: str = "fast"
    normalise: str = "minmax"
    threshold: float = 0.5
    windows: int = 0

    def summary(self) -> str:
        """One line: the query, the best location in map coordinates, scores and polygon count."""
        unit = "px" if self.crs is None else (self.crs.to_string() or "map units")
        return (
            f"{self.query!r}: best at x={self.best[0]:.6g}, y={self.best[1]:.6g} ({unit}), "
            f"max cosine {self.score_max:.4f}, "
            f"{len(self.polygons)} polygon(s) >= {self.threshold:g}"
        )

    def to_json(self) -> dict[str, Any]:
        """Return everything but the arrays as a JSON-able dict (NaN coordinates as null).

        Keys: ``query``, ``best`` ``[x, y]``, ``score_max``, ``score_min``, ``polygon_count``,
        ``threshold``, ``normalise``, ``mode``, ``model_id``, ``windows``, ``crs`` (WKT or null),
        ``transform`` (six coefficients), ``shape`` ``[rows, cols]``, ``paths`` (kind -> file).
        """
        return {
            "query": self.query,
            "best": [_finite_or_none(v) for v in self.best],
            "score_max": _finite_or_none(self.score_max),
            "score_min": _finite_or_none(self.score_min),
            "polygon_count": len(self.polygons),
            "threshold": self.threshold,
            "normalise": self.normalise,
            "mode": self.mode,
            "model_id": self.model_id,
            "windows": self.windows,
            "crs": self.crs.to_wkt() if self.crs is not None else None,
            "transform": list(self.transform)[:6],
            "shape": list(self.heatmap.shape),
            "paths": {kind: str(path) for kind, path in self.paths.items()},
        }


class CacheInfo(NamedTuple):
    """The in-memory index cache's counters, as :func:`functools.lru_cache` reports them."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def resolve_model(model: Any, device: str = "auto") -> Any:
    """Return ``model`` if it is loaded, else :func:`dgtrs_geo.load_model` of its name or path.

    Raises:
        ModelError: if a name or path cannot be loaded (missing file, no cached weights offline,
            not a checkpoint).
        TypeError: if ``model`` is neither a name, a path nor a loaded model.

    """
    if isinstance(model, str | Path):
        from ..models import load_model
        from ..models.checkpoints import CheckpointError
        from ..models.registry import WeightsUnavailableError

        try:
            return load_model(model, device=device)
        except DgtrsGeoError:
            raise
        except (FileNotFoundError, CheckpointError, WeightsUnavailableError) as error:
            raise ModelError(str(error)) from error
    for attribute in ("encode_image", "encode_text", "model_id", "image_size", "device"):
        if not hasattr(model, attribute):
            raise TypeError(
                f"model must be a registry name, a checkpoint path or a loaded model "
                f"(dgtrs_geo.load_model); {type(model).__name__} has no {attribute!r}"
            )
    return model


def plan_meta(plan: WindowPlan, reference: bool, min_valid: float) -> dict[str, Any]:
    """Return the plan parameters an index records (and is keyed by)."""
    return {**plan.to_json(), "reference": bool(reference), "min_valid": float(min_valid)}


# --- progress ----------------------------------------------------------------------------------


class _Progress:
    """Reports ``(fraction, message[, stage])`` to a caller's callback, mapped into [lo, hi]."""

    def __init__(self, fn: ProgressFn | None, lo: float = 0.0, hi: float = 1.0) -> None:
        self.fn, self.lo, self.hi = fn, lo, hi
        self.staged = fn is not None and _takes_stage(fn)

    def __call__(self, fraction: float, message: str, stage: str) -> None:
        if self.fn is None:
            return
        fraction = self.lo + (self.hi - self.lo) * fraction
        if self.staged:
            self.fn(fraction, message, stage)
        else:
            self.fn(fraction, message)

    def part(self, lo: float, hi: float) -> _Progress:
        """Return a reporter for the share ``[lo, hi]`` of this one's range."""
        span = self.hi - self.lo
        part = _Progress(None, self.lo + span * lo, self.lo + span * hi)
        part.fn, part.staged = self.fn, self.staged
        return part

    def stage(self, stage: str) -> Callable[[float, str], None] | None:
        """Return a two-argument callback for code that knows no stages (the encoder)."""
        if self.fn is None:
            return None
        return lambda fraction, message: self(fraction, message, stage)


def _takes_stage(fn: ProgressFn) -> bool:
    try:
        inspect.signature(fn).bind(0.0, "", "starting")
    except (TypeError, ValueError):
        return False
    return True


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("localization cancelled")


# --- opening a raster and planning its windows -------------------------------------------------


@dataclass
class _Opened:
    """A raster opened for one call, its plan and what an index of it must record."""

    source: RasterSource
    plan: WindowPlan
    geoms: list[Any] | None
    expected: dict[str, Any]


@contextmanager
def _opened(raster: str | Path, options: LocalizationOptions, model: Any) -> Iterator[_Opened]:
    """Open ``raster``, plan its windows and close it after; read failures become InputError."""
    path = Path(raster).expanduser()
    source = None
    try:
        try:
            source = RasterSource(path, bands=options.bands, stretch=options.stretch)
        except (FileNotFoundError, ValueError) as error:
            if isinstance(error, DgtrsGeoError):
                raise
            raise InputError(str(error)) from error
        region, geoms = _aoi_region(source, options.aoi)
        plan = _plan(source, options, region, model)
        meta = plan_meta(plan, options.reference, options.min_valid)
        expected = {
            "model_id": model.model_id,
            "fingerprint": source.fingerprint(),
            "raster": source.describe(),
            "plan": meta,
        }
        yield _Opened(source, plan, geoms, expected)
    except RasterioIOError as error:
        # GDAL's own detail went to its log; "Read failed" is all the exception holds (its last
        # line, when a DataLoader reader process passed it on with a traceback).
        lines = str(error).replace("See previous exception for details.", "").splitlines()
        reason = next((line.strip(" .") for line in reversed(lines) if line.strip()), "read failed")
        reason = re.sub(r"^[\w.]+Error: ", "", reason)
        raise InputError(
            f"cannot read {path} ({reason}): the file is truncated or damaged. Copy it again, "
            f"or repair it (e.g. `gdal_translate {path.name} repaired.tif`) and use the copy"
        ) from error
    finally:
        if source is not None:
            source.close()


def _aoi_region(
    source: RasterSource, aoi: tuple[float, ...] | str | None
) -> tuple[tuple[int, int, int, int] | None, list[Any] | None]:
    """Return the pixel region ``(col, row, width, height)`` of an AOI and its geometries."""
    if aoi is None:
        return None, None
    geoms = None
    if isinstance(aoi, str):
        try:
            frame = gpd.read_file(aoi)
        except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file
            raise InputError(f"cannot read the area-of-interest file {aoi}: {error}") from error
        if frame.empty:
            raise InputError(f"area-of-interest file {aoi} has no features")
        if frame.crs is not None and source.crs is not None:
            frame = frame.to_crs(source.crs)
        geoms = list(frame.geometry)
        bounds = tuple(float(v) for v in frame.total_bounds)
    else:
        bounds = aoi
    inverse = ~source.transform
    corners = [inverse @ (x, y) for x in bounds[0::2] for y in bounds[1::2]]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    col0, row0 = max(0, math.floor(min(cols))), max(0, math.floor(min(rows)))
    col1, row1 = min(source.width, math.ceil(max(cols))), min(source.height, math.ceil(max(rows)))
    if col1 <= col0 or row1 <= row0:
        raise InputError(
            f"area of interest {bounds} does not overlap the raster {source.path.name} "
            f"(bounds given in its CRS, {source.crs or 'pixel coordinates'})"
        )
    return (col0, row0, col1 - col0, row1 - row0), geoms


def _plan(
    source: RasterSource,
    options: LocalizationOptions,
    region: tuple[int, int, int, int] | None,
    model: Any,
) -> WindowPlan:
    """Plan the windows; refuse windows under a patch and plans too large to run unasked."""
    if options.scale_unit == "m":
        try:
            gsd = ground_sample_distance(source.transform, source.crs, source.width, source.height)
        except ValueError as error:
            raise InputError(f"{source.path.name}: {error}") from error
        pixels = scales_to_pixels(options.scales, gsd)
        smallest = max(MIN_WINDOW_PX, model_patch_size(model) or 0)
        if min(pixels) < smallest:
            raise InputError(
                f"a window of {min(options.scales):g} m is only {min(pixels)} px on "
                f"{source.path.name} (ground sample distance {gsd:.3g} m): give scales (--scales) "
                f"of at least {smallest * gsd:.0f} m"
            )
    else:
        pixels = tuple(int(s) for s in options.scales)
    plan = plan_windows(source.width, source.height, pixels, region)
    options.check_plan_size(len(plan), str(source.path), model.device)
    return plan


# --- the session -------------------------------------------------------------------------------


class Localizer:
    """A model, default options, and the embedding indexes it has loaded, kept warm.

    Args:
        model: a loaded model (:func:`dgtrs_geo.load_model`), a registry name or a checkpoint
            path (loaded on ``options.device``).
        options: the session's default options; every call may override some.
        max_indexes: loaded indexes kept in memory (least recently used dropped first).

    Raises:
        InputError: if an option is out of range.
        ModelError: if the model cannot be loaded.

    """

    def __init__(
        self,
        model: Any,
        options: LocalizationOptions | None = None,
        *,
        max_indexes: int = MAX_INDEXES,
    ) -> None:
        options = (options or LocalizationOptions()).validate()
        self.model = resolve_model(model, options.device)
        self.options = options.validate(self.model)
        self._indexes: OrderedDict[str, EmbeddingIndex] = OrderedDict()
        self._max_indexes = max_indexes
        self._hits = self._misses = 0
        self._lock = threading.Lock()

    def cache_info(self) -> CacheInfo:
        """Return hits, misses, size limit and size of the in-memory index cache."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, self._max_indexes, len(self._indexes))

    def cache_clear(self) -> None:
        """Drop every index held in memory (indexes on disk stay)."""
        with self._lock:
            self._indexes.clear()

    def options_for(
        self, options: LocalizationOptions | None = None, **overrides: Any
    ) -> LocalizationOptions:
        """Return ``options`` (default: the session's) with ``overrides``, validated."""
        merged = (options or self.options).replace(**overrides)
        return merged.validate(self.model)

    def index(
        self,
        raster: str | Path,
        *,
        options: LocalizationOptions | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        **overrides: Any,
    ) -> EmbeddingIndex:
        """Return the embedding index of ``raster``: from memory, from disk, or built now.

        Args:
            raster: any raster GDAL reads.
            options: options for this call instead of the session's.
            progress: see the module docstring.
            cancel: checked between batches; when set, :class:`Cancelled` is raised and no
                index is written.
            **overrides: option fields to change for this call (``rebuild=True``...).

        Raises:
            InputError: bad options, an unreadable or truncated raster, an all-nodata raster.
            OutputError: an index folder that cannot be written, or a full disk.
            Cancelled: if ``cancel`` was set.

        """
        options = self.options_for(options, **overrides)
        with _opened(raster, options, self.model) as opened:
            return self._index(opened, options, _Progress(progress), cancel)

    def query(
        self,
        raster: str | Path,
        texts: str | Sequence[str],
        index: EmbeddingIndex | str | Path | None = None,
        *,
        options: LocalizationOptions | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        **overrides: Any,
    ) -> list[LocalizationResult]:
        """Find where each text is on ``raster``: heatmaps and polygons, written if asked.

        Args:
            raster: any raster GDAL reads.
            texts: one text or several (they share the index and the text forward).
            index: an index to score instead of the session's (an :class:`EmbeddingIndex`
                built in memory, or an index folder); it must fit the raster, model and plan.
            options: options for this call instead of the session's.
            progress: see the module docstring.
            cancel: checked between batches and before writing; when set, :class:`Cancelled`
                is raised and no file is left behind.
            **overrides: option fields to change for this call (``threshold=0.6``...).

        Returns:
            One :class:`LocalizationResult` per text, in order.

        Raises:
            InputError: an empty text, bad options, an unreadable raster.
            IndexMismatchError: if ``index`` does not fit.
            OutputError: an output folder that cannot be written, or a full disk.
            Cancelled: if ``cancel`` was set.

        """
        texts = _check_texts(texts)
        options = self.options_for(options, **overrides)
        out_dir = None
        if options.out_dir is not None and options.outputs:
            out_dir = check_writable(options.out_dir, "output folder", "-o/--out-dir")
        report = _Progress(progress)
        with _opened(raster, options, self.model) as opened:
            if index is None:
                index = self._index(opened, options, report.part(0.0, 0.9), cancel)
            else:
                index = _given_index(index, opened)
            _check_cancel(cancel)
            report(0.9, f"scoring {len(texts)} query(ies)", "scoring")
            results = _score(opened, index, self.model, texts, options)
            _check_cancel(cancel)
            if out_dir is not None:
                report(0.95, f"writing {len(results) * len(options.outputs)} file(s)", "writing")
                write_results(results, opened.source, opened.plan.region, out_dir, options.outputs)
        report(1.0, "done", "writing" if out_dir is not None else "scoring")
        return results

    # --- indexes ------------------------------------------------------------------------------

    def _remember(self, key: str, index: EmbeddingIndex) -> EmbeddingIndex:
        with self._lock:
            self._indexes[key] = index
            self._indexes.move_to_end(key)
            while len(self._indexes) > self._max_indexes:
                self._indexes.popitem(last=False)
        return index

    def _recall(self, key: str) -> EmbeddingIndex | None:
        with self._lock:
            index = self._indexes.get(key)
            if index is not None:
                self._indexes.move_to_end(key)
            return index

    def _index(
        self,
        opened: _Opened,
        options: LocalizationOptions,
        report: _Progress,
        cancel: threading.Event | None,
    ) -> EmbeddingIndex:
        key = index_key(**opened.expected)
        name = opened.source.path.name
        if not options.rebuild and (index := self._recall(key)) is not None:
            with self._lock:
                self._hits += 1
            report(1.0, f"embedding index of {name} is warm ({len(index)} windows)", "encoding")
            return index
        with self._lock:
            self._misses += 1
        if not options.rebuild and (part := self._from_whole(opened, options)) is not None:
            report(1.0, f"reused {len(part)} windows of the whole raster's index", "encoding")
            return self._remember(key, part)
        directory = _index_dir(options, opened.source.path)
        path = directory / f"{opened.source.path.stem}-{key}.dgtrs-index"
        if not options.rebuild and (index := try_open(path, opened.expected)) is not None:
            report(1.0, f"reused embedding index {path.name} ({len(index)} windows)", "encoding")
            return self._remember(key, index)
        # Found out now, not after an hour of encoding: the folder must take the index.
        check_writable(directory, "index folder", "--index-dir")
        check_space(directory, _index_bytes(len(opened.plan), self.model), "--index-dir")

        def build() -> EmbeddingIndex:
            return self._build(opened, options, report, cancel)

        try:
            index = open_or_build(path, opened.expected, build, rebuild=options.rebuild)
        except OSError as error:
            if isinstance(error, DgtrsGeoError) or not out_of_space(error, directory):
                raise
            raise OutputError(
                f"no space left on the device of {directory} for the embedding index: free "
                "space there or choose another folder with --index-dir"
            ) from error
        return self._remember(key, index)

    def _from_whole(self, opened: _Opened, options: LocalizationOptions) -> EmbeddingIndex | None:
        """For an AOI: the windows over it from an index of the whole raster, if one exists.

        A map view that moved inside a raster already indexed whole costs no encoding.
        """
        plan = opened.plan
        source = opened.source
        whole = plan_windows(source.width, source.height, plan.scales)
        if plan.region == whole.region:
            return None
        expected = {
            **opened.expected,
            "plan": plan_meta(whole, options.reference, options.min_valid),
        }
        key = index_key(**expected)
        index = self._recall(key)
        if index is None:
            path = _index_dir(options, source.path) / f"{source.path.stem}-{key}.dgtrs-index"
            index = try_open(path, expected)
        if index is None:
            return None
        self._remember(key, index)
        return index.subset(plan.region, opened.expected["plan"])

    def _build(
        self,
        opened: _Opened,
        options: LocalizationOptions,
        report: _Progress,
        cancel: threading.Event | None,
    ) -> EmbeddingIndex:
        source, plan = opened.source, opened.plan
        report(0.0, f"encoding {len(plan)} windows of {source.path.name}", "encoding")
        kept, embeddings = encode_windows(
            self.model,
            source,
            plan.windows,
            reference=options.reference,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            min_valid=options.min_valid,
            progress=report.stage("encoding"),
            cancel=cancel,
        )
        if len(kept) == 0:
            raise InputError(
                f"no window of {source.path.name} has at least {options.min_valid:.0%} valid "
                "pixels: the raster (or the area of interest) is all nodata, or the bands "
                "chosen (--bands) are empty"
            )
        # The mask of the default grid is stored so queries need not read the raster's mask again.
        cell = auto_cell(plan.scales, plan.region[2], plan.region[3])
        shape = grid_shape(plan.region, cell)
        return EmbeddingIndex.create(
            **opened.expected,
            windows=plan.windows[kept],
            embeddings=embeddings,
            valid=source.valid_grid(shape, plan.region),
            valid_cell=cell,
        )


def _index_dir(options: LocalizationOptions, raster: Path) -> Path:
    if options.index_dir is not None:
        return Path(options.index_dir).expanduser()
    return default_index_dir(raster)


def _index_bytes(windows: int, model: Any) -> int:
    """Upper bound of an index's size on disk: windows, footprints and embeddings."""
    dim = int(getattr(model, "embed_dim", 1024))
    return windows * (8 * 4 + 8 * 4 + 4 * dim) + (1 << 20)


def _given_index(index: EmbeddingIndex | str | Path, opened: _Opened) -> EmbeddingIndex:
    if not isinstance(index, EmbeddingIndex):
        index = EmbeddingIndex.load(index)
    index.check(**opened.expected)
    return index


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise InputError("every query must be non-empty text describing what to find")
    return texts


# --- scoring -----------------------------------------------------------------------------------


def _score(
    opened: _Opened,
    index: EmbeddingIndex,
    model: Any,
    texts: list[str],
    options: LocalizationOptions,
) -> list[LocalizationResult]:
    """Score every text against the index: one text forward, one product, one accumulation."""
    embedded = encode_texts(model, texts)
    if embedded.shape[1] != index.embeddings.shape[1]:
        raise IndexMismatchError(
            f"the index holds {index.embeddings.shape[1]}-d embeddings but the model gives "
            f"{embedded.shape[1]}-d ones: rebuild the index with this model (--rebuild)"
        )
    scores = index.embeddings @ embedded.T
    source, plan = opened.source, opened.plan
    width, height = plan.region[2:]
    cell = 1 if options.reference else options.cell or auto_cell(plan.scales, width, height)
    boxes, shape = grid_windows(index.windows, plan.region, cell)
    means = accumulate(boxes, scores, shape)
    transform = grid_transform(source.transform, plan.region, shape)
    invalid = _invalid_cells(opened, index, cell, shape, transform)
    norm = "minmax" if options.reference else options.normalise
    threshold = DEFAULT_THRESHOLDS[norm] if options.threshold is None else options.threshold
    sigma_cells = _sigma_px(source, plan, options.smooth) / cell
    results = []
    for q, text in enumerate(texts):
        heat = means[q]
        heat[invalid] = np.nan
        if options.reference:
            heat = reference_finish(heat, jpeg_roundtrip=options.jpeg_roundtrip)
        else:
            heat = normalise(smooth(heat, sigma_cells), norm)
        results.append(
            LocalizationResult(
                query=text,
                heatmap=heat,
                transform=transform,
                crs=source.crs,
                polygons=heatmap_polygons(heat, transform, source.crs, threshold, text),
                best=_best(heat, transform),
                score_max=float(scores[:, q].max()),
                score_min=float(scores[:, q].min()),
                model_id=model.model_id,
                mode="reference" if options.reference else "fast",
                normalise=norm,
                threshold=threshold,
                windows=len(index),
            )
        )
    return results


def _invalid_cells(
    opened: _Opened,
    index: EmbeddingIndex,
    cell: int,
    shape: tuple[int, int],
    transform: Affine,
) -> np.ndarray[Any, Any]:
    """Cells that are nodata (from the index's stored mask when it fits) or outside the AOI."""
    invalid = np.zeros(shape, dtype=bool)
    if index.meta.get("valid_cell") == cell:
        valid = index.valid  # None: the index found every pixel valid
    else:
        valid = opened.source.valid_grid(shape, opened.plan.region)
    if valid is not None:
        invalid |= ~valid
    if opened.geoms:
        from rasterio.features import geometry_mask

        invalid |= geometry_mask(opened.geoms, out_shape=shape, transform=transform)
    return invalid


def _sigma_px(source: RasterSource, plan: WindowPlan, sigma: float | None) -> float:
    """Smoothing sigma in raster pixels: ``sigma`` is in metres (pixels without a CRS)."""
    if sigma is None:
        return min(plan.scales) / 4
    if source.crs is None:
        return float(sigma)
    gsd = ground_sample_distance(source.transform, source.crs, source.width, source.height)
    return float(sigma) / gsd


def _best(heat: np.ndarray[Any, Any], transform: Affine) -> tuple[float, float]:
    if not np.isfinite(heat).any():
        return (math.nan, math.nan)
    row, col = np.unravel_index(np.nanargmax(heat), heat.shape)
    x, y = transform @ (float(col) + 0.5, float(row) + 0.5)
    return (float(x), float(y))
