"""The dock panel: pick a raster, describe what to find, get a heatmap and polygons back."""

from __future__ import annotations

import os
import threading
import time
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
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import history, settings
from ..backend import manager
from ..backend.client import BackendUnavailable, WorkerCancelled, WorkerCrashed
from ..backend.protocol import result_path
from ..layers import add_result_group, short
from ..sources import UnsupportedLayer, run_request
from ..tasks import WorkerTask
from ..tools import MessageBarLogger, plugin_name, tr
from .catalog_panel import CatalogPanel
from .history_panel import HistoryPanel
from .window_sizes_widget import WindowSizesWidget

#: Delay after the last keystroke before the token count is refreshed.
TOKEN_COUNT_DELAY_MS = 300
EXTENT_LAYER, EXTENT_CANVAS = 0, 1
#: What the status line says at each stage of a job.
STAGE_TEXT = {
    "starting": "Starting backend\u2026",
    "loading-model": "Loading model\u2026",
    "downloading": "Downloading weights {percent} %",
    "encoding": "Encoding windows\u2026 {message}",
    "scoring": "Scoring\u2026",
    "writing": "Writing results\u2026",
}
#: Stages without a meaningful fraction: the bar runs as "busy" instead of sitting at 0 %.
BUSY_STAGES = ("starting", "loading-model")
ERROR_STYLE = "color: #c0392b;"


