"""What a catalog is built from: raster files, globs, folders, VRT mosaics and STAC, as scenes.

Each source expands to scenes:

- a raster file (anything GDAL opens; a VRT mosaic is one scene) or an http(s) URL of one;
- a glob (``tiles/**/*.tif``) or a folder, searched recursively for ``.tif``, ``.tiff``, ``.vrt``,
  ``.jp2`` and ``.img`` files (hidden files and folders, such as index caches, left out);
- a STAC JSON file or URL, read with ``pystac``: a static catalog or collection (every item below
  it), an ItemCollection (a GeoJSON FeatureCollection of items) or a single item. Each item gives
  the asset chosen by key (``visual`` unless told otherwise); relative asset hrefs are resolved
  against the JSON's location.

Every scene gets a deterministic id from its canonical href (the resolved local path or the URL),
so the same file reached twice (a folder and a STAC item) is one scene, and reruns find it again.
A scene's date comes from its STAC item (``datetime``, else ``start_datetime``) or, for files,
from a regular expression on the file name (``date_from``).
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pystac
from pystac.stac_io import StacIO

from ..errors import InputError
from .remote import gdal_path, is_remote

__all__ = ["RASTER_SUFFIXES", "Scene", "SceneFailure", "parse_date", "resolve_sources", "scene_id"]

#: File suffixes a folder is searched for.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")

#: Default STAC asset key.
DEFAULT_ASSET = "visual"


@dataclass(frozen=True)
class Scene:
    """One raster of a catalog.

    Attributes:
        scene_id: deterministic id (file stem and a hash of the canonical href).
        href: resolved local path or http(s) URL.
        date: acquisition time (UTC), or ``None`` when unknown.
        item_id: the STAC item's id, for scenes from STAC.

    """

    scene_id: str
    href: str
    date: dt.datetime | None = None
    item_id: str | None = None

    @property
    def gdal_path(self) -> str:
        """What GDAL opens for this scene (``/vsicurl?...`` for URLs)."""
        return gdal_path(self.href)


@dataclass(frozen=True)
class SceneFailure:
    """A source or scene that could not be indexed, and why.

    Attributes:
        source: the href, path or STAC item that failed.
        error: one line saying what went wrong and what to do.
        scene_id: the scene's id when it got that far.

    """

    source: str
    error: str
    scene_id: str | None = None


def scene_id(href: str) -> str:
    """Return the deterministic id of the scene at canonical ``href``."""
    stem = Path(href.split("?")[0]).stem
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:40] or "scene"
    return f"{slug}-{hashlib.sha256(href.encode()).hexdigest()[:12]}"


def _canonical(href: str) -> str:
    return href if is_remote(href) else str(Path(href).resolve())


def parse_date(text: str, source: str = "") -> dt.datetime:
    """Parse an ISO 8601 date or time (``2024-03-01``, ``20240301``, ``2024-03-01T10:00Z``) as UTC.

    Raises:
        InputError: if ``text`` is not a date.

    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        where = f" (from {source})" if source else ""
        raise InputError(
            f"{text!r}{where} is not an ISO 8601 date such as 2024-03-01 or 20240301"
        ) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _date_from_name(href: str, pattern: re.Pattern[str] | None) -> dt.datetime | None:
    if pattern is None:
        return None
    match = pattern.search(Path(href.split("?")[0]).name)
    if match is None:
        return None
    groups = match.groupdict()
    text = groups.get("date") or (match.group(1) if pattern.groups else match.group(0))
    return parse_date(text, href)


