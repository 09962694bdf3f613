"""One scene into one part: the same windows and encoder as a single raster, then a checked write.

A scene is opened as :class:`~dgtrs_geo.localization.raster.RasterSource`, its windows planned by
:func:`~dgtrs_geo.localization.windows.plan_windows` from sizes converted per scene with its
ground sample distance, and embedded by :func:`~dgtrs_geo.localization.encode.encode_windows`:
nothing here encodes differently from ``dgtrs-geo localize``. A scene whose fingerprint matches
its record is not read again.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError, RasterioIOError

from ..errors import Cancelled, DgtrsGeoError, InputError
from ..localization.encode import encode_windows
from ..localization.fingerprint import raster_fingerprint
from ..localization.options import MIN_WINDOW_PX, LocalizationOptions, model_patch_size
from ..localization.raster import RasterSource, ground_sample_distance
from ..localization.windows import plan_windows, scales_to_pixels
from .remote import is_remote, local_raster, remote_fingerprint
from .sources import Scene
from .store import CatalogStore, ScenePart

__all__ = [
    "SceneOutcome",
    "SceneResult",
    "embed_scene",
    "index_scene",
    "scene_fingerprint",
    "scene_scales",
    "write_result",
]

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]

#: What a scene that cannot be read raises: reported per scene, the run goes on. Anything else
#: is a bug and stops the run with its traceback.
SCENE_ERRORS = (DgtrsGeoError, OSError, ValueError, RasterioError)


@dataclass(frozen=True)
class SceneOutcome:
    """What happened to one scene in a run.

    Attributes:
        scene_id: the scene.
        href: its location.
        status: ``"indexed"``, ``"unchanged"`` or ``"failed"``.
        rows: windows in its part.
        error: why it failed.
        note: what else the run found (a damaged part indexed again).

    """

    scene_id: str
    href: str
    status: str
    rows: int = 0
    error: str | None = None
    note: str | None = None


@dataclass
class SceneResult:
    """One scene's result before it is written (what ``predict_step`` returns).

    Attributes:
        scene: the scene.
        status: ``"indexed"``, ``"unchanged"`` or ``"failed"``.
        part: the embedded part, for indexed scenes.
        rows: windows in the part.
        error: why it failed.
        note: what else was found.
        record_failure: whether a failure replaces the scene's record (not when a part indexed
            before is kept because only the fingerprint could not be taken).

    """

    scene: Scene
    status: str
    part: ScenePart | None = None
    rows: int = 0
    error: str | None = None
    note: str | None = None
    record_failure: bool = True


def scene_fingerprint(scene: Scene) -> str:
    """Return the scene's fingerprint: content hash of local files, HTTP validators of URLs."""
    if is_remote(scene.href):
        return remote_fingerprint(scene.href)
    # What RasterSource(href).fingerprint() gives, with one GDAL open instead of two.
    if not Path(scene.href).exists():
        raise FileNotFoundError(f"raster not found: {scene.href}")
    try:
        return raster_fingerprint(scene.href)
    except RasterioIOError as error:
        raise ValueError(f"cannot read raster {scene.href}: {error}") from error


