"""The dock's history of runs: click to show a run again, Clear results, kept with the project."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from qgis.core import QgsCoordinateTransform, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import history, settings
from ..layers import add_result_group, find_group, group_name, remove_results
from ..tools import tr

#: ``status(text, error)``: how the panel reports (the dock's status line).
StatusCallback = Callable[[str, bool], None]


class HistoryPanel(QWidget):
    """The runs of this project, newest first, and the *Clear results* button.

    Args:
        iface: the QGIS interface (canvas and active layer when a run is shown).
        status: reports to the user.
        parent: the parent widget.

    """

    def __init__(self, iface, status: StatusCallback, parent: Optional[QWidget] = None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.iface = iface
        self.status = status
        self.records: List[Dict[str, Any]] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel(tr("History (click to show again)"), self), 1)
        self.clear_button = QPushButton(tr("Clear results\u2026"), self)
        self.clear_button.setToolTip(tr("Remove the result layers, and their files if you wish"))
        row.addWidget(self.clear_button)
        layout.addLayout(row)
        self.list = QListWidget(self)
        layout.addWidget(self.list, 1)
        self.clear_button.clicked.connect(self._ask_clear_results)
        self.list.itemClicked.connect(self.show_item)

    def add(self, record: Dict[str, Any]) -> None:
        """Put a finished run at the top and store the history in the project."""
        self.records.insert(0, record)
        history.save(self.records)
        self.list.insertItem(0, self._item(record))

    def load(self) -> None:
        """Show the history stored in the current project (none after a new project)."""
        self.records = history.load()
        self.list.clear()
        for record in self.records:
            self.list.addItem(self._item(record))

    def record(self, run_id: str) -> Optional[Dict[str, Any]]:
        """Return the record of run ``run_id``."""
        return next((r for r in self.records if r["id"] == run_id), None)

    @staticmethod
    def _item(record: Dict[str, Any]) -> QListWidgetItem:
        item = QListWidgetItem(
            "{}  ({:.1f} s)".format(group_name(record), float(record.get("seconds") or 0.0))
        )
        item.setData(Qt.ItemDataRole.UserRole, record["id"])
        item.setToolTip(
            "{}\n{}\n{}".format(record.get("layer", ""), record.get("heatmap", ""), record["time"])
        )
        return item

    def show_item(self, item: QListWidgetItem) -> None:
        """Show that run's group (re-adding its layers from their files if they were removed)."""
        record = self.record(item.data(Qt.ItemDataRole.UserRole))
        if record is None:
            return
        group = find_group(record["id"])
        if group is None or not group.findLayers():
            if group is not None:
                group.parent().removeChildNode(group)
            if not record.get("heatmap") or not os.path.isfile(record["heatmap"]):
                self.status(
                    tr("The result files of this query are gone: {}", record.get("heatmap")), True
                )
                return
            group = add_result_group(record)
        group.setItemVisibilityCheckedRecursive(True)
        layers = [node.layer() for node in group.findLayers() if node.layer() is not None]
        if layers:
            self.iface.setActiveLayer(layers[-1])
            canvas = self.iface.mapCanvas()
            transform = QgsCoordinateTransform(
                layers[-1].crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance()
            )
            canvas.setExtent(transform.transformBoundingBox(layers[-1].extent()))
            canvas.refresh()

    def _ask_clear_results(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle(tr("Clear results"))
        box.setText(tr("Remove all DGTRS-Geo result layers from the project?"))
        remove = box.addButton(tr("Remove layers"), QMessageBox.ButtonRole.AcceptRole)
        delete = box.addButton(
            tr("Remove layers and delete files"), QMessageBox.ButtonRole.DestructiveRole
        )
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() in (remove, delete):
            self.clear_results(delete_files=box.clickedButton() is delete)

    def clear_results(self, delete_files: bool = False) -> int:
        """Remove every result layer; with ``delete_files`` also the dock's result files.

        Deleted runs leave the history (their files are gone); kept ones stay in it.

        Returns:
            The number of layers removed.

        """
        removed = remove_results()
        if delete_files:
            for record in self.records:
                history.delete_files(record, settings.results_dir())
            self.records = []
            self.list.clear()
            history.save(self.records)
        self.status(
            tr(
                "Removed {} result layers{}.",
                len(removed),
                tr(" and their files") if delete_files else "",
            ),
            False,
        )
        return len(removed)
