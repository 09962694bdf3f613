"""The plugin's one worker process, shared by the dock and the Processing algorithms."""

from __future__ import annotations

import threading
from typing import Optional

from .. import settings
from .client import BackendUnavailable, WorkerClient, worker_command

_lock = threading.Lock()
_client: Optional[WorkerClient] = None


def missing_backend_message() -> str:
    """Explain that no backend interpreter was found and how to get one."""
    return (
        "No dgtrs-geo backend found. Open Plugins > DGTRS-Geo > Backend settings and click "
        "'Set up backend' (creates {} and installs dgtrs-geo), or set the interpreter of a Python "
        "environment where you ran 'pip install dgtrs-geo'.".format(settings.backend_venv_dir())
    )


def get_client() -> WorkerClient:
    """Return the shared client for the configured interpreter (not started yet if new).

    Raises:
        BackendUnavailable: if no interpreter is configured or detected.

    """
    global _client
    python = settings.backend_python()
    if python is None:
        raise BackendUnavailable(missing_backend_message(), "BackendUnavailable")
    with _lock:
        if _client is None or _client.command != worker_command(python):
            if _client is not None:
                _client.close()
            _client = WorkerClient(worker_command(python))
        return _client


def current_client() -> Optional[WorkerClient]:
    """Return the shared client if one exists, without creating it."""
    return _client


def shutdown() -> None:
    """Stop the shared worker (plugin unload, QGIS exit)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
