"""Prompt templates for zero-shot scene classification.

Three families, one per way remote-sensing captions name their source ("remote sensing image",
"aerial image", "satellite image"), each with the same 35 phrasings: 105 templates in all. Each
template holds one ``{}`` for the class name; in :data:`PHRASINGS`, ``{a_kind}`` is the source
noun with its article. The phrasings are this project's own.
"""

from __future__ import annotations

from ..errors import InputError

FAMILIES: tuple[str, ...] = ("remote sensing image", "aerial image", "satellite image")
"""The three source nouns; ``{kind}`` in :data:`PHRASINGS` takes each of them."""


def _with_article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


PHRASINGS: tuple[str, ...] = (
    "{a_kind} of {{}}.",
    "{a_kind} of a {{}}.",
    "{a_kind} of the {{}}.",
    "{a_kind} showing {{}}.",
    "{a_kind} showing a {{}}.",
    "{a_kind} that shows {{}}.",
    "{a_kind} containing {{}}.",
    "{a_kind} with {{}} in it.",
    "{a_kind} of {{}} seen from above.",
    "{a_kind} taken over {{}}.",
    "{a_kind} of an area of {{}}.",
    "{a_kind} of a scene of {{}}.",
    "{a_kind} of a place with {{}}.",
    "{a_kind} of some {{}}.",
    "a high resolution {kind} of {{}}.",
    "a low resolution {kind} of {{}}.",
    "a clear {kind} of {{}}.",
    "a blurry {kind} of {{}}.",
    "a bright {kind} of {{}}.",
    "a dark {kind} of {{}}.",
    "a cropped {kind} of {{}}.",
    "a close-up {kind} of {{}}.",
    "a small {kind} of {{}}.",
    "a large {kind} of {{}}.",
    "a top-down {kind} of {{}}.",
    "a colour {kind} of {{}}.",
    "a recent {kind} of {{}}.",
    "an old {kind} of {{}}.",
    "{a_kind} of {{}} on a sunny day.",
    "{a_kind} of {{}} in the countryside.",
    "{a_kind} of {{}} in a city.",
    "{{}} in {a_kind}.",
    "{{}}, as seen in {a_kind}.",
    "this {kind} shows {{}}.",
    "there is {{}} in this {kind}.",
)

TEMPLATES: tuple[str, ...] = tuple(
    phrasing.format(kind=kind, a_kind=_with_article(kind))
    for kind in FAMILIES
    for phrasing in PHRASINGS
)
"""All 105 templates, family by family."""


def prompts(classname: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Fill every template with one class name.

    Args:
        classname: the class name as it should read in a sentence ("dense residential").
        templates: templates with one ``{}`` each.

    Returns:
        One prompt per template, in order.

    """
    return [template.format(classname) for template in templates]


def read_templates(path: str) -> tuple[str, ...]:
    """Read prompt templates from a text file, one per line (blank lines and ``#`` skipped).

    Args:
        path: the file.

    Returns:
        The templates, in file order.

    Raises:
        InputError: if the file cannot be read, has no template or a line lacks exactly one
            ``{}`` (a ``ValueError`` too).

    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the templates file {path}: {error}") from error
    templates = tuple(line for line in lines if line and not line.startswith("#"))
    if not templates:
        raise InputError(f"{path} holds no template; write one per line, e.g. 'a photo of {{}}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise InputError(f"{path}: template {template!r} must hold exactly one {{}}")
    return templates
