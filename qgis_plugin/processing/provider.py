"""The plugin's Processing provider."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..tools import tr
from .algorithms import algorithms

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icon.svg")


class DgtrsGeoProvider(QgsProcessingProvider):
    """Algorithms "Build embedding index", "Localize text query", "Build catalog", "Search catalog"."""

    def id(self) -> str:  # noqa: D102
        return "dgtrsgeo"

    def name(self) -> str:  # noqa: D102
        return tr("DGTRS-Geo")

    def longName(self) -> str:  # noqa: D102, N802
        return tr("DGTRS-Geo: find things in imagery by describing them")

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:  # noqa: D102, N802
        for algorithm in algorithms():
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self) -> list:  # noqa: D102, N802
        # The worker writes GeoTIFF; other formats would need a conversion step.
        return ["tif"]
