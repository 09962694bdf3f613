"""The plugin's one worker process, shared by the dock and the Processing algorithms.

Listeners (the dock) hear when the backend changes: ``ready`` (a worker answered), ``stopped``
(shut down, for instance after "Set up backend" installed a new one) and ``set-up`` (a set-up
finished). They are called on whichever thread the change happened.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

from .. import settings
from ..version import plugin_version
from .client import BackendUnavailable, WorkerClient, worker_command
from .environment import INCOMPLETE

#: ``listener(event, info)``.
Listener = Callable[[str, Dict[str, Any]], None]

_lock = threading.Lock()
_client: Optional[WorkerClient] = None
_listeners: List[Listener] = []


def missing_backend_message() -> str:
    """Explain why no backend interpreter is usable and how to get one."""
    backend = settings.backend()
    if backend.venv_state == INCOMPLETE:
        return (
            "The dgtrs-geo backend set-up in {} did not finish ({}). Open Plugins > DGTRS-Geo > "
            "Backend settings: 'Retry set-up', or 'Remove' it, or set the interpreter of a "
            "Python environment where dgtrs-geo is installed.".format(
                backend.venv_dir, backend.venv_detail
            )
        )
    return (
        "No dgtrs-geo backend found. Open Plugins > DGTRS-Geo > Backend settings and click "
        "'Set up backend' (creates {} and installs the engine the plugin carries), or set the "
        "interpreter of a Python environment where dgtrs-geo is installed.".format(backend.venv_dir)
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
            _client = WorkerClient(worker_command(python), expected_version=plugin_version())
        return _client


def current_client() -> Optional[WorkerClient]:
    """Return the shared client if one exists, without creating it."""
    return _client


def add_listener(listener: Listener) -> None:
    """Call ``listener(event, info)`` on backend changes until :func:`remove_listener`."""
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling ``listener``."""
    if listener in _listeners:
        _listeners.remove(listener)


def notify(event: str, info: Optional[Dict[str, Any]] = None) -> None:
    """Tell the listeners that the backend changed (``ready``, ``stopped``, ``set-up``)."""
    for listener in list(_listeners):
        listener(event, dict(info or {}))


def shutdown() -> None:
    """Stop the shared worker (plugin unload, QGIS exit, a new backend set up)."""
    global _client
    with _lock:
        stopped = _client is not None
        if _client is not None:
            _client.close()
        _client = None
    if stopped:
        notify("stopped")