def scene_scales(
    options: LocalizationOptions, gsd: float, smallest: int = MIN_WINDOW_PX
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Return the window sizes of a scene in pixels, with the size asked for each.

    Sizes in metres under ``smallest`` pixels on this scene are left out (a 10 m scene cannot
    show a 50 m window in enough pixels); a scene left with none is refused.

    Args:
        options: the catalog's options.
        gsd: the scene's metres per pixel.
        smallest: the smallest window in pixels (:data:`MIN_WINDOW_PX`, or the model's patch).

    Raises:
        InputError: if no size is at least ``smallest`` pixels on this scene.

    """
    if options.scale_unit == "px":
        return tuple(int(round(s)) for s in options.scales), tuple(options.scales)
    pixels = scales_to_pixels(options.scales, gsd)
    kept = [(p, s) for p, s in zip(pixels, options.scales, strict=True) if p >= smallest]
    if not kept:
        raise InputError(
            f"every window size ({', '.join(f'{s:g}' for s in options.scales)} m) is under "
            f"{smallest} px on this scene of {gsd:.3g} m pixels: give the catalog sizes "
            f"(--scales) of at least {smallest * gsd:.0f} m"
        )
    return tuple(p for p, _ in kept), tuple(s for _, s in kept)


def _window_scales(windows: np.ndarray, pixels: tuple[int, ...], asked: tuple[float, ...]):
    """The size asked for each window; windows clamped to a small scene take the nearest above."""
    order = np.argsort(pixels)
    sorted_px = np.asarray(pixels)[order]
    side = windows[:, 2:].max(axis=1)
    position = np.minimum(np.searchsorted(sorted_px, side), len(sorted_px) - 1)
    return np.asarray(asked, dtype=np.float64)[order][position]


def index_scene(
    scene: Scene,
    model,
    options: LocalizationOptions,
    fingerprint: str,
    dim: int,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ScenePart:
    """Embed every window of one scene.

    Args:
        scene: the scene.
        model: a loaded model.
        options: the catalog's options with this run's ``batch_size`` and ``num_workers``.
        fingerprint: the scene's fingerprint, recorded with its part.
        dim: the embedding size (for a scene without a valid window).
        progress: called with ``(fraction, message)`` while encoding.
        cancel: checked between batches; when set, :class:`Cancelled` is raised.

    Raises:
        InputError: if the scene has no CRS, or no window size fits it.
        OSError, ValueError: if it cannot be read.

    """
    with local_raster(scene.href) as path, warnings.catch_warnings():
        # A scene without georeferencing is refused below; RasterSource's warning would repeat it.
        warnings.simplefilter("ignore", UserWarning)
        source = RasterSource(path, bands=options.bands, stretch=options.stretch)
        try:
            if source.crs is None:
                raise InputError(
                    f"{scene.href} has no CRS: a catalog places every window on the map; assign "
                    "one (gdal_edit.py -a_srs EPSG:xxxx) or leave the scene out"
                )
            gsd = ground_sample_distance(source.transform, source.crs, source.width, source.height)
            smallest = max(MIN_WINDOW_PX, model_patch_size(model) or 0)
            pixels, asked = scene_scales(options, gsd, smallest)
            plan = plan_windows(source.width, source.height, pixels)
            kept, embeddings = encode_windows(
                model,
                source,
                plan.windows,
                batch_size=options.batch_size,
                num_workers=options.num_workers,
                min_valid=options.min_valid,
                progress=progress,
                cancel=cancel,
            )
        finally:
            source.close()
    if len(kept) == 0:
        embeddings = np.zeros((0, dim), dtype=np.float32)
    elif not np.isfinite(embeddings).all():
        raise ValueError(f"the model gave non-finite embeddings for {scene.href}")
    windows = plan.windows[kept]
    return ScenePart(
        scene=scene,
        fingerprint=fingerprint,
        crs=source.crs,
        transform=source.transform,
        width=source.width,
        height=source.height,
        gsd=gsd,
        scales_px=pixels,
        plan_count=len(plan),
        window_index=kept.astype(np.int32),
        windows=windows,
        scales=_window_scales(windows, pixels, asked),
        embeddings=embeddings,
    )


def _message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if isinstance(error, DgtrsGeoError) else f"{type(error).__name__}: {text}"


def _failed(scene: Scene, error: BaseException, *, record: bool = True) -> SceneResult:
    return SceneResult(scene, "failed", error=_message(error), record_failure=record)


def embed_scene(
    store: CatalogStore,
    scene: Scene,
    model,
    options: LocalizationOptions,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> SceneResult:
    """Embed one scene unless its part is current; writes nothing (see :func:`write_result`).

    A part is current when its record says ``ok`` with the scene's present fingerprint and the
    part passes its checksum; a part that fails it is embedded again, with a note. When only the
    fingerprint cannot be taken (a server that is down), a part indexed before is kept.
    """
    record = store.record(scene.scene_id)
    if record is not None and record.get("status") != "ok":
        record = None
    try:
        fingerprint = scene_fingerprint(scene)
    except Cancelled:
        raise
    except SCENE_ERRORS as error:
        return _failed(scene, error, record=record is None)
    note = None
    if record is not None and record["fingerprint"] == fingerprint:
        if (note := store.verify(record)) is None:
            return SceneResult(scene, "unchanged", rows=int(record["rows"]))
        note += ": indexed again"
    try:
        part = index_scene(
            scene,
            model,
            options,
            fingerprint,
            int(store.meta["dim"]),
            progress=progress,
            cancel=cancel,
        )
    except Cancelled:
        raise
    except SCENE_ERRORS as error:
        return _failed(scene, error)
    return SceneResult(scene, "indexed", part=part, rows=len(part.windows), note=note)


def write_result(store: CatalogStore, result: SceneResult) -> SceneOutcome:
    """Write what :func:`embed_scene` produced (a part, or a failure record); return the outcome."""
    scene = result.scene
    if result.part is not None:
        store.write_part(result.part)
    elif result.status == "failed" and result.record_failure:
        store.write_failure(scene.scene_id, scene.href, result.error or "failed")
    return SceneOutcome(
        scene.scene_id, scene.href, result.status, result.rows, result.error, result.note
    )
