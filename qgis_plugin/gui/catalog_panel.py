"""The dock's *Catalog* tab: search a catalog folder in words, then localize a result's scene.

A search adds one ranked layer (the best windows across the collection, coloured by score) and
lists its rows; double-clicking a row, or *Localize here*, loads that row's scene and maps the
query on it from the catalog's stored embeddings (nothing is encoded again).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from qgis.core import QgsRectangle
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import history, settings
from ..backend.protocol import result_path
from ..catalog import load_results, scene_layer, search_params
from ..layers import add_result_group, short
from ..tools import tr

#: Table columns: header and the row key shown.
COLUMNS = [("Rank", "rank"), ("Score", "score"), ("Scene", "scene"), ("Date", "date"),
           ("Query", "query")]  # fmt: skip
EXTENT_ALL, EXTENT_CANVAS = 0, 1


class CatalogPanel(QWidget):
    """The *Catalog* tab.

    Args:
        dock: the dock (its task submission, status line, device, threshold and history).

    """

    def __init__(self, dock, parent: Optional[QWidget] = None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.dock = dock
        #: The rows of the last search, in the table's order.
        self.rows: List[Dict[str, Any]] = []
        #: The last search's result (``gpkg``, ``rows`` ...) and its layer.
        self.result: Optional[Dict[str, Any]] = None
        self.layer = None
        self.task = None
        #: Seconds the last search or localization took, the backend's start included.
        self.seconds = 0.0
        self._build()
        self.search_button.clicked.connect(self.search)
        self.localize_button.clicked.connect(self.localize_selected)
        self.cancel_button.clicked.connect(self.cancel)
        self.table.itemDoubleClicked.connect(lambda item: self.localize_row(item.row()))
        self._set_running(False)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.catalog_widget = QgsFileWidget(self)
        self.catalog_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.catalog_widget.setDialogTitle(tr("Catalog folder (NAME.dgtrs-catalog)"))
        form.addRow(tr("Catalog"), self.catalog_widget)
        self.query = QPlainTextEdit(self)
        self.query.setPlaceholderText(tr("Describe what to find across the collection"))
        self.query.setMaximumHeight(70)
        form.addRow(tr("Query"), self.query)
        self.top = QSpinBox(self)
        self.top.setRange(1, 1000)
        self.top.setValue(20)
        form.addRow(tr("Results"), self.top)
        self.extent_combo = QComboBox(self)
        self.extent_combo.addItems([tr("Whole catalog"), tr("Current map view")])
        form.addRow(tr("Search in"), self.extent_combo)
        self.date = QLineEdit(self)
        self.date.setPlaceholderText(tr("e.g. 2021-01-01/2021-12-31 (optional)"))
        form.addRow(tr("Dates"), self.date)
        self.model = QLineEdit(self)
        self.model.setPlaceholderText(tr("the catalog's own (optional)"))
        form.addRow(tr("Model"), self.model)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        self.search_button = QPushButton(tr("Search"), self)
        self.localize_button = QPushButton(tr("Localize here"), self)
        self.localize_button.setToolTip(
            tr("Load the selected result's scene and map the query on it")
        )
        self.cancel_button = QPushButton(tr("Cancel"), self)
        for button in (self.search_button, self.localize_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels([tr(name) for name, _ in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table, 1)

    def _set_running(self, running: bool) -> None:
        self.search_button.setEnabled(not running)
        self.localize_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def cancel(self) -> None:
        """Cancel the running search or localization."""
        if self.task is not None:
            self.dock.set_status(tr("Cancelling\u2026"))
            self.task.cancel()

    # --- search ---------------------------------------------------------------------------------

    def _bbox(self) -> Optional[Dict[str, Any]]:
        if self.extent_combo.currentIndex() != EXTENT_CANVAS:
            return None
        canvas = self.dock.iface.mapCanvas()
        extent: QgsRectangle = canvas.extent()
        crs = canvas.mapSettings().destinationCrs()
        box = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
        return {"bbox": box, "bbox_crs": crs.authid() or crs.toWkt()}

    def search(self):  # noqa: ANN201
        """Search the catalog for the query; return the task (None if the input is incomplete)."""
        catalog = self.catalog_widget.filePath().strip()
        query = " ".join(self.query.toPlainText().split())
        if not catalog or not os.path.isdir(catalog):
            self.dock.set_status(tr("Choose a catalog folder (NAME.dgtrs-catalog)."), True)
            return None
        if not query:
            self.dock.set_status(tr("Type a query first: a sentence describing what to find."),
                                 True)  # fmt: skip
            return None
        record = history.new_record(query, catalog=catalog)
        box = self._bbox() or {}
        params = search_params(
            catalog,
            [query],
            top=self.top.value(),
            out_dir=os.path.join(settings.results_dir(), record["id"]),
            device=self.dock.device_combo.currentText(),
            model=self.model.text(),
            bbox=box.get("bbox"),
            bbox_crs=box.get("bbox_crs", "EPSG:4326"),
            date=self.date.text(),
        )
        self.dock.set_status(tr("Searching the catalog for '{}'\u2026", short(query, 60)))
        return self._start(
            tr("Catalog search '{}'", short(query, 40)),
            "catalog_search",
            params,
            lambda result, error: self._searched(record, result, error),
        )

    def _start(self, description: str, op: str, params: Dict[str, Any], on_done):  # noqa: ANN001, ANN202
        clicked = time.monotonic()

        def done(result, error) -> None:  # noqa: ANN001
            self.task = None
            self._set_running(False)
            self.dock.progress.setRange(0, 100)
            if error is not None:
                self.dock.progress.setValue(0)
                self.dock._report(error)
                return
            self.seconds = time.monotonic() - clicked
            on_done(result, None)

        self._set_running(True)
        self.dock.progress.setValue(0)
        self.task = self.dock._submit(description, op, params, done)
        return self.task

    def _searched(self, record: Dict[str, Any], result: Dict[str, Any], _error) -> None:  # noqa: ANN001
        self.result = result
        self.rows = list(result["rows"])
        try:
            self.layer = load_results(result["gpkg"], [record["query"]], record["id"],
                                      result.get("layer", "results"))  # fmt: skip
        except ValueError as error:
            self.dock._report(error)
            return
        self._fill_table()
        self.dock.progress.setValue(100)
        best = self.rows[0]["score"] if self.rows else None
        text = tr("{} result(s) in {} scene(s)", len(self.rows),
                  len({row["scene"] for row in self.rows}))  # fmt: skip
        if best is not None:
            text += tr(", best cosine {:.3f}", best)
        self.dock.set_status(text + tr(" ({:.1f} s)", self.seconds))

    def _fill_table(self) -> None:
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            for j, (_name, key) in enumerate(COLUMNS):
                value = row.get(key)
                if key == "score":
                    text = "{:.4f}".format(value)
                elif key == "date":
                    text = (value or "")[:10]
                else:
                    text = "" if value is None else str(value)
                item = QTableWidgetItem(text)
                if key == "scene":
                    item.setToolTip(str(row.get("href", "")))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()

    # --- localize -------------------------------------------------------------------------------

    def localize_selected(self):  # noqa: ANN201
        """Localize the selected result's scene (the first row when none is selected)."""
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.localize_row(rows[0].row() if rows else 0)

    def localize_row(self, index: int):  # noqa: ANN201
        """Load row ``index``'s scene and map its query on it; return the task (None if no row)."""
        if not 0 <= index < len(self.rows) or self.result is None:
            self.dock.set_status(tr("Search the catalog first, then pick a result."), True)
            return None
        row = self.rows[index]
        record = history.new_record(
            row["query"],
            layer=row["scene"],
            raster=row["href"],
            catalog=self.result["catalog"],
            scene=row["scene"],
            scale_unit="px",
            threshold=self.dock.threshold.value(),
        )
        record["out_dir"] = os.path.join(settings.results_dir(), record["id"])
        params: Dict[str, Any] = {
            "catalog": self.result["catalog"],
            "scene": row["scene"],
            "queries": [row["query"]],
            "out_dir": record["out_dir"],
            "options": {"threshold": self.dock.threshold.value(),
                        "device": self.dock.device_combo.currentText()},
        }  # fmt: skip
        if self.model.text().strip():
            params["model"] = self.model.text().strip()
        self.dock.set_status(tr("Mapping '{}' on {}\u2026", short(row["query"], 40), row["scene"]))
        return self._start(
            tr("Localize '{}' on {}", short(row["query"], 30), row["scene"]),
            "catalog_localize",
            params,
            lambda result, error: self._localized(record, row, result),
        )

    def _localized(
        self, record: Dict[str, Any], row: Dict[str, Any], result: Dict[str, Any]
    ) -> None:
        found = result["results"][0]
        record.update(
            heatmap=result_path(found, "heatmap"),
            polygons=result_path(found, "polygons"),
            score_max=found.get("score_max"),
            score_min=found.get("score_min"),
            normalise=found.get("normalise", "minmax"),
            scales=result.get("scales") or [],
            model=result.get("model_id", ""),
        )
        try:
            scene = scene_layer(row["href"], row["scene"])
            add_result_group(record)
        except ValueError as error:
            self.dock._report(error)
            return
        self.dock.history_panel.add(record)
        self.dock.iface.setActiveLayer(scene)
        self.dock.progress.setValue(100)
        extent = scene.extent()
        canvas = self.dock.iface.mapCanvas()
        if canvas is not None and scene.crs() == canvas.mapSettings().destinationCrs():
            canvas.setExtent(extent)
        self.dock.set_status(
            tr("Mapped on {}: best window cosine {:.3f}", row["scene"], record["score_max"] or 0.0)
        )

    def set_catalog(self, path: str) -> None:
        """Choose the catalog folder."""
        self.catalog_widget.setFilePath(path)
