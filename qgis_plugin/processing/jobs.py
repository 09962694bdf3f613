"""One worker job from a Processing algorithm: start the backend, relay progress, map errors.

Every algorithm of the provider sends its job through :func:`run_job`, so the backend's start,
its version warning, progress, cancel and errors read the same in each algorithm's log.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from ..backend import manager
from ..backend.client import WorkerError
from ..tools import tr

#: Builds a request's params from the worker's ``ready`` result (its protocol and option names).
ParamsFn = Callable[[Dict[str, Any]], Dict[str, Any]]


def run_job(op: str, params: ParamsFn, feedback: QgsProcessingFeedback) -> Dict[str, Any]:
    """Send one job to the shared worker (starting it if needed) and return its result.

    Args:
        op: the worker operation (``index``, ``localize``, ``catalog_build``...).
        params: called with the worker's ``ready`` result; returns the request's params.
        feedback: receives progress and messages; cancelling it cancels the job.

    Raises:
        QgsProcessingException: if the backend cannot start or the job fails or is cancelled.

    """

    def progress(fraction: Optional[float], message: str, stage: str) -> None:
        if fraction is not None:
            feedback.setProgress(100.0 * fraction)
        if stage == "starting":
            feedback.pushInfo(tr("Starting the backend\u2026"))
        elif message:
            feedback.pushInfo(message)

    try:
        client = manager.get_client()
        info = client.start(progress)
        if client.version_note:
            feedback.pushWarning(client.version_note)
        return client.request(
            op, params(info), on_progress=progress, is_canceled=feedback.isCanceled
        )
    except WorkerError as error:
        raise QgsProcessingException(str(error)) from error