def _files(source: str) -> list[str]:
    if glob.has_magic(source):
        return sorted(glob.glob(source, recursive=True))
    path = Path(source)
    if path.is_dir():
        return sorted(
            str(p)
            for p in path.rglob("*")
            if p.suffix.lower() in RASTER_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    return [source]


def _item_date(item: pystac.Item) -> dt.datetime | None:
    value = item.datetime or item.common_metadata.start_datetime
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _stac_items(href: str) -> Iterable[tuple[pystac.Item, str]]:
    """Yield every item under a STAC JSON with the href its relative assets resolve against."""
    data = StacIO.default().read_json(href)
    match data.get("type"):
        case "FeatureCollection":
            for feature in data.get("features", []):
                yield pystac.Item.from_dict(feature), href
        case "Feature":
            yield pystac.Item.from_dict(data), href
        case "Catalog" | "Collection":
            root = pystac.read_file(href)
            for item in root.get_items(recursive=True):  # type: ignore[attr-defined]
                yield item, item.get_self_href() or href
        case other:
            raise InputError(
                f"{href} is not a STAC catalog, collection, item or ItemCollection "
                f"(its type is {other!r})"
            )


def _asset_href(item: pystac.Item, base: str, asset: str) -> str:
    if asset not in item.assets:
        raise InputError(
            f"STAC item {item.id!r} has no asset {asset!r} (it has: "
            f"{', '.join(sorted(item.assets)) or 'none'}): choose one with --asset"
        )
    href = item.assets[asset].href
    if is_remote(href) or Path(href).is_absolute():
        return href
    return urljoin(base, href) if is_remote(base) else str(Path(base).parent / href)


def _from_stac(
    href: str, asset: str, pattern: re.Pattern[str] | None
) -> tuple[list[Scene], list[SceneFailure]]:
    scenes, failures = [], []
    for item, base in _stac_items(href):
        try:
            raster = _canonical(_asset_href(item, base, asset))
        except InputError as error:
            failures.append(SceneFailure(f"{href}#{item.id}", str(error)))
            continue
        date = _item_date(item) or _date_from_name(raster, pattern)
        scenes.append(Scene(scene_id(raster), raster, date, item.id))
    return scenes, failures


def _expand(
    source: str, asset: str, pattern: re.Pattern[str] | None
) -> tuple[list[Scene], list[SceneFailure]]:
    if source.lower().split("?")[0].endswith(".json"):
        return _from_stac(
            source if is_remote(source) else str(Path(source).resolve()), asset, pattern
        )
    if is_remote(source):
        return [Scene(scene_id(source), source, _date_from_name(source, pattern))], []
    files = _files(source)
    if not files or not Path(files[0]).exists():
        if Path(source).is_dir():
            what = f"no raster file ({', '.join(RASTER_SUFFIXES)}) in this folder"
        else:
            what = "no file matches" if glob.has_magic(source) else "no such file or folder"
        return [], [SceneFailure(source, f"{source}: {what}")]
    scenes, failures = [], []
    for name in files:
        if name.lower().endswith(".json"):
            more, bad = _from_stac(str(Path(name).resolve()), asset, pattern)
            scenes += more
            failures += bad
            continue
        href = _canonical(name)
        try:
            scenes.append(Scene(scene_id(href), href, _date_from_name(href, pattern)))
        except InputError as error:
            failures.append(SceneFailure(href, str(error), scene_id(href)))
    return scenes, failures


def resolve_sources(
    sources: Sequence[str | Path],
    *,
    asset: str = DEFAULT_ASSET,
    date_from: str | None = None,
) -> tuple[list[Scene], list[SceneFailure]]:
    r"""Expand sources into scenes, each once, sorted by scene id.

    Args:
        sources: raster files or URLs, globs, folders, STAC JSON files or URLs.
        asset: the STAC asset key to index.
        date_from: a regular expression searched in file names; its group ``date`` (or its first
            group, or the whole match) is the scene's ISO 8601 date, e.g. ``_(\d{8})_``.

    Returns:
        ``(scenes, failures)``: failures are sources that name nothing, STAC items without the
        asset, and STAC files that cannot be read; the other sources still give their scenes.

    Raises:
        InputError: if ``sources`` is empty or ``date_from`` is not a regular expression.

    """
    if not sources:
        raise InputError("give at least one source: raster files, globs, folders or STAC JSON")
    try:
        pattern = re.compile(date_from) if date_from else None
    except re.error as error:
        raise InputError(
            f"--date-from {date_from!r} is not a regular expression: {error}"
        ) from None
    found: dict[str, Scene] = {}
    failures: list[SceneFailure] = []
    for source in sources:
        try:
            scenes, bad = _expand(str(source), asset, pattern)
        except (OSError, ValueError) as error:
            # pystac raises these for unreachable or malformed JSON; InputError is a ValueError.
            scenes, bad = [], [SceneFailure(str(source), f"cannot read {source}: {error}")]
        failures += bad
        for scene in scenes:
            found.setdefault(scene.scene_id, scene)
    if pattern is not None and (undated := [s for s in found.values() if s.date is None]):
        warnings.warn(
            f"--date-from {date_from!r} matched no date in {len(undated)} scene(s), e.g. "
            f"{undated[0].href}: they have no date and date filters leave them out",
            stacklevel=2,
        )
    return [found[key] for key in sorted(found)], failures
