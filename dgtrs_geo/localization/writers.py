"""Atomic writers for localization outputs: GeoTIFF heatmaps, polygons, PNG overlays.

Every writer fills a temporary file in the destination folder and renames it into place, so a
failed or cancelled run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import textwrap
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from ..errors import DgtrsGeoError, OutputError

if TYPE_CHECKING:
    from .raster import RasterSource
    from .session import LocalizationResult

__all__ = [
    "atomic_path",
    "check_space",
    "check_writable",
    "disk_free",
    "out_of_space",
    "output_stem",
    "write_heatmap",
    "write_overlay",
    "write_polygons",
    "write_results",
]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_PHRASES = ("no space left", "disk is full", "disk full", "free disk space")
#: Free bytes under which a failed write is blamed on the disk being full.
_NEARLY_FULL = 1 << 20

#: File suffix of each output kind.
SUFFIXES = {"heatmap": ".tif", "polygons": ".gpkg", "geojson": ".geojson", "overlay": ".png"}

#: Longest side of a PNG overlay in pixels, whatever the raster's shape.
MAX_OVERLAY_PX = 4096
#: Overlay resolution; the figure's size in inches is chosen so the PNG stays in bounds.
OVERLAY_DPI = 100
#: Lines of the query shown in an overlay's title.
TITLE_LINES = 3
# Room, in inches, for the colour bar beside the map and the title above it.
_MARGIN_W, _MARGIN_H = 1.6, 1.2


def _umask_mode(mode: int) -> int:
    """Return ``mode`` as the process umask would leave it (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def check_writable(
    directory: str | Path, what: str = "output folder", flag: str = "-o/--out-dir"
) -> Path:
    """Create ``directory`` if needed and make sure files can be written there.

    Args:
        directory: the folder.
        what: how messages name it (``"output folder"``, ``"index folder"``).
        flag: the option that chooses another.

    Raises:
        OutputError: naming the folder, the reason (``File exists`` when it is a file) and the
            option, if it cannot be created or written.

    """
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        if isinstance(error, FileExistsError):
            reason += ": it is a file, not a folder"
        raise OutputError(
            f"{what} {directory} is not writable ({reason}): choose another with {flag}"
        ) from error
    return directory


def disk_free(path: str | Path) -> int:
    """Return the free bytes on the device of ``path`` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(directory: str | Path, needed: int, flag: str) -> None:
    """Raise :class:`OutputError` if ``directory``'s device has fewer than ``needed`` bytes free."""
    free = disk_free(directory)
    if free < needed:
        raise OutputError(
            f"{directory} has {free / 2**20:.1f} MiB free but about {needed / 2**20:.1f} MiB are "
            f"needed: free space there or choose another folder with {flag}"
        )


def out_of_space(error: BaseException, directory: str | Path) -> bool:
    """Whether ``error``, raised while writing into ``directory``, means the disk is full.

    GDAL reports a full disk as ``Write failed`` (the errno goes to its log) and SQLite as
    ``database or disk is full``, so besides ``ENOSPC`` the messages and the free space count.
    """
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    if any(getattr(e, "errno", None) in _FULL_ERRNOS for e in chain):
        return True
    if any(phrase in str(e).lower() for e in chain for phrase in _FULL_PHRASES):
        return True
    try:
        return disk_free(directory) < _NEARLY_FULL
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix, so GDAL drivers that look at it still work. A full disk,
    and any ``OSError`` while writing, become an :class:`OutputError` naming the file.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except DgtrsGeoError:
        raise
    except Exception as error:
        # Checked before the temporary file is removed: it is what filled the disk.
        if out_of_space(error, path.parent):
            raise OutputError(
                f"no space left on the device of {path.parent} writing {path.name}: free space "
                "there or choose another output folder (-o/--out-dir)"
            ) from error
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_heatmap(
    path: str | Path,
    heatmap: np.ndarray[Any, Any],
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


def write_polygons(path: str | Path, polygons: gpd.GeoDataFrame, layer: str | None = None) -> Path:
    """Write polygons as GeoPackage (``.gpkg``) or GeoJSON (``.geojson``), chosen by suffix.

    Args:
        path: destination.
        polygons: the polygons.
        layer: a GeoJSON's layer name (its ``name`` member, the layer name QGIS shows; default
            the file's stem). A GeoPackage's layer is always ``polygons``.

    Returns:
        ``path``.

    """
    path = Path(path)
    match path.suffix.lower():
        case ".gpkg":
            driver, name = "GPKG", "polygons"
        case ".geojson" | ".json":
            # Named here, else the driver names the layer after the temporary file.
            driver, name = "GeoJSON", layer or path.stem
        case other:
            raise ValueError(f"polygons are written as .gpkg or .geojson, not {other!r}")
    frame = polygons
    if driver == "GeoJSON" and frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        # RFC 7946 GeoJSON is WGS 84 longitude/latitude.
        frame = frame.to_crs("EPSG:4326")
    # GeoPackage 1.2: GDAL < 3.7 (QGIS 3.22 to 3.28) warns that the 1.4 files newer GDAL writes
    # "may only be partially supported".
    version = {"VERSION": "1.2"} if driver == "GPKG" else {}
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver=driver, layer=name, **version)
    return path


def overlay_size(aspect: float) -> tuple[float, float]:
    """Return the overlay figure's ``(width, height)`` in inches for a map of ``aspect``.

    ``aspect`` is the map's height over its width. The map is 8 inches wide, shrunk (keeping its
    aspect) until the figure, margins for title and colour bar included, is at most
    :data:`MAX_OVERLAY_PX` pixels on its long side; a side never gets under an inch.
    """
    limit = MAX_OVERLAY_PX / OVERLAY_DPI
    width, height = 8.0, 8.0 * aspect
    shrink = min(1.0, (limit - _MARGIN_W) / width, (limit - _MARGIN_H) / max(height, 1e-9))
    return (max(width * shrink, 1.0) + _MARGIN_W, max(height * shrink, 1.0) + _MARGIN_H)


def wrap_title(text: str, width_chars: int, lines: int = TITLE_LINES) -> str:
    """Wrap ``text`` to ``lines`` lines of ``width_chars`` characters, cut with an ellipsis."""
    width_chars = max(width_chars, 10)
    # textwrap also breaks a single word longer than a line (a URL, an emoji run).
    wrapped = textwrap.wrap(" ".join(text.split()), width_chars, max_lines=lines, placeholder=" …")
    return "\n".join(wrapped)


def write_overlay(
    path: str | Path,
    image: np.ndarray[Any, Any],
    heatmap: np.ndarray[Any, Any],
    extent: tuple[float, float, float, float],
    title: str,
    valid: np.ndarray[Any, Any] | None = None,
) -> Path:
    """Write a PNG of the heatmap over the image, at most :data:`MAX_OVERLAY_PX` on a side.

    Args:
        path: destination ``.png``.
        image: uint8 ``[3, h, w]`` (decimated) image.
        heatmap: ``[rows, cols]`` scores in [0, 1] (NaN transparent).
        extent: ``(left, right, bottom, top)`` in map units, shared by both layers.
        title: figure title (query and model); wrapped and cut to fit.
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

    left, right, bottom, top = extent
    aspect = abs(top - bottom) / max(abs(right - left), 1e-300)
    size = overlay_size(aspect)
    # A fixed figure size and no "tight" bounding box: the PNG is exactly this many pixels.
    fig = Figure(figsize=size, dpi=OVERLAY_DPI, layout="constrained")
    ax = fig.add_subplot()
    alpha = np.full(image.shape[1:], 255, np.uint8) if valid is None else valid * np.uint8(255)
    rgba = np.concatenate([image, alpha[None]]).transpose(1, 2, 0)
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    shown = ax.imshow(
        np.ma.masked_invalid(heatmap),  # type: ignore[no-untyped-call]
        extent=extent,
        cmap="inferno",
        alpha=0.55,
        interpolation="nearest",
    )
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="score")
    head, _, tail = title.partition("\n")
    chars = int(size[0] * OVERLAY_DPI / 7.5)  # about 6 px per character at 9 pt, and a margin
    ax.set_title(
        wrap_title(head, chars) + ("\n" + wrap_title(tail, chars, 1) if tail else ""), fontsize=9
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def output_stem(text: str, taken: set[str]) -> str:
    """Return a readable file stem for a query, unique among ``taken`` (which it joins).

    Letters, digits and marks of every script are kept (``"红色屋顶"`` stays), anything else
    becomes ``-``; at most 60 characters and 180 bytes. A query with nothing to keep (emoji
    only) gets ``query-`` and a short hash of its text, so two such queries do not collide.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(c if unicodedata.category(c)[0] in "LNM" else "-" for c in text)
    slug = re.sub(r"-+", "-", kept).strip("-")[:60]
    while len(slug.encode()) > 180:
        slug = slug[:-1]
    slug = slug.strip("-") or "query-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug}-{n}", n + 1
    taken.add(candidate)
    return candidate


def write_results(
    results: Sequence[LocalizationResult],
    source: RasterSource,
    region: tuple[int, int, int, int],
    out_dir: Path,
    outputs: Sequence[str],
) -> None:
    """Write every result's files (setting ``result.paths``); on failure remove this call's files.

    Args:
        results: the answers, one per query.
        source: the raster (the overlay's background is read from it, decimated).
        region: the planned region ``(col, row, width, height)`` in pixels.
        out_dir: an existing, writable folder.
        outputs: kinds to write (``heatmap``, ``polygons``, ``geojson``, ``overlay``).

    """
    written: list[Path] = []
    taken: set[str] = set()
    background: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None
    try:
        for result in results:
            stem = output_stem(result.query, taken)
            paths = {
                kind: out_dir / f"{stem}{suffix}"
                for kind, suffix in SUFFIXES.items()
                if kind in outputs
            }
            for kind, path in paths.items():
                match kind:
                    case "heatmap":
                        write_heatmap(
                            path, result.heatmap, result.transform, result.crs, _tags(result)
                        )
                    case "polygons":
                        write_polygons(path, result.polygons)
                    case "geojson":
                        write_polygons(path, result.polygons, layer=_layer_name(result.query))
                    case "overlay":
                        if background is None:
                            background = source.read_decimated(1024, region)
                        image, valid = background
                        write_overlay(
                            path, image, result.heatmap, _extent(result), _title(result), valid
                        )
                written.append(path)
            result.paths = paths
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _tags(result: LocalizationResult) -> dict[str, str]:
    return {
        "query": result.query,
        "model_id": result.model_id,
        "mode": result.mode,
        "normalise": result.normalise,
        "threshold": str(result.threshold),
    }


def _layer_name(query: str) -> str:
    name = " ".join(query.split())
    return name if len(name) <= 100 else name[:99] + "…"


def _extent(result: LocalizationResult) -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` for matplotlib, whichever way the grid's y axis runs."""
    rows, cols = result.heatmap.shape
    x0, y0 = result.transform @ (0, 0)
    x1, y1 = result.transform @ (cols, rows)
    return (x0, x1, y1, y0)


def _title(result: LocalizationResult) -> str:
    return f"{result.query}\nmodel {result.model_id} · {result.mode} mode · {result.normalise}"
