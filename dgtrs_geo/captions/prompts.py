"""The pipeline's prompts, one versioned text file per step under ``prompts/``.

A file ``prompts/<step>-<version>.txt`` has a ``[system]`` and a ``[user]`` section. Fields are
written ``$name`` (``string.Template``), so JSON braces in a prompt need no escaping. A prompt
is never edited in place once rows were made with it: a change is a new version, and each row
records the version that wrote it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .sources import MissingInputError

__all__ = ["PROMPT_DIR", "Prompt", "load_prompt"]

PROMPT_DIR = Path(__file__).parent / "prompts"

_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    """A step's prompt, ready to be filled in.

    Args:
        step: the step it belongs to.
        version: its version, e.g. ``"v1"``.
        system: the system message template.
        user: the user message template.

    """

    step: str
    version: str
    system: str
    user: str

    @property
    def name(self) -> str:
        """The prompt's identity as rows record it, e.g. ``"long-v1"``."""
        return f"{self.step}-{self.version}"

    def render(self, **fields: object) -> tuple[str, str]:
        """Return the (system, user) texts with ``fields`` filled in.

        Raises:
            InputError: if the prompt uses a field that is not given (a ``ValueError`` too).

        """
        try:
            return (
                string.Template(self.system).substitute(fields),
                string.Template(self.user).substitute(fields),
            )
        except KeyError as error:
            raise InputError(
                f"prompt {self.name} needs field {error.args[0]!r}; given {sorted(fields)}"
            ) from None


def load_prompt(step: str, version: str = "v1", directory: str | Path | None = None) -> Prompt:
    """Read the prompt of ``step`` at ``version``.

    Args:
        step: one of the pipeline's steps (``long``, ``short``, ``masks``, ``score``).
        version: the prompt version.
        directory: folder holding prompt files; the packaged prompts by default, so users can
            point a run at their own edited copies.

    Returns:
        The prompt.

    Raises:
        MissingInputError: if there is no such prompt file (the message lists the ones there are;
            a ``FileNotFoundError`` too).
        InputError: if the file lacks a ``[system]`` or ``[user]`` section.

    """
    directory = Path(directory) if directory is not None else PROMPT_DIR
    path = directory / f"{step}-{version}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in directory.glob(f"{step}-*.txt"))
        raise MissingInputError(f"no prompt file {path}; prompts for {step!r}: {have}")
    parts = _SECTION.split(path.read_text(encoding="utf-8"))
    # split() gives [preamble, name, body, name, body, ...]
    sections = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    missing = {"system", "user"} - set(sections)
    if missing:
        raise InputError(f"prompt file {path} lacks section(s) {sorted(missing)}")
    return Prompt(step=step, version=version, system=sections["system"], user=sections["user"])
