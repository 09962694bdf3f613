"""The dock panel: pick a raster, describe what to find, get a heatmap and polygons back."""

from __future__ import annotations

import datetime
import os
import re
import threading
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..backend import manager
from ..backend.client import BackendUnavailable, WorkerCancelled, WorkerCrashed
from ..layers import add_result_group, group_name
from ..sources import UnsupportedLayer, parse_scales, request_params
from ..tasks import WorkerTask
from ..tools import MessageBarLogger, plugin_name, tr

#: Delay after the last keystroke before the token count is refreshed.
TOKEN_COUNT_DELAY_MS = 300
EXTENT_LAYER, EXTENT_CANVAS = 0, 1


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "query"


class DgtrsGeoDock(QDockWidget):
    """The plugin's dock.

    Args:
        iface: the QGIS interface (canvas for the map-view extent, message bar for reports).

    """

    #: ``(count, context_length, text)`` from a background token count.
    tokensCounted = pyqtSignal(int, int, str)  # noqa: N815

    def __init__(self, iface, parent: Optional[QWidget] = None) -> None:  # noqa: ANN001
        super().__init__(tr("DGTRS-Geo: find in imagery"), parent)
        self.setObjectName("DgtrsGeoDock")
        self.iface = iface
        self.bar = MessageBarLogger(plugin_name())
        self.task: Optional[WorkerTask] = None
        self.history: List[Dict[str, Any]] = []
        self._tasks: List[WorkerTask] = []
        # Set on plugin unload: tasks still finishing must not touch the deleted widgets.
        self._closed = False
        self._build()
        self._token_timer = QTimer(self)
        self._token_timer.setSingleShot(True)
        self._token_timer.setInterval(TOKEN_COUNT_DELAY_MS)
        self._token_timer.timeout.connect(self.refresh_token_count)
        self.query.textChanged.connect(self._token_timer.start)
        self.tokensCounted.connect(self._show_token_count)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.history_list.itemClicked.connect(self.show_history_item)
        self.browse_button.clicked.connect(self._browse_checkpoint)
        self.settings_button.clicked.connect(self._open_settings)
        self.visibilityChanged.connect(self._warm_up)
        self._set_running(False)

    # --- widgets --------------------------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget(self)
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow(tr("Raster"), self.layer_combo)
        self.query = QPlainTextEdit(body)
        self.query.setPlaceholderText(
            tr("Describe what to find, e.g. 'a red roof next to a swimming pool'")
        )
        self.query.setMaximumHeight(90)
        form.addRow(tr("Query"), self.query)
        self.token_label = QLabel(tr("0 / 248 tokens"), body)
        self.token_label.setAlignment(Qt.AlignmentFlag.AlignRight)
        form.addRow("", self.token_label)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox(body)
        self.model_combo.setEditable(True)
        self.model_combo.addItems(settings.MODELS)
        self.model_combo.setCurrentText(settings.model())
        self.browse_button = QToolButton(body)
        self.browse_button.setText("\u2026")
        self.browse_button.setToolTip(tr("Use a checkpoint file"))
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        form.addRow(tr("Model"), model_row)
        self.device_combo = QComboBox(body)
        self.device_combo.addItems(settings.DEVICES)
        self.device_combo.setCurrentText(settings.device())
        form.addRow(tr("Device"), self.device_combo)
        self.extent_combo = QComboBox(body)
        self.extent_combo.addItems([tr("Whole layer"), tr("Current map view")])
        form.addRow(tr("Search in"), self.extent_combo)
        self.scales = QLineEdit(body)
        self.scales.setPlaceholderText("256, 512, 768")
        self.scales.setToolTip(
            tr("Window sizes in pixels: about the size of what you look for, and larger")
        )
        form.addRow(tr("Window sizes (px)"), self.scales)
        self.threshold = QDoubleSpinBox(body)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip(tr("Polygons enclose scores above this share of the score range"))
        form.addRow(tr("Polygon threshold"), self.threshold)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        self.run_button = QPushButton(tr("Find"), body)
        self.cancel_button = QPushButton(tr("Cancel"), body)
        self.settings_button = QPushButton(tr("Backend\u2026"), body)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.settings_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar(body)
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.status = QLabel("", body)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addWidget(QLabel(tr("History (click to show again)"), body))
        self.history_list = QListWidget(body)
        layout.addWidget(self.history_list, 1)
        self.setWidget(body)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            tr("Model checkpoint"),
            "",
            tr("Checkpoints (*.pt *.pth *.ckpt *.bin);;All files (*)"),
        )
        if path:
            self.model_combo.setCurrentText(path)

    def _open_settings(self) -> None:
        from .settings_dialog import BackendSettingsDialog

        BackendSettingsDialog(self).exec()

    # --- token count ----------------------------------------------------------------------------

    def refresh_token_count(self) -> None:
        """Count the query's tokens in the worker, off the GUI thread; only if it is running."""
        text = self.query.toPlainText()
        model = self.model_combo.currentText()
        client = manager.current_client()
        if client is None or not client.alive:
            self.token_label.setText(tr("? / 248 tokens (backend not started)"))
            return

        def count() -> None:
            # Runs on its own thread: it reads no widget, and reports through a signal.
            try:
                reply = client.request("count_tokens", {"text": text, "model": model})
            except Exception:  # noqa: BLE001 - the label just stays stale; runs report errors
                return
            self.tokensCounted.emit(int(reply["count"]), int(reply["context_length"]), text)

        threading.Thread(target=count, daemon=True).start()

    def _show_token_count(self, count: int, context_length: int, text: str) -> None:
        if text != self.query.toPlainText():
            return
        label = tr("{} / {} tokens", count, context_length)
        if count > context_length:
            label += tr(" (cut to {})", context_length)
            self.token_label.setStyleSheet("color: #c0392b;")
        else:
            self.token_label.setStyleSheet("")
        self.token_label.setText(label)

    # --- runs -----------------------------------------------------------------------------------

    def start_backend(self) -> WorkerTask:
        """Start (or restart) the worker in a task, so the first query does not pay for it."""
        return self._submit(tr("Starting the DGTRS-Geo backend"), "ping", {}, self._backend_started)

    def _warm_up(self, visible: bool) -> None:
        """Start the worker when the dock is first shown: the first query need not wait for it."""
        client = manager.current_client()
        if visible and (client is None or not client.alive) and not self._tasks:
            self.start_backend()

    def _backend_started(
        self, result: Optional[Dict[str, Any]], error: Optional[Exception]
    ) -> None:
        if error is not None:
            self._report(error)
            return
        self.status.setText(tr("Backend ready (pid {})", result.get("pid")))
        self.refresh_token_count()

    def _search_extent(self, layer: QgsRasterLayer) -> Optional[QgsRectangle]:
        if self.extent_combo.currentIndex() != EXTENT_CANVAS:
            return None
        canvas = self.iface.mapCanvas()
        transform = QgsCoordinateTransform(
            canvas.mapSettings().destinationCrs(), layer.crs(), QgsProject.instance()
        )
        return transform.transformBoundingBox(canvas.extent())

    def run(self) -> Optional[WorkerTask]:
        """Start a localization of the query on the chosen layer; return the task (None if invalid)."""
        layer = self.layer_combo.currentLayer()
        query = " ".join(self.query.toPlainText().split())
        if not query:
            self.status.setText(tr("Type a query first: a sentence describing what to find."))
            return None
        model = self.model_combo.currentText().strip()
        settings.set_model(model)
        settings.set_device(self.device_combo.currentText())
        try:
            if not isinstance(layer, QgsRasterLayer):
                raise UnsupportedLayer(tr("Choose a raster layer."))
            params = request_params(
                layer,
                model=model,
                device=self.device_combo.currentText(),
                scales=parse_scales(self.scales.text()),
                extent=self._search_extent(layer),
            )
        except ValueError as error:
            self.status.setText(str(error))
            self.bar.warning(tr("Cannot search this layer"), str(error))
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        params.update(
            queries=[query],
            threshold=self.threshold.value(),
            output_dir=os.path.join(settings.results_dir(), "{}-{}".format(stamp, _slug(query))),
        )
        self.progress.setValue(0)
        self.status.setText(tr("Searching for '{}'\u2026", query))
        self._set_running(True)
        entry = {"query": query, "layer": layer.name(), "crs": layer.crs().authid()}
        return self._submit(
            tr("Localize '{}'", group_name(query, 40)),
            "localize",
            params,
            lambda result, error: self._localized(entry, result, error),
        )

    def _submit(self, description: str, op: str, params: Dict[str, Any], on_done) -> WorkerTask:  # noqa: ANN001
        def done(result, error) -> None:  # noqa: ANN001
            self._tasks.remove(task)
            if not self._closed:
                on_done(result, error)

        task = WorkerTask(description, op, params, done)
        # Python task objects must stay referenced until they finish, or they never run.
        self._tasks.append(task)
        task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        task.message.connect(self.status.setText)
        if op == "localize":
            self.task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel(self) -> None:
        """Cancel the running search (the worker stops within a second, or is restarted)."""
        if self.task is not None:
            self.status.setText(tr("Cancelling\u2026"))
            self.task.cancel()

    def _localized(
        self, entry: Dict[str, Any], result: Optional[Dict[str, Any]], error: Optional[Exception]
    ) -> None:
        self.task = None
        self._set_running(False)
        if error is not None:
            self.progress.setValue(0)
            self._report(error)
            return
        self.progress.setValue(100)
        found = result["results"][0]
        entry.update(
            heatmap=found["heatmap"], polygons=found.get("polygons"), score_max=found["score_max"]
        )
        try:
            add_result_group(entry["query"], entry["heatmap"], entry["polygons"])
        except ValueError as load_error:
            self._report(load_error)
            return
        self.history.insert(0, entry)
        item = QListWidgetItem(
            "{}  ({:.3f}, {:.1f} s)".format(
                entry["query"], found["score_max"], result.get("seconds", 0.0)
            )
        )
        item.setData(Qt.ItemDataRole.UserRole, entry)
        item.setToolTip("{}\n{}".format(entry["layer"], entry["heatmap"]))
        self.history_list.insertItem(0, item)
        self.refresh_token_count()
        self.status.setText(
            tr(
                "Done in {:.1f} s: best score {:.3f}",
                result.get("seconds", 0.0),
                found["score_max"],
            )
        )

    def _report(self, error: Exception) -> None:
        """Tell the user what went wrong, and restart a crashed worker."""
        if isinstance(error, WorkerCancelled):
            self.status.setText(tr("Cancelled."))
            return
        self.status.setText(str(error))
        if isinstance(error, WorkerCrashed):
            self.bar.warning(tr("The DGTRS-Geo backend stopped and is being restarted"), str(error))
            self.start_backend()
        elif isinstance(error, BackendUnavailable):
            self.bar.error(tr("The DGTRS-Geo backend is not available"), str(error))
        else:
            self.bar.error(tr("DGTRS-Geo search failed"), str(error))

    # --- history --------------------------------------------------------------------------------

    def show_history_item(self, item: QListWidgetItem) -> None:
        """Show a past query's layers again (re-adding them if they were removed)."""
        entry = item.data(Qt.ItemDataRole.UserRole)
        root = QgsProject.instance().layerTreeRoot()
        group = root.findGroup(group_name(entry["query"]))
        if group is None or not group.findLayers():
            if not os.path.isfile(entry["heatmap"]):
                self.status.setText(
                    tr("The result files of this query are gone: {}", entry["heatmap"])
                )
                return
            group = add_result_group(entry["query"], entry["heatmap"], entry.get("polygons"))
        group.setItemVisibilityCheckedRecursive(True)
        layers = [node.layer() for node in group.findLayers() if node.layer() is not None]
        if layers:
            canvas = self.iface.mapCanvas()
            transform = QgsCoordinateTransform(
                layers[-1].crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance()
            )
            canvas.setExtent(transform.transformBoundingBox(layers[-1].extent()))
            canvas.refresh()

    def close_down(self) -> None:
        """Cancel running tasks and stop reacting to them (plugin unload)."""
        self._closed = True
        self._token_timer.stop()
        for task in list(self._tasks):
            task.cancel()
