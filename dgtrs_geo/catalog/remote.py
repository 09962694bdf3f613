"""Scenes behind http(s): read with GDAL's ``/vsicurl/`` (range requests, never a whole download).

A remote scene is opened through a one-file VRT that points at its ``/vsicurl?`` path, so every
reader that takes a local raster path (:class:`~dgtrs_geo.localization.raster.RasterSource`,
:func:`~dgtrs_geo.localization.localize`) reads it unchanged. The ``/vsicurl?`` form carries
``list_dir=no``: GDAL then skips listing the remote folder on every open, a request per open that
object stores answer slowly or refuse.

A remote file cannot be hashed without downloading it, so its fingerprint is its URL with the
validators its server gives (``ETag``, ``Last-Modified``, ``Content-Length``): any of them changes
when the file is replaced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import rasterio.shutil
import requests
from rasterio.errors import RasterioError

from ..errors import InputError

__all__ = ["gdal_path", "is_remote", "local_raster", "remote_fingerprint"]

#: Seconds to wait for a server before the scene counts as unreachable.
TIMEOUT_S = 30.0


def is_remote(href: str) -> bool:
    """Whether ``href`` is an http(s) URL."""
    return href.lower().startswith(("http://", "https://"))


def gdal_path(href: str) -> str:
    """Return the path GDAL opens for ``href``: ``/vsicurl?...`` for URLs, else ``href``."""
    if not is_remote(href):
        return href
    return "/vsicurl?" + urlencode({"list_dir": "no", "max_retry": "3", "url": href})


def remote_fingerprint(href: str) -> str:
    """Return a fingerprint of a remote file from its URL and HTTP validators.

    Args:
        href: an http(s) URL.

    Returns:
        ``"http:"`` and 32 hex digits.

    Raises:
        InputError: if the server cannot be reached or answers with an error status.

    """
    try:
        response = requests.head(href, allow_redirects=True, timeout=TIMEOUT_S)
    except requests.RequestException as error:
        raise InputError(f"cannot reach {href}: {error}") from error
    if response.status_code >= 400:
        raise InputError(f"cannot read {href}: the server answered HTTP {response.status_code}")
    validators = {
        key: response.headers.get(key) for key in ("ETag", "Last-Modified", "Content-Length")
    }
    payload = json.dumps({"url": href, **validators}, sort_keys=True)
    return "http:" + hashlib.sha256(payload.encode()).hexdigest()[:32]


@contextmanager
def local_raster(href: str) -> Iterator[Path]:
    """Yield a local path that GDAL reads as ``href``: the file itself, or a VRT for a URL.

    Raises:
        InputError: if a remote raster cannot be opened.

    """
    if not is_remote(href):
        yield Path(href)
        return
    folder = Path(tempfile.mkdtemp(prefix="dgtrs-remote-"))
    try:
        vrt = folder / f"{Path(href.split('?')[0]).stem or 'remote'}.vrt"
        try:
            rasterio.shutil.copy(gdal_path(href), vrt, driver="VRT")
        except RasterioError as error:
            raise InputError(f"cannot read {href}: {error}") from error
        yield vrt
    finally:
        shutil.rmtree(folder, ignore_errors=True)
