"""Talk to the ``dgtrs_geo.worker`` subprocess: JSON lines over its stdin and stdout.

Pure Python (no Qt, no torch), so it runs in a ``QgsTask`` thread, in a Processing algorithm and in
tests alike. One reader thread routes the worker's events to the request that asked for them; a
second drains stderr into a short ring buffer that crash reports quote.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from ..version import engine_mismatch
from .protocol import stage_of

#: How long a cancelled job may take to stop before the worker process is killed.
CANCEL_GRACE_S = 0.8
#: After this long without any event, the client pings the worker to tell slow from hung.
QUIET_BEFORE_PING_S = 5.0
#: A worker that leaves a ping unanswered this long is hung: it is killed and reported.
PING_TIMEOUT_S = 10.0

#: Called with ``(fraction, message, stage)``; ``fraction`` is None while it is unknown (starting,
#: loading a model), ``stage`` is "" when the worker sent none and none could be inferred.
ProgressCallback = Callable[[Optional[float], str, str], None]


class WorkerError(RuntimeError):
    """The worker answered a request with an error."""

    def __init__(self, message: str, kind: str = "Error") -> None:
        super().__init__(message)
        self.kind = kind


class WorkerCancelled(WorkerError):
    """The request was cancelled (the worker stopped it, or was killed to stop it)."""


class WorkerCrashed(WorkerError):
    """The worker process exited or hung; the next request starts a fresh one."""


class BackendUnavailable(WorkerError):
    """The worker could not be started: no interpreter, or no ``dgtrs-geo`` in it."""


class BackendIncompatible(BackendUnavailable):
    """The backend's engine is another release than the plugin's (the protocol may differ)."""


def worker_command(python: str) -> List[str]:
    """Return the argv that starts the worker with interpreter ``python``."""
    return [python, "-u", "-m", "dgtrs_geo.worker"]


class WorkerClient:
    """A long-lived worker process and the requests in flight to it.

    Args:
        command: argv that starts the worker (see :func:`worker_command`).
        start_timeout: seconds to wait for the worker's ``ready`` line (it imports torch).
        env: extra environment variables for the worker.
        expected_version: the plugin's version; a worker whose engine is another major or minor
            release is refused (:class:`BackendIncompatible`), one that differs in the patch
            level only is used and ``version_note`` says so. None: no check.

    """

    def __init__(
        self,
        command: List[str],
        start_timeout: float = 180.0,
        env: Optional[Dict[str, str]] = None,
        expected_version: Optional[str] = None,
    ) -> None:
        self.command = list(command)
        self.start_timeout = start_timeout
        self.env = dict(env or {})
        self.expected_version = expected_version
        self.info: Dict[str, Any] = {}
        #: Seconds the last start took (from spawning to ``ready``).
        self.start_seconds = 0.0
        #: A warning about a patch-level version difference ("" when the versions match).
        self.version_note = ""
        self._process: Optional[subprocess.Popen] = None
        self._pending: Dict[str, "queue.Queue[dict]"] = {}
        self._stderr: Deque[str] = collections.deque(maxlen=40)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._ready: "queue.Queue[dict]" = queue.Queue()
        self._stderr_thread: Optional[threading.Thread] = None
        self.restarts = 0

    # --- process life cycle -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the worker process is running."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id, or None when none runs."""
        return self._process.pid if self.alive and self._process else None

    def start(self, on_progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
        """Start the worker if it is not running; return its ``ready`` information.

        Args:
            on_progress: told ``(None, "", "starting")`` before a worker is spawned.

        Raises:
            BackendUnavailable: if the interpreter is missing or the worker exits before it is
                ready (``dgtrs-geo`` not installed there, broken torch, ...).
            BackendIncompatible: if its engine is another release than ``expected_version``.

        """
        # The lock is held until the worker is ready: a second caller (a token count on another
        # thread) waits here instead of talking to a worker that is still importing torch.
        with self._lock:
            if self.alive:
                return self.info
            if on_progress is not None:
                on_progress(None, "", "starting")
            started = time.monotonic()
            info = self._start()
            self.start_seconds = time.monotonic() - started
            self._check_version(info)
            return info

    def _check_version(self, info: Dict[str, Any]) -> None:
        """Refuse an engine of another release; note a patch-level difference."""
        if self.expected_version is None:
            return
        engine = info.get("version")
        mismatch = engine_mismatch(engine, self.expected_version)
        self.version_note = ""
        if mismatch == "minor":
            self.version_note = (
                "the backend runs dgtrs-geo {}, the plugin was built with {}; it works, but "
                "'Set up backend' installs the matching engine".format(
                    engine, self.expected_version
                )
            )
        elif mismatch == "major":
            self.close()
            raise BackendIncompatible(
                "the backend {} runs dgtrs-geo {}, but this plugin ({}) needs dgtrs-geo {}: the "
                "two talk a different request format. Open Plugins > DGTRS-Geo > Backend "
                "settings and click 'Set up backend' (installs the engine the plugin carries), "
                "or run '{} -m pip install dgtrs-geo=={}' in your own environment.".format(
                    self.command[0],
                    engine or "(unknown version)",
                    self.expected_version,
                    self.expected_version,
                    self.command[0],
                    self.expected_version,
                ),
                "BackendIncompatible",
            )

    def _start(self) -> Dict[str, Any]:
        """Spawn the worker and wait for its ``ready`` line (the caller holds the lock)."""
        if self._process is not None:
            self.restarts += 1
        self._ready = queue.Queue()
        self._stderr.clear()
        env = dict(os.environ)
        # QGIS points these at its own Python; the backend is another interpreter.
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        try:
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                # Not QGIS's working directory: a folder there named like a package would
                # shadow the installed one.
                cwd=tempfile.gettempdir(),
                text=True,
                encoding="utf-8",
                bufsize=1,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        except OSError as error:
            raise BackendUnavailable(
                "cannot run the backend interpreter {!r}: {}. Set the interpreter in the "
                "plugin settings, or use 'Set up backend'.".format(self.command[0], error),
                "BackendUnavailable",
            ) from error
        self._process = process
        # Each process reports to its own queue: a killed predecessor's exit is not this one's.
        threading.Thread(target=self._read_stdout, args=(process, self._ready), daemon=True).start()
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, args=(process,), daemon=True
        )
        self._stderr_thread.start()
        try:
            event = self._ready.get(timeout=self.start_timeout)
        except queue.Empty:
            self.kill()
            raise BackendUnavailable(
                "the backend did not start within {:.0f} s. {}".format(
                    self.start_timeout, self.stderr_tail()
                ),
                "BackendUnavailable",
            ) from None
        if event.get("event") != "ready":
            # Let the last words of the dying worker reach the report.
            self._stderr_thread.join(timeout=2)
            raise BackendUnavailable(
                "the backend {!r} exited while starting (code {}). {}\nOpen Plugins > DGTRS-Geo > "
                "Backend settings and click 'Set up backend' (installs the engine the plugin "
                "carries), or install dgtrs-geo into that interpreter ('{} -m pip install "
                "dgtrs-geo') or pick another one there.".format(
                    self.command[0], event.get("returncode"), self.stderr_tail(), self.command[0]
                ),
                "BackendUnavailable",
            )
        self.info = dict(event.get("result") or {})
        return self.info

    def kill(self) -> None:
        """Kill the worker now (hung or cancelled too slowly); pending requests fail."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def close(self, timeout: float = 3.0) -> None:
        """Ask the worker to shut down; kill it if it does not exit within ``timeout`` s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            self._write({"id": "shutdown", "op": "shutdown"})
            process.stdin.close()
            process.wait(timeout=timeout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.kill()

    def stderr_tail(self, lines: int = 12) -> str:
        """Return the last lines the worker wrote to stderr (for error reports)."""
        tail = list(self._stderr)[-lines:]
        return ("Backend output:\n" + "\n".join(tail)) if tail else ""

    # --- requests -----------------------------------------------------------------------------

    def request(
        self,
        op: str,
        params: Optional[Dict[str, Any]] = None,
        on_progress: Optional[ProgressCallback] = None,
        is_canceled: Optional[Callable[[], bool]] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Send one request and wait for its result, streaming progress and honouring cancel.

        Args:
            op: the worker operation (``ping``, ``diagnostics``, ``count_tokens``, ``index``,
                ``localize``).
            params: the operation's parameters (JSON-serialisable).
            on_progress: called with ``(fraction, message, stage)`` while the worker starts
                and for each progress event.
            is_canceled: polled about ten times a second; when it returns True the job is
                cancelled, and the worker is killed if it has not stopped within a second.
            timeout: seconds before the request is abandoned (the worker is killed).

        Returns:
            The ``result`` object of the worker's reply.

        Raises:
            BackendUnavailable: if the worker cannot start.
            WorkerCancelled: if the request was cancelled.
            WorkerCrashed: if the worker exited or hung meanwhile.
            WorkerError: if the worker reported an error.

        """
        self.start(on_progress)
        request_id = str(next(self._ids))
        replies: "queue.Queue[dict]" = queue.Queue()
        self._pending[request_id] = replies
        try:
            self._write({"id": request_id, "op": op, "params": params or {}})
            return self._wait(request_id, replies, on_progress, is_canceled, timeout)
        finally:
            self._pending.pop(request_id, None)

    def _wait(
        self,
        request_id: str,
        replies: "queue.Queue[dict]",
        on_progress: Optional[ProgressCallback],
        is_canceled: Optional[Callable[[], bool]],
        timeout: Optional[float],
    ) -> Dict[str, Any]:
        started = last_event = time.monotonic()
        cancel_deadline: Optional[float] = None
        ping_id: Optional[str] = None
        ping_sent = 0.0
        while True:
            try:
                event = replies.get(timeout=0.1)
            except queue.Empty:
                event = None
            now = time.monotonic()
            if event is not None:
                last_event = now
                kind = event.get("event")
                # Progress and pong fall through to the cancel check below: a worker that
                # streams progress without pause must not delay a cancel.
                if kind == "progress":
                    if on_progress is not None:
                        fraction = event.get("fraction")
                        on_progress(
                            None if fraction is None else float(fraction),
                            str(event.get("message", "")),
                            stage_of(event),
                        )
                elif kind == "pong":
                    ping_id = None
                elif kind == "result":
                    return dict(event.get("result") or {})
                if kind == "error":
                    error = event.get("error") or {}
                    cls = WorkerCancelled if error.get("type") == "Cancelled" else WorkerError
                    raise cls(str(error.get("message", "unknown error")), str(error.get("type")))
                elif kind == "exit":
                    self._stderr_thread.join(timeout=2)
                    raise WorkerCrashed(
                        "the backend worker stopped unexpectedly (exit code {}); it will be "
                        "restarted. {}".format(event.get("returncode"), self.stderr_tail()),
                        "WorkerCrashed",
                    )
            if cancel_deadline is None and is_canceled is not None and is_canceled():
                self._write(
                    {"id": "cancel-" + request_id, "op": "cancel", "params": {"target": request_id}}
                )
                cancel_deadline = now + CANCEL_GRACE_S
            if cancel_deadline is not None and now > cancel_deadline:
                self.kill()
                raise WorkerCancelled(
                    "cancelled; the backend did not stop in time and was restarted", "Cancelled"
                )
            if timeout is not None and now - started > timeout:
                self.kill()
                raise WorkerCrashed(
                    "the backend took longer than {:.0f} s and was stopped".format(timeout),
                    "WorkerCrashed",
                )
            if ping_id is None and now - last_event > QUIET_BEFORE_PING_S:
                ping_id = "ping-" + request_id
                self._write({"id": ping_id, "op": "ping"})
                ping_sent = now
            if ping_id is not None and now - ping_sent > PING_TIMEOUT_S:
                self.kill()
                raise WorkerCrashed(
                    "the backend stopped answering (no reply to a ping within {:.0f} s) and was "
                    "stopped; it will be restarted. {}".format(PING_TIMEOUT_S, self.stderr_tail()),
                    "WorkerCrashed",
                )

    def _write(self, payload: Dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        line = json.dumps(payload) + "\n"
        with self._write_lock:
            try:
                process.stdin.write(line)
                process.stdin.flush()
            except (OSError, ValueError):
                # A dead pipe shows up as the reader thread's ``exit`` event.
                pass

    # --- reader threads -------------------------------------------------------------------------

    def _read_stdout(self, process: subprocess.Popen, ready: "queue.Queue[dict]") -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self._stderr.append("(stdout) " + line[:500])
                continue
            if event.get("event") == "ready":
                ready.put(event)
                continue
            event_id = str(event.get("id"))
            if event_id.startswith("ping-"):
                # A liveness ping sent while waiting on a request: tell that request.
                event_id, event = event_id[len("ping-") :], {"event": "pong"}
            replies = self._pending.get(event_id)
            if replies is not None:
                replies.put(event)
        returncode = process.wait()
        exit_event = {"event": "exit", "returncode": returncode}
        ready.put(exit_event)
        if process is self._process:
            for replies in list(self._pending.values()):
                replies.put(exit_event)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._stderr.append(line.rstrip())
