"""DGTRS-Geo QGIS plugin: find things in raster layers by describing them in words.

QGIS calls :func:`classFactory`; nothing else is imported until then, so the packaging script
can import this package without QGIS.
"""


def classFactory(iface):  # noqa: ANN001, ANN201, N802
    """Return the plugin instance (QGIS's plugin entry point)."""
    from .plugin import DgtrsGeoPlugin

    return DgtrsGeoPlugin(iface)
