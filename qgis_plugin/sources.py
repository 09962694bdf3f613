"""Which raster layers the engine can read, and the request fields they turn into.

The engine reads rasters with GDAL from a file path in its own process. Layers that are not
local files (WMS/WMTS/XYZ, WCS, memory, virtual providers) are refused with a message that says
how to make them one: export the area with "Save As..." to a GeoTIFF. Reading such layers at
some resolution into a temporary file would silently choose the ground resolution the model sees,
and that choice decides what can be found, so it stays with the user.
"""

from __future__ import annotations

import os
from typing import List, Optional

from qgis.core import QgsRasterLayer, QgsRectangle

from .backend.protocol import Run
from .window_sizes import default_sizes


class UnsupportedLayer(ValueError):
    """A layer the engine cannot read directly."""


def local_raster_path(layer: QgsRasterLayer) -> str:
    """Return the file behind a GDAL raster layer.

    Raises:
        UnsupportedLayer: for layers that are not local files, naming the fix.

    """
    if layer is None or not layer.isValid():
        raise UnsupportedLayer("choose a valid raster layer")
    if layer.providerType() == "gdal":
        # GDAL sources may carry options after a pipe ("file.tif|option:..."); the path comes first.
        path = layer.source().split("|")[0]
        if os.path.isfile(path):
            return path
    raise UnsupportedLayer(
        "layer '{}' is not a local raster file (provider '{}'). Export it first: right-click the "
        "layer > Export > Save As... > GeoTIFF, choosing the extent and resolution to search, then "
        "run on the exported layer.".format(layer.name(), layer.providerType())
    )


def extent_list(extent: Optional[QgsRectangle]) -> Optional[List[float]]:
    """Return ``[xmin, ymin, xmax, ymax]`` of a non-empty extent, else None."""
    if extent is None or extent.isNull() or extent.isEmpty():
        return None
    return [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]


def parse_scales(text: str) -> Optional[List[float]]:
    """Parse window sizes ("256, 512, 768"); empty text means the default sizes.

    Raises:
        ValueError: if a value is not a positive number.

    """
    parts = [part for part in text.replace(";", ",").replace(" ", ",").split(",") if part]
    if not parts:
        return None
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError("window sizes are numbers, got {!r}".format(part)) from None
        if value <= 0:
            raise ValueError("window sizes must be positive, got {}".format(value))
        values.append(value)
    return values


def run_request(
    layer: QgsRasterLayer,
    model: str,
    device: str,
    bands: Optional[List[int]] = None,
    scales: Optional[List[float]] = None,
    scale_unit: str = "px",
    extent: Optional[QgsRectangle] = None,
    index_dir: str = "",
) -> Run:
    """Return the worker request shared by ``index`` and ``localize`` (no queries yet).

    ``scales`` default to sizes fit to the layer (:func:`~qgis_plugin.window_sizes.default_sizes`);
    ``extent`` must already be in the layer's CRS.
    """
    path = local_raster_path(layer)
    if not scales:
        scales, scale_unit = [float(s) for s in default_sizes(layer.width(), layer.height())], "px"
    return Run(
        raster=path,
        model=model,
        options={
            "device": device,
            "bands": list(bands) if bands else None,
            "scales": list(scales),
            "scale_unit": scale_unit,
            "aoi": extent_list(extent),
            "index_dir": index_dir or None,
        },
    )
