"""Backend settings: the interpreter, "Set up backend" with a visible log, diagnostics."""

from __future__ import annotations

import json
from typing import List, Optional

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QProcess, Qt
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..backend import manager
from ..backend.environment import setup_steps, shell_command, venv_python
from ..tasks import WorkerTask
from ..tools import tr


class BackendSettingsDialog(QDialog):
    """Choose the backend interpreter, create one, and check what it runs on."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("DGTRS-Geo backend"))
        self.resize(720, 520)
        self._steps: List[List[str]] = []
        self._process: Optional[QProcess] = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.python = QgsFileWidget(self)
        self.python.setFilePath(settings.configured_python())
        self.python.setToolTip(tr("Empty: auto-detect"))
        form.addRow(tr("Backend Python"), self.python)
        self.detected = QLabel(self)
        form.addRow(tr("In use"), self.detected)
        self.cuda = QCheckBox(tr("Install the CUDA build of PyTorch (NVIDIA GPU)"), self)
        form.addRow("", self.cuda)
        self.command = QLabel(self)
        self.command.setWordWrap(True)
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow(tr("Manual set-up"), self.command)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        self.setup_button = QPushButton(tr("Set up backend"), self)
        self.diagnostics_button = QPushButton(tr("Diagnostics"), self)
        self.restart_button = QPushButton(tr("Restart backend"), self)
        for button in (self.setup_button, self.diagnostics_button, self.restart_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        layout.addWidget(self.log, 1)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        box.rejected.connect(self.reject)
        layout.addWidget(box)
        self.python.fileChanged.connect(self._save_python)
        self.cuda.toggled.connect(self._refresh)
        self.setup_button.clicked.connect(lambda: self.set_up())
        self.diagnostics_button.clicked.connect(self.show_diagnostics)
        self.restart_button.clicked.connect(self.restart)
        self._refresh()

    def _save_python(self, path: str) -> None:
        settings.set_configured_python(path)
        self._refresh()

    def _refresh(self) -> None:
        found = settings.backend_python()
        self.detected.setText(
            found or tr("none found: use 'Set up backend' or pick an interpreter")
        )
        try:
            self.command.setText(
                shell_command(setup_steps(settings.backend_venv_dir(), self.cuda.isChecked()))
            )
        except RuntimeError as error:
            self.command.setText(str(error))

    # --- set-up -----------------------------------------------------------------------------------

    def set_up(self, steps: Optional[List[List[str]]] = None) -> None:
        """Run the set-up commands one after the other, streaming their output into the log.

        Args:
            steps: argv lists to run (default: create the venv and pip-install dgtrs-geo).

        """
        if steps is None:
            try:
                steps = setup_steps(settings.backend_venv_dir(), self.cuda.isChecked())
            except RuntimeError as error:
                self.log.appendPlainText(str(error))
                return
        self._steps = list(steps)
        self.setup_button.setEnabled(False)
        self._next_step()

    def _next_step(self) -> None:
        if not self._steps:
            self.log.appendPlainText(tr("Backend set up."))
            self.setup_button.setEnabled(True)
            target = venv_python(settings.backend_venv_dir())
            if target.is_file() and not settings.configured_python():
                self.python.setFilePath(str(target))
            manager.shutdown()
            self._refresh()
            return
        argv = self._steps.pop(0)
        self.log.appendPlainText("$ " + shell_command([argv]))
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.readyReadStandardOutput.connect(
            lambda: self.log.appendPlainText(
                bytes(process.readAllStandardOutput()).decode(errors="replace").rstrip()
            )
        )
        process.finished.connect(self._step_finished)
        process.errorOccurred.connect(self._step_failed)
        self._process = process
        process.start(argv[0], argv[1:])

    def _step_finished(self, code: int, _status=None) -> None:  # noqa: ANN001
        if code != 0:
            self.log.appendPlainText(tr("Step failed (exit code {}); set-up stopped.", code))
            self._steps = []
            self.setup_button.setEnabled(True)
            return
        self._next_step()

    def _step_failed(self, _error) -> None:  # noqa: ANN001
        if self._process is not None and self._process.state() == QProcess.ProcessState.NotRunning:
            self.log.appendPlainText(tr("Cannot run: {}", self._process.errorString()))
            self._steps = []
            self.setup_button.setEnabled(True)

    @property
    def running(self) -> bool:
        """Whether a set-up step is running."""
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    # --- diagnostics ------------------------------------------------------------------------------

    def show_diagnostics(self) -> WorkerTask:
        """Start the worker if needed (in a task) and print its diagnostics into the log."""
        self.log.appendPlainText(tr("Asking the backend\u2026"))
        self.diagnostics_task = WorkerTask(
            tr("DGTRS-Geo diagnostics"), "diagnostics", {}, self._diagnosed
        )
        QgsApplication.taskManager().addTask(self.diagnostics_task)
        return self.diagnostics_task

    def _diagnosed(self, info, error) -> None:  # noqa: ANN001
        if error is not None:
            self.log.appendPlainText(tr("Backend not working: {}", error))
            return
        self.log.appendPlainText(json.dumps(info, indent=2))

    def restart(self) -> None:
        """Stop the worker; the next request starts a fresh one."""
        manager.shutdown()
        self.log.appendPlainText(tr("Backend stopped; it restarts on the next request."))
