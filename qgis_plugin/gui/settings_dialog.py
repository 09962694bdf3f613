"""Backend settings: the interpreter, "Set up backend" with a visible log, diagnostics.

The set-up runs its steps (:mod:`qgis_plugin.backend.install`) one after the other in
``QProcess``es, streaming their output into the log, and keeps the venv's marker up to date, so a
set-up that fails or is interrupted leaves a venv the plugin calls incomplete, everywhere, and
offers to retry or remove.
"""

from __future__ import annotations

import json
import sys
import time
from typing import List, Optional, Sequence, Union

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QProcess, QProcessEnvironment
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..backend import manager
from ..backend.environment import ABSENT, INCOMPLETE, READY, write_marker
from ..backend.install import (
    SetupError,
    SetupOptions,
    Step,
    clean_environment,
    engine_requirement,
    remove_venv,
    setup_steps,
    shell_command,
    torch_index,
)
from ..tasks import WorkerTask
from ..tools import tr
from ..version import plugin_version

_SOURCES = {
    "setting": "the Backend Python setting",
    "environment": "the DGTRS_GEO_PYTHON environment variable",
    "venv": "the set-up venv",
    "path": "the dgtrs-geo command on PATH",
}


class BackendSettingsDialog(QDialog):
    """Choose the backend interpreter, create one, and check what it runs on."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("DGTRS-Geo backend"))
        self.resize(760, 600)
        self._steps: List[Step] = []
        self._done_steps = 0
        self._total_steps = 0
        self._started = 0.0
        self._process: Optional[QProcess] = None
        self._current: Optional[Step] = None
        #: Seconds the last successful set-up took (None before one finished).
        self.setup_seconds: Optional[float] = None
        layout = QVBoxLayout(self)
        layout.addLayout(self._interpreter_form())
        layout.addWidget(self._setup_group())
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
        self.index_dir.fileChanged.connect(self._save_index_dir)
        for widget in (self.cuda, self.reuse):
            widget.toggled.connect(self._options_changed)
        self.base_python.fileChanged.connect(self._options_changed)
        for edit in (self.pip_options, self.torch_index):
            edit.editingFinished.connect(self._options_changed)
        self.setup_button.clicked.connect(lambda: self.set_up())
        self.retry_button.clicked.connect(lambda: self.set_up())
        self.remove_button.clicked.connect(self.remove)
        self.diagnostics_button.clicked.connect(self.show_diagnostics)
        self.restart_button.clicked.connect(self.restart)
        self._refresh()

    def _interpreter_form(self) -> QFormLayout:
        form = QFormLayout()
        self.python = QgsFileWidget(self)
        self.python.setFilePath(settings.configured_python())
        self.python.setToolTip(tr("Empty: auto-detect"))
        form.addRow(tr("Backend Python"), self.python)
        self.detected = QLabel(self)
        self.detected.setWordWrap(True)
        form.addRow(tr("In use"), self.detected)
        venv_row = QHBoxLayout()
        self.venv_state = QLabel(self)
        self.venv_state.setWordWrap(True)
        self.retry_button = QPushButton(tr("Retry set-up"), self)
        self.remove_button = QPushButton(tr("Remove"), self)
        venv_row.addWidget(self.venv_state, 1)
        venv_row.addWidget(self.retry_button)
        venv_row.addWidget(self.remove_button)
        form.addRow(tr("Set-up venv"), venv_row)
        self.index_dir = QgsFileWidget(self)
        self.index_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.index_dir.setFilePath(settings.index_dir())
        self.index_dir.setToolTip(
            tr("Where embedding indexes are kept (one per raster, model and window sizes)")
        )
        form.addRow(tr("Index folder"), self.index_dir)
        return form

    def _setup_group(self) -> QGroupBox:
        group = QGroupBox(tr("Set up backend"), self)
        form = QFormLayout(group)
        saved = settings.setup_options()
        self.cuda = QCheckBox(tr("Install the CUDA build of PyTorch (NVIDIA GPU)"), group)
        self.cuda.setChecked(saved.cuda)
        # macOS has no CUDA build: PyPI's wheels there run on the CPU and Metal (MPS).
        self.cuda.setEnabled(sys.platform != "darwin")
        form.addRow("", self.cuda)
        self.base_python = QgsFileWidget(group)
        self.base_python.setFilePath(saved.base_python)
        self.base_python.setToolTip(tr("The Python that creates the venv (empty: found on PATH)"))
        form.addRow(tr("Base Python"), self.base_python)
        self.reuse = QCheckBox(
            tr(
                "Reuse the base Python's packages (a pre-installed PyTorch is kept, not downloaded)"
            ),
            group,
        )
        self.reuse.setChecked(saved.reuse_packages)
        form.addRow("", self.reuse)
        self.pip_options = QLineEdit(saved.pip_options, group)
        self.pip_options.setPlaceholderText("--no-index --find-links /path/to/wheels")
        form.addRow(tr("pip options"), self.pip_options)
        self.torch_index = QLineEdit(saved.torch_index, group)
        form.addRow(tr("PyTorch index"), self.torch_index)
        self.command = QPlainTextEdit(group)
        self.command.setReadOnly(True)
        self.command.setMaximumHeight(90)
        self.command.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.command.setToolTip(tr("The same steps, to run in a terminal one after the other"))
        form.addRow(tr("Manual set-up"), self.command)
        return group

    def options(self) -> SetupOptions:
        """Return the set-up options as the dialog shows them."""
        return SetupOptions(
            venv_dir=settings.backend_venv_dir(),
            cuda=self.cuda.isChecked() and self.cuda.isEnabled(),
            base_python=self.base_python.filePath().strip(),
            reuse_packages=self.reuse.isChecked(),
            pip_options=self.pip_options.text().strip(),
            torch_index=self.torch_index.text().strip(),
        )

    def _save_python(self, path: str) -> None:
        settings.set_configured_python(path)
        self._refresh()

    def _save_index_dir(self, path: str) -> None:
        settings.set_index_dir(path)

    def _options_changed(self, *_args) -> None:  # noqa: ANN002
        settings.set_setup_options(self.options())
        self._refresh()

    def _refresh(self) -> None:
        """Say which interpreter is in use and what state the set-up venv is in."""
        backend = settings.backend()
        if backend.python:
            self.detected.setText(
                tr("{} (from {})", backend.python, _SOURCES.get(backend.source, backend.source))
            )
        else:
            self.detected.setText(tr("none: use 'Set up backend' or pick an interpreter"))
        states = {
            READY: tr("ready: {}", backend.venv_dir),
            INCOMPLETE: tr(
                "incomplete, not used: {} ({}). Retry the set-up or remove the folder.",
                backend.venv_dir,
                backend.venv_detail,
            ),
        }
        self.venv_state.setText(states.get(backend.venv_state, tr("not created yet")))
        incomplete = backend.venv_state == INCOMPLETE and not self.running
        self.retry_button.setVisible(incomplete)
        self.remove_button.setVisible(backend.venv_state != ABSENT and not self.running)
        self.torch_index.setPlaceholderText(
            torch_index(self.cuda.isChecked()) or tr("the package index (PyPI)")
        )
        try:
            self.command.setPlainText(shell_command(setup_steps(self.options()), joiner="\n"))
        except SetupError as error:
            self.command.setPlainText(str(error))

    # --- set-up -----------------------------------------------------------------------------------

    def set_up(self, steps: Optional[Sequence[Union[Step, List[str]]]] = None) -> None:
        """Run the set-up commands one after the other, streaming their output into the log.

        Args:
            steps: commands to run (default: :func:`~qgis_plugin.backend.install.setup_steps`
                of the dialog's options).

        """
        if self.running:
            return
        if steps is None:
            settings.set_setup_options(self.options())
            try:
                steps = setup_steps(self.options())
            except SetupError as error:
                self.log.appendPlainText(str(error))
                return
            self.log.appendPlainText(
                tr("Installing dgtrs-geo {} from {}", plugin_version(), engine_requirement())
            )
        self._steps = [s if isinstance(s, Step) else Step(" ".join(s[:3]), list(s)) for s in steps]
        self._total_steps, self._done_steps = len(self._steps), 0
        self._started = time.monotonic()
        # No worker may run from the venv while pip replaces its files.
        manager.shutdown()
        write_marker(settings.backend_venv_dir(), state="running", engine=plugin_version())
        self.setup_button.setEnabled(False)
        self._refresh()
        self._next_step()

    def _next_step(self) -> None:
        if not self._steps:
            self._finish()
            return
        step = self._steps.pop(0)
        self._current = step
        self.log.appendPlainText(
            "[{}/{}] {}\n$ {}".format(
                self._done_steps + 1, self._total_steps, step.title, shell_command([step])
            )
        )
        process = QProcess(self)
        environment = QProcessEnvironment()
        for key, value in clean_environment().items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.readyReadStandardOutput.connect(
            lambda: self.log.appendPlainText(
                bytes(process.readAllStandardOutput()).decode(errors="replace").rstrip()
            )
        )
        process.finished.connect(self._step_finished)
        process.errorOccurred.connect(self._step_failed)
        self._process = process
        process.start(step.argv[0], step.argv[1:])

    def _finish(self) -> None:
        self.setup_seconds = time.monotonic() - self._started
        write_marker(
            settings.backend_venv_dir(),
            state="complete",
            engine=plugin_version(),
            seconds=round(self.setup_seconds, 1),
        )
        self.log.appendPlainText(tr("Backend set up in {:.0f} s.", self.setup_seconds))
        self.setup_button.setEnabled(True)
        manager.shutdown()
        manager.notify("set-up", {"seconds": self.setup_seconds})
        self._refresh()

    def _stop(self, detail: str) -> None:
        self.log.appendPlainText(tr("Set-up stopped: {}.", detail))
        write_marker(
            settings.backend_venv_dir(), state="failed", engine=plugin_version(), detail=detail
        )
        self._steps = []
        self.setup_button.setEnabled(True)
        self._refresh()

    def _step_finished(self, code: int, _status=None) -> None:  # noqa: ANN001
        if code != 0:
            self._stop(
                "step {} of {} ({}) failed with exit code {}".format(
                    self._done_steps + 1, self._total_steps, self._current.title, code
                )
            )
            return
        self._done_steps += 1
        self.log.appendPlainText(
            tr("(step done, {:.0f} s since the set-up began)", time.monotonic() - self._started)
        )
        self._next_step()

    def _step_failed(self, _error) -> None:  # noqa: ANN001
        if self._process is not None and self._process.state() == QProcess.ProcessState.NotRunning:
            self._stop(
                "step {} of {} ({}) could not run: {}".format(
                    self._done_steps + 1,
                    self._total_steps,
                    self._current.title,
                    self._process.errorString(),
                )
            )

    @property
    def running(self) -> bool:
        """Whether a set-up step is running."""
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    def remove(self) -> None:
        """Delete the set-up venv (the worker is stopped first)."""
        manager.shutdown()
        try:
            remove_venv(settings.backend_venv_dir())
            self.log.appendPlainText(tr("Removed {}.", settings.backend_venv_dir()))
        except OSError as error:
            self.log.appendPlainText(tr("Cannot remove it: {}", error))
        self._refresh()

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
