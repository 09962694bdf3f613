"""Run one worker request in a ``QgsTask``: the GUI thread never waits on the engine."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Union

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .backend import manager
from .backend.protocol import Run, worker_params

#: Called on the main thread with ``(result, error)``; exactly one of them is None.
DoneCallback = Callable[[Optional[Dict[str, Any]], Optional[Exception]], None]


class WorkerTask(QgsTask):
    """Send ``op`` to the shared worker (starting it if needed); progress and cancel go both ways.

    Args:
        description: shown in QGIS's task manager.
        op: the worker operation.
        params: its parameters: a :class:`~qgis_plugin.backend.protocol.Run` for ``index`` and
            ``localize`` (written in the running worker's format once it has started), a dict
            for the others.
        on_done: called on the main thread when the task ends (``finished``).

    """

    #: ``(fraction or None, message, stage)`` from the engine, for the dock's status line.
    progressed = pyqtSignal(object, str, str)

    def __init__(
        self,
        description: str,
        op: str,
        params: Union[Run, Dict[str, Any]],
        on_done: DoneCallback,
    ) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.op = op
        self.params = params
        self.on_done = on_done
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[Exception] = None
        #: Seconds this task spent starting the worker (0 when it was running already).
        self.start_seconds = 0.0
        #: Seconds from the task's start to its end, the worker's start included.
        self.seconds = 0.0
        #: A version warning from the backend ("" when none).
        self.version_note = ""

    def run(self) -> bool:
        """Do the request on the task thread; never touch widgets here."""
        started = time.monotonic()
        try:
            client = manager.get_client()
            was_running = client.alive
            info = client.start(self._progress)
            if not was_running:
                self.start_seconds = client.start_seconds
                manager.notify("ready", info)
            self.version_note = client.version_note
            params = self.params
            if isinstance(params, Run):
                params = worker_params(self.op, params, info)
            self.result = client.request(
                self.op, params, on_progress=self._progress, is_canceled=self.isCanceled
            )
        except Exception as error:  # noqa: BLE001 - reported on the main thread by finished()
            self.error = error
            return False
        finally:
            self.seconds = time.monotonic() - started
        return True

    def _progress(self, fraction: Optional[float], text: str, stage: str) -> None:
        if fraction is not None:
            self.setProgress(100.0 * max(0.0, min(1.0, fraction)))
        self.progressed.emit(fraction, text, stage)

    def finished(self, ok: bool) -> None:
        """Hand the outcome to the callback (QGIS calls this on the main thread)."""
        if ok:
            self.on_done(self.result, None)
        else:
            self.on_done(None, self.error or RuntimeError("the task was cancelled"))
