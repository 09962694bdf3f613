"""A chat-completions server on 127.0.0.1 with scripted answers and injected faults.

It answers the four caption prompts deterministically from the request itself (the long caption
repeats the short-caption hint, the short caption repeats the long caption's first sentence),
so a test can check that every row got the answer to its own request. Faults are scripted per
item: a ``faults`` entry maps a substring of the request (e.g. an item's short caption) to the
list of behaviours its successive requests get: ``"429"``, ``"500"``, ``"slow"`` (waits
``slow_seconds`` before answering), ``"badjson"`` (a cut-off response body), ``"malformed"``
(a valid body whose answer is prose, not the asked JSON), ``"toolong"`` (a long caption over
248 CLIP tokens), ``"401"`` and ``"ok"``. Requests past the end of a list are answered normally.

Run as a script to measure the pipeline's rows per second against it:
``python scripted_server.py --items 200 --concurrency 8 --latency 0.05``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FILLER = (
    "The scene is seen from directly above in clear daylight, with sharp shadows falling to the "
    "north-west and every roof, lane marking and tree crown distinct against the ground around it."
)


def _user_text(request: dict) -> str:
    """Return the text of the last user message."""
    content = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content)


def answer(request: dict, toolong: bool = False) -> str:
    """Return the scripted answer text to a caption request."""
    text = _user_text(request)
    padding = " " + " ".join([FILLER] * 8) if toolong else ""
    if "CLIP tokens but the limit" in text:
        return json.dumps({"caption_long": "A shortened description. " + FILLER + padding})
    if "as a hint" in text:
        hint = re.search(r'as a hint:\n"(.*)"', text).group(1)
        return json.dumps({"caption_long": f"{hint[0].upper()}{hint[1:]}. {FILLER}{padding}"})
    if "Compress this description" in text:
        long = re.search(r'spatial relation:\n"(.*)"', text, re.S).group(1)
        return json.dumps({"caption_short": long.split(". ")[0].rstrip(".").lower()})
    if "labelled by a segmentation mask" in text:
        lines = re.findall(r"^- (\w[\w ]*): ([\d.]+)% of the image, (.*)$", text, re.M)
        names = [name for name, _, _ in lines]
        long = " ".join(f"The {n} covers {p}% of the image, {where}." for n, p, where in lines)
        return json.dumps(
            {"caption_short": "an image of " + " and ".join(names), "caption_long": long}
        )
    if '"accuracy"' in text:
        return json.dumps({"accuracy": 4, "detail": 3, "consistency": 5, "fluency": 4})
    return "I do not know this prompt."


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 refuses connections when many workers connect at once


class ScriptedServer:
    """A threaded chat-completions server with scripted faults, used as a context manager.

    Args:
        faults: substring of a request -> behaviours of its successive requests.
        latency: seconds every answer waits (a model's generation time).
        slow_seconds: seconds a ``"slow"`` answer waits.
        retry_after: the ``Retry-After`` header of a ``"429"`` answer.
    """

    def __init__(
        self,
        faults: dict[str, list[str]] | None = None,
        latency: float = 0.0,
        slow_seconds: float = 2.0,
        retry_after: str = "0",
    ) -> None:
        self.faults = {key: list(value) for key, value in (faults or {}).items()}
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.hits: Counter = Counter()  # requests per fault key
        self.served: Counter = Counter()  # answers by behaviour
        self.requests: list[dict] = []  # every request body, in arrival order
        self.auth: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0  # most requests handled at once
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The API root to give as ``base_url``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _behaviour(self, raw: str) -> str:
        with self._lock:
            for key, script in self.faults.items():
                if key in raw:
                    self.hits[key] += 1
                    behaviour = script.pop(0) if script else "ok"
                    break
            else:
                behaviour = "ok"
            self.served[behaviour] += 1
            return behaviour

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before the slow answer came

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                request = json.loads(raw)
                with server._lock:
                    server.requests.append(request)
                    server.auth.add(self.headers.get("Authorization", ""))
                behaviour = server._behaviour(raw)
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(request, behaviour)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, request: dict, behaviour: str) -> None:
                time.sleep(server.latency)
                match behaviour:
                    case "429":
                        return self._send(
                            429, b'{"error": "rate limited"}', {"Retry-After": server.retry_after}
                        )
                    case "401":
                        return self._send(401, b'{"error": "invalid api key"}')
                    case "500":
                        return self._send(500, b'{"error": "internal error"}')
                    case "badjson":
                        return self._send(200, b'{"choices": [{"message": {"content": "{\\"capt')
                    case "slow":
                        time.sleep(server.slow_seconds)
                content = answer(request, toolong=behaviour == "toolong")
                if behaviour == "malformed":
                    content = "Sure! Here is a nice caption for your image."
                body = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": request["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                }
                return self._send(200, json.dumps(body).encode())

        return Handler

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _bench() -> None:
    import argparse
    import sys
    import tempfile
    from pathlib import Path

    from PIL import Image

    from dgtrs_geo.captions import count_clip_tokens, load_config, read_manifest, run_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--step", default="long", choices=["long", "short", "score"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(latency=args.latency) as server:
        folder = Path(tmp)
        Image.new("RGB", (64, 64), (90, 120, 60)).save(folder / "tile.png")
        rows = [
            {
                "id": f"item-{i}",
                "image": "tile.png",
                "caption_short": f"item {i}: a field beside a road",
                "caption_long": f"Item {i} shows a field. A road runs beside it.",
            }
            for i in range(args.items)
        ]
        (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = load_config(base_url=server.url, concurrency=args.concurrency)
        count_clip_tokens("load the BPE vocabulary before the clock starts")
        summary = run_step(
            args.step,
            read_manifest(folder / "in.jsonl"),
            folder / "out.jsonl",
            config,
            progress=False,
        )
        json.dump({**summary.as_dict(), "latency": args.latency}, sys.stdout)
        print()


if __name__ == "__main__":
    _bench()
