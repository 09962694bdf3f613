"""Run one worker request in a ``QgsTask``: the GUI thread never waits on the engine."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .backend.manager import get_client

#: Called on the main thread with ``(result, error)``; exactly one of them is None.
DoneCallback = Callable[[Optional[Dict[str, Any]], Optional[Exception]], None]


class WorkerTask(QgsTask):
    """Send ``op`` with ``params`` to the shared worker; progress and cancel go both ways.

    Args:
        description: shown in QGIS's task manager.
        op: the worker operation.
        params: its parameters.
        on_done: called on the main thread when the task ends (``finished``).

    """

    #: A progress message from the engine ("encoded 40/100 windows"), for the dock's label.
    message = pyqtSignal(str)

    def __init__(
        self, description: str, op: str, params: Dict[str, Any], on_done: DoneCallback
    ) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.op = op
        self.params = params
        self.on_done = on_done
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[Exception] = None

    def run(self) -> bool:
        """Do the request on the task thread; never touch widgets here."""
        try:
            self.result = get_client().request(
                self.op, self.params, on_progress=self._progress, is_canceled=self.isCanceled
            )
        except Exception as error:  # noqa: BLE001 - reported on the main thread by finished()
            self.error = error
            return False
        return True

    def _progress(self, fraction: float, text: str) -> None:
        self.setProgress(100.0 * max(0.0, min(1.0, fraction)))
        self.message.emit(text)

    def finished(self, ok: bool) -> None:
        """Hand the outcome to the callback (QGIS calls this on the main thread)."""
        if ok:
            self.on_done(self.result, None)
        else:
            self.on_done(None, self.error or RuntimeError("the task was cancelled"))
