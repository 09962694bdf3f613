"""The dock's window sizes: entered in pixels or metres, with the layer's ground resolution."""

from __future__ import annotations

from typing import List, Optional, Tuple

from qgis.core import QgsRasterLayer
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from ..sources import parse_scales
from ..tools import tr
from ..window_sizes import (
    FEW_WINDOWS,
    default_sizes,
    format_length,
    format_sizes,
    ground_resolution,
    to_pixels,
    to_unit,
    window_count,
)

UNITS = ["px", "m"]


class WindowSizesWidget(QWidget):
    """Sizes text, a px/m unit, and a line that gives the other unit and the window count.

    Until the user types, the sizes follow the layer (:func:`default_sizes`).
    """

    #: The sizes or unit changed.
    changed = pyqtSignal()

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.layer: Optional[QgsRasterLayer] = None
        self.metres_per_pixel: Optional[float] = None
        self._typed = False
        self._unit_shown = "px"
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.edit = QLineEdit(self)
        self.edit.setToolTip(
            tr("Window sizes: about the size of what you look for, and larger. Smaller windows "
               "give a finer map and take longer.")
        )  # fmt: skip
        self.unit = QComboBox(self)
        self.unit.addItems(UNITS)
        row.addWidget(self.edit, 1)
        row.addWidget(self.unit)
        layout.addLayout(row)
        self.info = QLabel(self)
        self.info.setWordWrap(True)
        layout.addWidget(self.info)
        self.edit.textEdited.connect(self._edited)
        self.unit.currentTextChanged.connect(self._unit_changed)

    def set_layer(self, layer: Optional[QgsRasterLayer]) -> None:
        """Follow a new layer: its ground resolution, and default sizes unless the user typed."""
        self.layer = layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None
        self.metres_per_pixel = ground_resolution(self.layer) if self.layer else None
        if not self._typed and self.layer is not None:
            sizes = default_sizes(self.layer.width(), self.layer.height())
            self.edit.setText(
                format_sizes(to_unit(sizes, self.unit.currentText(), self.metres_per_pixel))
            )
        self._describe()

    def set_sizes(self, text: str, unit: str = "px") -> None:
        """Set the sizes as if typed (they stop following the layer)."""
        self._typed = True
        self._unit_shown = unit
        self.unit.blockSignals(True)
        self.unit.setCurrentText(unit)
        self.unit.blockSignals(False)
        self.edit.setText(text)
        self._describe()

    def sizes(self) -> Tuple[Optional[List[float]], str]:
        """Return ``(sizes, unit)`` as entered (None sizes: the defaults).

        Raises:
            ValueError: if the text is not a list of positive numbers.

        """
        return parse_scales(self.edit.text()), self.unit.currentText()

    def pixels(self) -> Optional[List[int]]:
        """Return the sizes in pixels of the current layer (None if they cannot be read)."""
        try:
            values, unit = self.sizes()
            if values is None and self.layer is not None:
                return default_sizes(self.layer.width(), self.layer.height())
            return to_pixels(values or [], unit, self.metres_per_pixel) or None
        except ValueError:
            return None

    def _edited(self, _text: str) -> None:
        self._typed = True
        self._describe()

    def _unit_changed(self, unit: str) -> None:
        """Convert the typed sizes to the new unit (same windows, other numbers)."""
        pixels = self._pixels_in(self._unit_shown)
        self._unit_shown = unit
        if pixels:
            self.edit.setText(format_sizes(to_unit(pixels, unit, self.metres_per_pixel)))
        self._describe()

    def _pixels_in(self, unit: str) -> Optional[List[int]]:
        try:
            values = parse_scales(self.edit.text())
            return to_pixels(values, unit, self.metres_per_pixel) if values else None
        except ValueError:
            return None

    def _describe(self) -> None:
        """Say the ground resolution, the sizes in the other unit and how many windows they give."""
        self.changed.emit()
        if self.layer is None:
            self.info.setText("")
            return
        pixels = self._pixels_in(self.unit.currentText())
        if not pixels:
            self.info.setText(tr("Type window sizes, e.g. 64, 128"))
            return
        parts = []
        if self.metres_per_pixel:
            parts.append(tr("{} per pixel", format_length(self.metres_per_pixel)))
            if self.unit.currentText() == "px":
                parts.append(" / ".join(format_length(p * self.metres_per_pixel) for p in pixels))
            else:
                parts.append(" / ".join("{} px".format(p) for p in pixels))
        count = window_count(self.layer.width(), self.layer.height(), pixels)
        parts.append(tr("{} windows", count))
        text = " \u00b7 ".join(parts)
        if count < FEW_WINDOWS:
            text += tr(
                " \u2014 few windows: the map will be blocky; smaller sizes give a finer one"
            )
        self.info.setText(text)
