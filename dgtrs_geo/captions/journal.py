"""The append-only JSONL a caption run writes, and its index of done items.

The output manifest is its own journal: each finished item is appended as one line with one
``write`` on an ``O_APPEND`` descriptor and flushed, and nothing is ever rewritten. The index of
done ids is rebuilt from the file when a run starts, so file and index cannot disagree: a row
that reached the file is done, a row that did not is redone. A run killed in the middle of a
write leaves at most one partial last line; it is cut off when the journal is reopened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError

__all__ = ["Journal"]


class Journal:
    """An append-only JSONL file of rows keyed by ``id``.

    Args:
        path: the JSONL file; created (with its folder) if missing.

    Raises:
        InputError: if an existing complete line is not a JSON object with an ``id``: the file
            is not a journal of this pipeline, and appending to it would mix two things.
        OutputError: if the file or its folder cannot be created or written.

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.repaired_bytes = self._repair()
        except OSError as error:
            raise OutputError(
                f"cannot write the output {self.path} ({error.strerror or error}): choose a "
                "writable location"
            ) from error
        self.done: set[str] = set()
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    row = json.loads(line)
                    self.done.add(str(row["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(
                        f"{self.path}:{number} is not a row of a caption run; "
                        "write to a new output file"
                    ) from None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _repair(self) -> int:
        """Cut a partial last line left by a killed run; return how many bytes were cut."""
        if not self.path.exists():
            self.path.touch()
            return 0
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return 0
        os.truncate(self.path, end)
        return len(data) - end

    def append(self, row: dict[str, Any]) -> None:
        """Append ``row`` (which must carry an ``id``) as one line and mark it done."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        # a single write on O_APPEND lands whole or, if the process dies inside it, as a
        # partial last line that _repair() removes next time
        written = os.write(self._fd, line)
        while written < len(line):
            written += os.write(self._fd, line[written:])
        self.done.add(str(row["id"]))

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