class DgtrsGeoDock(QDockWidget):
    """The plugin's dock.

    Args:
        iface: the QGIS interface (canvas for the map-view extent, message bar for reports).

    """

    #: ``(count, context_length, text)`` from a background token count.
    tokensCounted = pyqtSignal(int, int, str)  # noqa: N815
    #: ``(event, info)`` from the backend manager, on any thread.
    backendChanged = pyqtSignal(str, dict)  # noqa: N815

    def __init__(self, iface, parent: Optional[QWidget] = None) -> None:  # noqa: ANN001
        super().__init__(tr("DGTRS-Geo: find in imagery"), parent)
        self.setObjectName("DgtrsGeoDock")
        self.iface = iface
        self.bar = MessageBarLogger(plugin_name())
        self.task: Optional[WorkerTask] = None
        self._tasks: List[WorkerTask] = []
        self._error_shown = False
        # Set on plugin unload: tasks still finishing must not touch the deleted widgets.
        self._closed = False
        self._build()
        self._token_timer = QTimer(self)
        self._token_timer.setSingleShot(True)
        self._token_timer.setInterval(TOKEN_COUNT_DELAY_MS)
        self._token_timer.timeout.connect(self.refresh_token_count)
        self.query.textChanged.connect(self._token_timer.start)
        self.tokensCounted.connect(self._show_token_count)
        self.backendChanged.connect(self._backend_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.browse_button.clicked.connect(self._browse_checkpoint)
        self.settings_button.clicked.connect(self._open_settings)
        self.layer_combo.layerChanged.connect(self.window_sizes.set_layer)
        self.window_sizes.set_layer(self.layer_combo.currentLayer())
        project = QgsProject.instance()
        project.readProject.connect(self._project_read)
        project.cleared.connect(self._project_read)
        # Kept: the manager removes listeners by identity, and each ``.emit`` is a new object.
        self._listener = self.backendChanged.emit
        manager.add_listener(self._listener)
        self._set_running(False)
        self._project_read()

    # --- widgets --------------------------------------------------------------------------------

    def _build(self) -> None:
        outer = QWidget(self)
        outer_layout = QVBoxLayout(outer)
        #: Tabs: one raster (the widgets below) and the catalog (:class:`CatalogPanel`).
        self.tabs = QTabWidget(outer)
        body = QWidget(self.tabs)
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
        self.window_sizes = WindowSizesWidget(body)
        form.addRow(tr("Window sizes"), self.window_sizes)
        self.threshold = QDoubleSpinBox(body)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip(tr("Polygons enclose cells whose relative match is above this"))
        form.addRow(tr("Polygon threshold"), self.threshold)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        self.run_button = QPushButton(tr("Find"), body)
        self.cancel_button = QPushButton(tr("Cancel"), body)
        self.settings_button = QPushButton(tr("Backend\u2026"), body)
        for button in (self.run_button, self.cancel_button, self.settings_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.history_panel = HistoryPanel(self.iface, self.set_status, body)
        #: The history's list of runs (newest first) and the *Clear results* button.
        self.history_list = self.history_panel.list
        self.clear_button = self.history_panel.clear_button
        layout.addWidget(self.history_panel, 1)
        self.tabs.addTab(body, tr("Raster"))
        self.catalog_panel = CatalogPanel(self, self.tabs)
        self.tabs.addTab(self.catalog_panel, tr("Catalog"))
        outer_layout.addWidget(self.tabs, 1)
        # Shared by both tabs: the running job's stage and the last outcome.
        self.progress = QProgressBar(outer)
        self.progress.setRange(0, 100)
        outer_layout.addWidget(self.progress)
        self.status = QLabel("", outer)
        self.status.setWordWrap(True)
        outer_layout.addWidget(self.status)
        self.setWidget(outer)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def set_status(self, text: str, error: bool = False) -> None:
        """Show ``text`` on the status line (red for an error, which the next success replaces)."""
        if error != self._error_shown:
            # Only on a change: restyling on every progress event would slow the GUI thread.
            self.status.setStyleSheet(ERROR_STYLE if error else "")
        self._error_shown = error
        self.status.setText(text)

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

    # --- backend state --------------------------------------------------------------------------

    def _backend_changed(self, event: str, info: Dict[str, Any]) -> None:
        """Replace a stale error once the backend works again (or was replaced)."""
        if self._closed or not self._error_shown:
            return
        if event == "ready":
            self.set_status(tr("Backend ready (dgtrs-geo {})", info.get("version", "?")))
        elif event in ("set-up", "stopped"):
            self.set_status(tr("Backend changed: it starts with the next query."))

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
            self.token_label.setStyleSheet(ERROR_STYLE)
        else:
            self.token_label.setStyleSheet("")
        self.token_label.setText(label)

    # --- runs -----------------------------------------------------------------------------------

    def start_backend(self) -> WorkerTask:
        """Start (or restart) the worker in a task (after a crash, or from a test)."""
        return self._submit(tr("Starting the DGTRS-Geo backend"), "ping", {}, self._backend_started)

    def _backend_started(
        self, result: Optional[Dict[str, Any]], error: Optional[Exception]
    ) -> None:
        if error is not None:
            self._report(error)
            return
        self.set_status(
            tr(
                "Backend ready (dgtrs-geo {}, pid {})",
                result.get("version", "?"),
                result.get("pid"),
            )
        )
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
            self.set_status(tr("Type a query first: a sentence describing what to find."), True)
            return None
        model = self.model_combo.currentText().strip()
        settings.set_model(model)
        settings.set_device(self.device_combo.currentText())
        try:
            if not isinstance(layer, QgsRasterLayer):
                raise UnsupportedLayer(tr("Choose a raster layer."))
            scales, unit = self.window_sizes.sizes()
            request = run_request(
                layer,
                model=model,
                device=self.device_combo.currentText(),
                scales=scales,
                scale_unit=unit,
                extent=self._search_extent(layer),
                index_dir=settings.index_dir(),
            )
        except ValueError as error:
            self.set_status(str(error), True)
            self.bar.warning(tr("Cannot search this layer"), str(error))
            return None
        record = history.new_record(
            query,
            layer=layer.name(),
            raster=request.raster,
            model=model,
            scales=request.options["scales"],
            scale_unit=request.options["scale_unit"],
            threshold=self.threshold.value(),
        )
        record["out_dir"] = os.path.join(settings.results_dir(), record["id"])
        request.queries = [query]
        request.options.update(
            threshold=self.threshold.value(),
            out_dir=record["out_dir"],
            outputs=["heatmap", "polygons"],
        )
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.set_status(tr("Searching for '{}'\u2026", short(query, 60)))
        self._set_running(True)
        clicked = time.monotonic()
        return self._submit(
            tr("Localize '{}'", short(query, 40)),
            "localize",
            request,
            lambda result, error: self._localized(record, clicked, result, error),
        )

    def _submit(self, description: str, op: str, params, on_done) -> WorkerTask:  # noqa: ANN001
        def done(result, error) -> None:  # noqa: ANN001
            self._tasks.remove(task)
            if not self._closed:
                on_done(result, error)

        task = WorkerTask(description, op, params, done)
        # Python task objects must stay referenced until they finish, or they never run.
        self._tasks.append(task)
        task.progressed.connect(self._show_progress)
        if op == "localize":
            self.task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def _show_progress(self, fraction: Optional[float], message: str, stage: str) -> None:
        """Show the job's stage; the bar runs busy while no fraction means anything."""
        if self._closed:
            return
        if stage in BUSY_STAGES:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            if fraction is not None:
                self.progress.setValue(int(100 * max(0.0, min(1.0, fraction))))
        text = STAGE_TEXT.get(stage, "{message}")
        if stage == "starting" and message:
            # The worker's own "job started" (the backend is running already).
            text = "{message}"
        percent = int(round(100 * fraction)) if fraction is not None else 0
        shown = text.format(percent=percent, message=message).strip()
        self.set_status(shown or tr("Working\u2026"))

    def cancel(self) -> None:
        """Cancel the running search (the worker stops within a second, or is restarted)."""
        if self.task is not None:
            self.set_status(tr("Cancelling\u2026"))
            self.task.cancel()

    def _localized(
        self,
        record: Dict[str, Any],
        clicked: float,
        result: Optional[Dict[str, Any]],
        error: Optional[Exception],
    ) -> None:
        task, self.task = self.task, None
        self._set_running(False)
        self.progress.setRange(0, 100)
        if error is not None:
            self.progress.setValue(0)
            self._report(error)
            return
        found = result["results"][0]
        record.update(
            heatmap=result_path(found, "heatmap"),
            polygons=result_path(found, "polygons"),
            score_max=found.get("score_max"),
            score_min=found.get("score_min"),
            normalise=found.get("normalise", "minmax"),
        )
        try:
            add_result_group(record)
        except ValueError as load_error:
            self._report(load_error)
            return
        # The time the user waited: the backend's start and the layers' loading included.
        record["seconds"] = round(time.monotonic() - clicked, 3)
        record["start_seconds"] = round(task.start_seconds if task else 0.0, 3)
        self.progress.setValue(100)
        self.history_panel.add(record)
        self.refresh_token_count()
        self.set_status(self._done_text(record))
        if task is not None and task.version_note:
            self.bar.warning(tr("DGTRS-Geo backend version"), task.version_note)

    @staticmethod
    def _done_text(record: Dict[str, Any]) -> str:
        text = tr("Done in {:.1f} s", record["seconds"])
        if record.get("start_seconds"):
            text += tr(" (backend start {:.1f} s)", record["start_seconds"])
        if record.get("score_max") is not None:
            text += tr(": best window cosine {:.3f}", record["score_max"])
        return text

    def _report(self, error: Exception) -> None:
        """Tell the user what went wrong, and restart a crashed worker."""
        if isinstance(error, WorkerCancelled):
            self.set_status(tr("Cancelled."))
            return
        self.set_status(str(error), True)
        if isinstance(error, WorkerCrashed):
            self.bar.warning(tr("The DGTRS-Geo backend stopped and is being restarted"), str(error))
            self.start_backend()
        elif isinstance(error, BackendUnavailable):
            self.bar.error(tr("The DGTRS-Geo backend is not available"), str(error))
        else:
            self.bar.error(tr("DGTRS-Geo search failed"), str(error))

    # --- history and results --------------------------------------------------------------------

    @property
    def history(self) -> List[Dict[str, Any]]:
        """The runs of this project, newest first (their records)."""
        return self.history_panel.records

    def show_history_item(self, item: QListWidgetItem) -> None:
        """Show a run's group again (re-adding its layers from their files if needed)."""
        self.history_panel.show_item(item)

    def clear_results(self, delete_files: bool = False) -> int:
        """Remove every result layer (and with ``delete_files`` the dock's result files)."""
        return self.history_panel.clear_results(delete_files)

    def _project_read(self, *_args) -> None:  # noqa: ANN002
        if not self._closed:
            self.history_panel.load()

    def close_down(self) -> None:
        """Cancel running tasks and stop reacting to them (plugin unload)."""
        self._closed = True
        self._token_timer.stop()
        manager.remove_listener(self._listener)
        project = QgsProject.instance()
        project.readProject.disconnect(self._project_read)
        project.cleared.disconnect(self._project_read)
        for task in list(self._tasks):
            task.cancel()
