"""A local HTTP server for tests that read remote files: GDAL's ``/vsicurl/``, downloads.

``serve_directory(path)`` serves a folder on 127.0.0.1 (an ephemeral port) from a background
thread for the length of a ``with`` block and yields its base URL. Files answer ``GET`` and
``HEAD`` with ``Content-Length``, ``Accept-Ranges: bytes`` and ``Last-Modified``; a single
``Range: bytes=...`` (``a-b``, ``a-`` or ``-n``) answers 206 with ``Content-Range``, an
unsatisfiable one 416, several ranges the whole file (200, which RFC 9110 allows), as GDAL's
``/vsicurl/`` expects. Pass a list as ``log`` to record each request as ``(method, path,
Range header or None, status)``, e.g. to check that a reader fetched byte ranges and not the
whole file::

    with serve_directory(tmp_path, log=requests) as url:
        with rasterio.open(f"/vsicurl/{url}/scene.tif") as src:
            ...
"""

from __future__ import annotations

import email.utils
import io
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["serve_directory"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _RangeRequestHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single byte ranges; quiet; logs to ``log`` if given."""

    def __init__(self, *args, log: list | None = None, **kwargs) -> None:
        self._log = log
        super().__init__(*args, **kwargs)

    def send_head(self):  # noqa: D102 - the base class's contract: headers sent, body returned
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()  # folders (listings) and 404s as the standard library does
        with open(path, "rb") as f:
            data = f.read()
        size = len(data)
        header = self.headers.get("Range")
        match = _RANGE.match(header.strip()) if header else None
        first, last = match.groups() if match else ("", "")
        if not (first or last) or (first and last and int(last) < int(first)):
            return self._send(HTTPStatus.OK, data, path)  # no range, or an invalid one: ignored
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(0, size - int(last)), size - 1
        if start >= size or end < start:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send(
            HTTPStatus.PARTIAL_CONTENT, data[start : end + 1], path, f"bytes {start}-{end}/{size}"
        )

    def _send(self, status: HTTPStatus, body: bytes, path: str, content_range: str | None = None):
        self.send_response(status)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(os.path.getmtime(path), usegmt=True))  # fmt: skip
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        return io.BytesIO(body)

    def send_response(self, code, message=None) -> None:  # noqa: D102
        if self._log is not None:
            self._log.append((self.command, self.path, self.headers.get("Range"), int(code)))
        super().send_response(code, message)

    def log_message(self, format: str, *args) -> None:  # noqa: A002, D102 - keep test output clean
        pass


@contextmanager
def serve_directory(path: str | Path, *, log: list | None = None) -> Iterator[str]:
    """Serve ``path`` over HTTP on 127.0.0.1 while the block runs; yield the base URL.

    Args:
        path: the folder to serve (its files are read at each request, so files written while
            the server runs are served too).
        log: if given, each request is appended as ``(method, path, range, status)``.

    Yields:
        ``http://127.0.0.1:PORT`` (no trailing slash).
    """
    handler = partial(_RangeRequestHandler, directory=str(path), log=log)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="serve_directory", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
