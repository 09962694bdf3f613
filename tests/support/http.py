"""A local HTTP server for tests that read remote files: GDAL's ``/vsicurl/``, downloads.

``serve_directory(path)`` serves a folder on 127.0.0.1 (an ephemeral port) for the length of a
``with`` block and yields its base URL. The server (one thread per connection) runs in a child
process: rasterio holds the GIL while GDAL opens a dataset, so a server thread in the test's own
process would never answer GDAL's first request and the test would hang. Files answer ``GET`` and
``HEAD`` with ``Content-Length``, ``Accept-Ranges: bytes`` and ``Last-Modified``; a single
``Range: bytes=...`` (``a-b``, ``a-`` or ``-n``) answers 206 with ``Content-Range``, an
unsatisfiable one 416, several ranges the whole file (200, which RFC 9110 allows), as GDAL's
``/vsicurl/`` expects. Pass a list as ``log`` to record each request as ``(method, path,
Range header or None, status)`` (filled in when the block ends), e.g. to check that a reader
fetched byte ranges and not the whole file::

    with serve_directory(tmp_path, log=requests) as url:
        with rasterio.open(f"/vsicurl/{url}/scene.tif") as src:
            ...
"""

from __future__ import annotations

import email.utils
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TextIO

__all__ = ["serve_directory"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _RangeRequestHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single byte ranges; quiet; logs to ``log`` if given."""

    def __init__(self, *args, log: TextIO | None = None, **kwargs) -> None:
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
            entry = [self.command, self.path, self.headers.get("Range"), int(code)]
            self._log.write(json.dumps(entry) + "\n")
        super().send_response(code, message)

    def log_message(self, format: str, *args) -> None:  # noqa: A002, D102 - keep test output clean
        pass


@contextmanager
def serve_directory(path: str | Path, *, log: list | None = None) -> Iterator[str]:
    """Serve ``path`` over HTTP on 127.0.0.1 while the block runs; yield the base URL.

    Args:
        path: the folder to serve (its files are read at each request, so files written while
            the server runs are served too).
        log: if given, each request is appended as ``(method, path, range, status)`` when the
            block ends.

    Yields:
        ``http://127.0.0.1:PORT`` (no trailing slash).
    """
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "requests.jsonl"
        # -P: this file's folder stays off sys.path, where its name would hide the stdlib's http.
        child = subprocess.Popen(
            [sys.executable, "-P", __file__, str(path), str(log_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            port = child.stdout.readline().strip()
            if not port.isdigit():
                raise RuntimeError(f"the test HTTP server did not start: {child.stderr.read()}")
            yield f"http://127.0.0.1:{port}"
        finally:
            child.terminate()
            child.communicate(timeout=30)
        if log is not None and log_file.exists():
            log.extend(tuple(json.loads(line)) for line in log_file.read_text().splitlines())


def _serve(directory: str, log_path: str) -> None:
    """The child process: serve until terminated; print the port once listening."""
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        handler = partial(_RangeRequestHandler, directory=directory, log=log)
        with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
            server.daemon_threads = True
            signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())  # fmt: skip
            print(server.server_address[1], flush=True)
            server.serve_forever()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
