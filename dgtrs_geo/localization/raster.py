"""Reading rasters for localization: bands, 8-bit stretch, nodata, GSD, fingerprints.

Anything GDAL reads works (GeoTIFF, COG, VRT, JPEG/PNG with or without a world file). Only windows
are ever read at full resolution; statistics and masks for the whole raster come from decimated
reads, so memory stays bounded by the window and the output grid, not by the raster.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from .fingerprint import raster_fingerprint

__all__ = [
    "ArraySource",
    "RasterSource",
    "Stretch",
    "ground_sample_distance",
    "raster_fingerprint",
]

# Side of the decimated read used for percentiles and whole-raster masks.
_STATS_SIZE = 1024

#: GDAL's block cache during decimated reads of a whole raster. Its default (5 % of RAM) keeps
#: every block such a read touches: +1.2 GiB for a 20k x 20k raster without overviews.
GDAL_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Stretch:
    """Linear map of each band's values to 0..255, clipped.

    Attributes:
        low: per-band value mapped to 0.
        high: per-band value mapped to 255.

    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Return ``data`` (``[bands, h, w]``) as uint8."""
        if data.dtype == np.uint8 and self.is_identity:
            return data
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        high = np.asarray(self.high, dtype=np.float32)[:, None, None]
        scaled = (data.astype(np.float32) - low) * (255.0 / np.maximum(high - low, 1e-12))
        out: np.ndarray[Any, Any] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)
        return out

    @property
    def is_identity(self) -> bool:
        """Whether the stretch maps 0..255 onto itself (uint8 data passes through)."""
        return all(v == 0 for v in self.low) and all(v == 255 for v in self.high)

    def to_json(self) -> dict[str, Any]:
        """Return the stretch as a JSON-able dict."""
        return {"low": list(self.low), "high": list(self.high)}


def ground_sample_distance(transform: Affine, crs: CRS | None, width: int, height: int) -> float:
    """Return the raster's pixel size in metres (mean of x and y).

    Geographic CRSs (degrees) are measured on the ellipsoid at the raster's centre, so a window of
    500 m is 500 m on the ground for an EPSG:4326 raster too. Without a CRS there are no metres.

    Args:
        transform: the raster's geotransform.
        crs: its CRS.
        width: raster width in pixels.
        height: raster height in pixels.

    Returns:
        Metres per pixel.

    Raises:
        ValueError: if the raster has no CRS.

    """
    if crs is None:
        raise ValueError(
            "the raster has no CRS, so window scales in metres cannot be converted: "
            "give scales in pixels (--scale-unit px)"
        )
    if crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        cx, cy = transform @ (width / 2, height / 2)
        ex, ey = transform @ (width / 2 + 1, height / 2)
        sx, sy = transform @ (width / 2, height / 2 + 1)
        dx = geod.inv(cx, cy, ex, ey)[2]
        dy = geod.inv(cx, cy, sx, sy)[2]
        return float((dx + dy) / 2)
    factor = crs.linear_units_factor[1] if crs.linear_units else 1.0
    return (
        float((math.hypot(transform.a, transform.d) + math.hypot(transform.b, transform.e)) / 2)
        * factor
    )


class RasterSource:
    """A raster opened for windowed reads of 8-bit RGB crops and validity masks.

    The dataset handle is opened lazily and per process, so a source can be handed to DataLoader
    workers.

    Args:
        path: anything GDAL opens.
        bands: 1-based band indexes to read as R, G, B (default: the first three, or the single
            band three times for a grey raster).
        stretch: ``"auto"`` (identity for uint8, else a percentile stretch), ``"none"`` (values
            clipped to 0..255) or a :class:`Stretch`.
        percentiles: low and high percentiles of the auto stretch, per band, over valid pixels.

    Raises:
        ValueError: if the file cannot be read or a band index is out of range.

    """

    def __init__(
        self,
        path: str | Path,
        bands: Sequence[int] | None = None,
        stretch: str | Stretch = "auto",
        percentiles: tuple[float, float] = (2.0, 98.0),
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"raster not found: {self.path}")
        self._dataset = None
        self._pid = -1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                with rasterio.open(self.path) as src:
                    self.width, self.height, self.count = src.width, src.height, src.count
                    self.dtype = src.dtypes[0]
                    self.crs = src.crs
                    georeferenced = not (src.transform.is_identity and src.crs is None)
                    self.transform = src.transform
                    self.nodata = src.nodata
                    flags = src.mask_flag_enums
            except RasterioIOError as error:
                raise ValueError(f"cannot read raster {self.path}: {error}") from error
        if not georeferenced:
            warnings.warn(
                f"{self.path.name} has no CRS or geotransform: results are in pixel coordinates",
                stacklevel=2,
            )
        self.bands = self._check_bands(bands)
        self.has_mask = any(
            MaskFlags.all_valid not in flags[b - 1] or self.nodata is not None for b in self.bands
        )
        match stretch:
            case Stretch():
                self.stretch = stretch
            case "none":
                self.stretch = Stretch((0.0,) * 3, (255.0,) * 3)
            case "auto" if self.dtype == "uint8":
                self.stretch = Stretch((0.0,) * 3, (255.0,) * 3)
            case "auto":
                self.stretch = self._percentile_stretch(percentiles)
            case _:
                raise ValueError(f"stretch must be 'auto', 'none' or a Stretch, got {stretch!r}")

    def _check_bands(self, bands: Sequence[int] | None) -> tuple[int, ...]:
        if bands is None:
            return (1, 2, 3) if self.count >= 3 else (1, 1, 1)
        bands = tuple(int(b) for b in bands)
        if len(bands) not in (1, 3):
            raise ValueError(f"give one band or three bands (R, G, B), got {list(bands)}")
        bad = [b for b in bands if not 1 <= b <= self.count]
        if bad:
            raise ValueError(
                f"band index {bad[0]} is out of range: {self.path.name} has {self.count} band(s), "
                f"numbered 1..{self.count}"
            )
        return bands * 3 if len(bands) == 1 else bands

    @property
    def dataset(self) -> rasterio.DatasetReader:
        """The open dataset of this process."""
        if self._dataset is None or self._pid != os.getpid():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dataset = rasterio.open(self.path)
            self._pid = os.getpid()
        return self._dataset

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_dataset"] = None
        return state

    def close(self) -> None:
        """Close the dataset handle (it reopens on the next read)."""
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def _percentile_stretch(self, percentiles: tuple[float, float]) -> Stretch:
        data, valid = self.read_decimated(_STATS_SIZE, stretched=False)
        lows, highs = [], []
        for band in data:
            values = band[valid & np.isfinite(band)]
            if values.size == 0:
                lows.append(0.0)
                highs.append(1.0)
                continue
            lo, hi = np.percentile(values, percentiles)
            lows.append(float(lo))
            highs.append(float(hi) if hi > lo else float(lo) + 1.0)
        return Stretch(tuple(lows), tuple(highs))

    def read(self, window: Sequence[int]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Read one window at full resolution.

        Args:
            window: ``(col_off, row_off, width, height)``.

        Returns:
            ``(rgb, valid)``: uint8 ``[3, h, w]`` (invalid pixels 0) and bool ``[h, w]``.

        """
        win = Window(*(int(v) for v in window))
        data = self.dataset.read(self.bands, window=win)
        valid = self._valid(win, data)
        rgb = self.stretch.apply(data)
        if not valid.all():
            rgb[:, ~valid] = 0
        return rgb, valid

    def _valid(
        self,
        win: Window | None,
        data: np.ndarray[Any, Any],
        out_shape: tuple[int, int, int] | None = None,
    ) -> np.ndarray[Any, Any]:
        valid = np.ones(data.shape[1:], dtype=bool)
        if self.has_mask:
            masks = self.dataset.read_masks(
                self.bands, window=win, out_shape=out_shape, resampling=Resampling.nearest
            )
            valid &= masks.min(axis=0) > 0
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return valid

    def read_decimated(
        self,
        max_side: int,
        region: tuple[int, int, int, int] | None = None,
        stretched: bool = True,
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Read the raster (or a region of it) decimated so its longer side is at most ``max_side``.

        Args:
            max_side: longest side of the result in pixels.
            region: ``(col_off, row_off, width, height)``; default the whole raster.
            stretched: return uint8 after the stretch (else the raw values).

        Returns:
            ``(data, valid)``: ``[3, h, w]`` and bool ``[h, w]``.

        """
        region = region or (0, 0, self.width, self.height)
        factor = max(1.0, max(region[2], region[3]) / max_side)
        shape = (max(1, round(region[3] / factor)), max(1, round(region[2] / factor)))
        return self.read_grid(shape, region, stretched=stretched)

    def read_grid(
        self,
        shape: tuple[int, int],
        region: tuple[int, int, int, int] | None = None,
        stretched: bool = True,
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Read the raster (or a region) resampled (nearest) to ``shape`` = ``(rows, cols)``."""
        win = Window(*region) if region is not None else None
        out_shape = (len(self.bands), *shape)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            data = self.dataset.read(
                self.bands, window=win, out_shape=out_shape, resampling=Resampling.nearest
            )
            valid = self._valid(win, data, out_shape=out_shape)
        if stretched:
            data = self.stretch.apply(data)
            data[:, ~valid] = 0
        return data, valid

    def valid_grid(
        self, shape: tuple[int, int], region: tuple[int, int, int, int] | None = None
    ) -> np.ndarray[Any, Any] | None:
        """Return the validity mask of a region resampled to ``shape``; None if all valid."""
        if not self.has_mask and np.dtype(self.dtype).kind != "f":
            return None
        return self.read_grid(shape, region, stretched=False)[1]

    def fingerprint(self) -> str:
        """Return the raster's content fingerprint: it changes with any byte of any file read.

        See :mod:`dgtrs_geo.localization.fingerprint`; digests are cached per file, so an
        unchanged raster costs a few ``stat`` calls.
        """
        return raster_fingerprint(self.path, list(self.dataset.files))

    def describe(self) -> dict[str, Any]:
        """Return what identifies the pixels this source yields, as a JSON-able dict."""
        return {
            "path": str(self.path.resolve()),
            "width": self.width,
            "height": self.height,
            "crs": self.crs.to_wkt() if self.crs else None,
            "transform": list(self.transform)[:6],
            "bands": list(self.bands),
            "stretch": self.stretch.to_json(),
            # Nodata may come from a .aux.xml side file, which the fingerprint leaves out.
            "nodata": None if self.nodata is None else repr(float(self.nodata)),
        }


class ArraySource:
    """An in-memory ``H x W x 3`` uint8 image with the reading interface of :class:`RasterSource`.

    Pixel coordinates, no CRS: for images such as AIR-SLT's JPEGs.

    Args:
        image: uint8 array ``[H, W, 3]``.

    """

    def __init__(self, image: np.ndarray[Any, Any]) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an H x W x 3 uint8 image, got shape {image.shape} dtype {image.dtype}"
            )
        self.image = np.ascontiguousarray(image.transpose(2, 0, 1))
        self.count = 3
        self.height, self.width = image.shape[:2]
        self.crs = None
        self.transform = Affine.identity()
        self.has_mask = False
        self.bands = (1, 2, 3)

    def read(self, window: Sequence[int]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Read one window; see :meth:`RasterSource.read`."""
        col, row, w, h = (int(v) for v in window)
        rgb = self.image[:, row : row + h, col : col + w].copy()
        return rgb, np.ones(rgb.shape[1:], dtype=bool)

    def read_decimated(
        self,
        max_side: int,
        region: tuple[int, int, int, int] | None = None,
        stretched: bool = True,
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Return the image (or a region) decimated so its longer side is at most ``max_side``."""
        col, row, w, h = region or (0, 0, self.width, self.height)
        step = max(1, math.ceil(max(w, h) / max_side))
        rgb = self.image[:, row : row + h : step, col : col + w : step]
        return rgb, np.ones(rgb.shape[1:], dtype=bool)

    def valid_grid(
        self, shape: tuple[int, int], region: tuple[int, int, int, int] | None = None
    ) -> None:
        """Every pixel of an array is valid."""
        return None

    def close(self) -> None:
        """Nothing to close."""
