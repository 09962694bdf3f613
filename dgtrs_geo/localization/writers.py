"""Atomic writers for localization outputs: GeoTIFF heatmaps, polygons, PNG overlays.

Every writer fills a temporary file in the destination folder and renames it into place, so a
failed or cancelled run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

__all__ = [
    "atomic_path",
    "check_writable",
    "write_heatmap",
    "write_overlay",
    "write_polygons",
]


def _umask_mode(mode: int) -> int:
    """Return ``mode`` as the process umask would leave it (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def check_writable(directory: str | Path) -> Path:
    """Create ``directory`` if needed and make sure files can be written there.

    Raises:
        ValueError: naming the directory, if it cannot be created or written.

    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(
            f"output directory {directory} is not writable ({error.strerror or error}): "
            "choose another with -o/--output"
        ) from error
    return directory


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix, so GDAL drivers that look at it still work.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.unlink()
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_heatmap(
    path: str | Path,
    heatmap: np.ndarray,
    transform: Affine,
    crs: CRS | None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a float32 single-band GeoTIFF (NaN = nodata) with the exact CRS and geotransform.

    Args:
        path: destination ``.tif``.
        heatmap: ``[rows, cols]`` scores.
        transform: geotransform of the grid.
        crs: CRS, or ``None`` for pixel coordinates.
        tags: metadata written as GDAL tags (query, model, mode).

    Returns:
        ``path``.

    """
    rows, cols = heatmap.shape
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": "float32",
        "nodata": float("nan"),
        "transform": transform,
        "compress": "deflate",
        "predictor": 3,
    }
    if crs is not None:
        profile["crs"] = crs
    if rows >= 256 and cols >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(heatmap.astype(np.float32), 1)
            dst.set_band_description(1, "score")
            if tags:
                dst.update_tags(**tags)
    return Path(path)


def write_polygons(path: str | Path, polygons: gpd.GeoDataFrame) -> Path:
    """Write polygons as GeoPackage (``.gpkg``) or GeoJSON (``.geojson``), chosen by suffix."""
    path = Path(path)
    match path.suffix.lower():
        case ".gpkg":
            driver = "GPKG"
        case ".geojson" | ".json":
            driver = "GeoJSON"
        case other:
            raise ValueError(f"polygons are written as .gpkg or .geojson, not {other!r}")
    frame = polygons
    if driver == "GeoJSON" and frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        # RFC 7946 GeoJSON is WGS 84 longitude/latitude.
        frame = frame.to_crs("EPSG:4326")
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver=driver, layer="polygons" if driver == "GPKG" else None)
    return path


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    heatmap: np.ndarray,
    extent: tuple[float, float, float, float],
    title: str,
    valid: np.ndarray | None = None,
) -> Path:
    """Write a PNG of the heatmap over the image.

    Args:
        path: destination ``.png``.
        image: uint8 ``[3, h, w]`` (decimated) image.
        heatmap: ``[rows, cols]`` scores in [0, 1] (NaN transparent).
        extent: ``(left, right, bottom, top)`` in map units, shared by both layers.
        title: figure title (query and model).
        valid: bool ``[h, w]``; invalid (nodata) image pixels are drawn transparent.

    Returns:
        ``path``.

    """
    import matplotlib

    with warnings.catch_warnings():
        # Debian's system mpl_toolkits next to a pip matplotlib only loses 3-D plots, unused here.
        warnings.filterwarnings("ignore", message="Unable to import Axes3D")
        matplotlib.use("Agg")
        from matplotlib.figure import Figure

    height, width = image.shape[1:]
    fig = Figure(figsize=(8, 8 * height / max(width, 1) + 0.6), dpi=100)
    ax = fig.add_subplot()
    alpha = np.full(image.shape[1:], 255, np.uint8) if valid is None else valid * np.uint8(255)
    rgba = np.concatenate([image, alpha[None]]).transpose(1, 2, 0)
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    shown = ax.imshow(
        np.ma.masked_invalid(heatmap),
        extent=extent,
        cmap="inferno",
        alpha=0.55,
        interpolation="nearest",
    )
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="score")
    ax.set_title(title, fontsize=9, wrap=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)
