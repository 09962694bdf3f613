"""Large synthetic scenes with text queries and ground-truth polygons, in the AIR-SLT style.

A scene (1024 to 2048 px and more) is a textured ground (one of :data:`~.synthetic.BACKGROUNDS`,
often with a large patch of a second one) strewn with dull clutter blocks and with flat shapes in
the colours and shapes of :mod:`~.synthetic` (:class:`~.synthetic.SceneObject`), of varied sizes.
Each scene carries queries about one object or a group of identical objects: a short one ("two
red circles on green grass") and a long one that opens with text true of every scene and states
the decisive facts only after token ``late_token`` (77 by default, CLIP's context), so a 77-token
text tower cannot read them. Distractors share the targets' colour (other shape), shape (other
colour) or both (on the other ground), so colour alone does not localize a query.

:func:`write_airslt` writes scenes as an AIR-SLT folder (``imgs/*.jpg`` and
``annotations/anno.json``) that :class:`~.airslt.AIRSLT` and ``dgtrs-geo evaluate selo`` read
as they are. :class:`SyntheticSeLoWindows` renders training chips that look like the windows
localization cuts from such scenes (any of the window sizes, anywhere), with captions in the
queries' templates. A scene is a pure function of its seed and can be rendered at any scale or
over any window, so chips are drawn without rendering the whole scene.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from matplotlib.path import Path as PolygonPath
from PIL import Image, ImageDraw
from torchgeo.datasets import NonGeoDataset

from .synthetic import BACKGROUNDS, COLOURS, SHAPES, SceneObject, count_tokens
from .utils import CaptionPlotMixin

#: Count words of a group of identical objects.
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
#: Brightness texture per ground: (coarse, fine) amplitude; coarse cells 48 px, fine cells 12 px.
TEXTURE: dict[str, tuple[float, float]] = {
    "green grass": (14.0, 9.0),
    "yellow sand": (9.0, 5.0),
    "blue water": (6.0, 2.5),
    "grey concrete": (6.0, 6.0),
}
#: Clutter (roofs, cars, bushes): dull colours apart from every object colour.
CLUTTER_COLOURS = ((96, 84, 72), (62, 74, 52), (150, 142, 132), (112, 92, 84), (84, 84, 92))
#: Sentences true of every scene and every window: the long texts' opening before the facts.
GENERIC_SENTENCES = (
    "The picture is taken from directly above, like an orthophoto.",
    "The light is even and there are no clouds or shadows over the area.",
    "The ground has a fine, slightly uneven texture all over.",
    "Small dull blocks of grey and brown are scattered over the ground.",
    "Each coloured object is a flat solid shape painted in a single colour.",
    "The objects lie flat on the ground and do not touch or overlap each other.",
    "There is nothing written on the ground and there are no other markings.",
    "The colours are natural and the image is sharp from corner to corner.",
    "No people can be recognised at this resolution.",
    "The borders of the image cut the ground without any frame.",
)
_CELLS = (48.0, 12.0)
_GAP = 24.0  # free pixels kept between objects
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SeLoQuery:
    """One query of a scene.

    Attributes:
        caption: the text.
        kind: ``"short"`` or ``"long"``.
        target: the decisive phrase, e.g. ``"two red circles on green grass"``.
        polygons: the ground-truth polygons (pixel x, y), one per target object.
        late_start: token position (start-of-text = 0) where the decisive facts start.
    """

    caption: str
    kind: str
    target: str
    polygons: tuple[Polygon, ...]
    late_start: int


@dataclass(frozen=True)
class SeLoScene:
    """A large scene: its layout, objects and queries (the pixels come from :func:`render`).

    Attributes:
        width: width in pixels.
        height: height in pixels.
        ground: the main ground (a key of :data:`~.synthetic.BACKGROUNDS`).
        patch: a second ground and its outline, or ``None``.
        objects: the coloured shapes.
        grounds: the ground under each object.
        rgb: each object's drawn colour (its colour name's RGB, slightly jittered).
        clutter: ``(x, y, w, h, colour index)`` of each clutter block.
        seed: the seed of the texture.
        queries: the queries, short and long per target.
    """

    width: int
    height: int
    ground: str
    patch: tuple[str, Polygon] | None
    objects: tuple[SceneObject, ...]
    grounds: tuple[str, ...]
    rgb: tuple[tuple[int, int, int], ...]
    clutter: tuple[tuple[float, float, float, float, int], ...]
    seed: int
    queries: tuple[SeLoQuery, ...]

    def ground_at(self, x: float, y: float) -> str:
        """The ground under pixel ``(x, y)``."""
        return _ground_at(self.ground, self.patch, x, y)


def _ground_at(ground: str, patch: tuple[str, Polygon] | None, x: float, y: float) -> str:
    if patch is not None and PolygonPath(patch[1]).contains_point((x, y)):
        return patch[0]
    return ground


def phrase(colour: str, shape: str, ground: str, count: int = 1) -> str:
    """Describe a group of identical objects, e.g. ``"two red circles on green grass"``.

    Args:
        colour: a key of :data:`~.synthetic.COLOURS`.
        shape: one of :data:`~.synthetic.SHAPES`.
        ground: a key of :data:`~.synthetic.BACKGROUNDS`.
        count: how many (1 to 3).

    Returns:
        The phrase.
    """
    return f"{COUNT_WORDS[count]} {colour} {shape}{'s' if count > 1 else ''} on {ground}"


def long_text(
    opening: str,
    facts: Sequence[str],
    rng: np.random.Generator,
    late_token: int = 77,
    max_tokens: int = 248,
) -> tuple[str, int]:
    """A long text whose ``facts`` start at or after token ``late_token``.

    Args:
        opening: the first sentence (scene-level context, not decisive).
        facts: the decisive sentences, kept in order while they fit in ``max_tokens``.
        rng: draws the order of the generic sentences that fill the text up to ``late_token``.
        late_token: token position (start-of-text = 0) before which no fact appears.
        max_tokens: token budget (start and end tokens included).

    Returns:
        The text and the token position where the facts start.

    Raises:
        ValueError: if the generic sentences cannot reach ``late_token`` or the first fact does
            not fit.
    """
    early = [opening]
    filler = [GENERIC_SENTENCES[i] for i in rng.permutation(len(GENERIC_SENTENCES))]
    used = 1 + _tokens(opening)  # start-of-text, then the text: the next token's position
    while used < late_token:
        if not filler:
            raise ValueError(f"late_token={late_token} is beyond what the generic text can fill")
        early.append(filler.pop())
        used += _tokens(early[-1])
    text, late_start = " ".join(early), used
    for index, sentence in enumerate(facts):
        if used + _tokens(sentence) + 1 > max_tokens:
            if index == 0:
                raise ValueError(f"the facts do not fit in {max_tokens} tokens: {sentence!r}")
            break
        text, used = f"{text} {sentence}", used + _tokens(sentence)
    return text, late_start


@functools.lru_cache(maxsize=4096)
def _tokens(sentence: str) -> int:
    """BPE tokens of a sentence, start and end not counted."""
    # CLIP's BPE splits at spaces first: a text's tokens are the sum of its sentences' tokens.
    return count_tokens(sentence) - 2


def _fact(target: str, count: int) -> str:
    return f"The main object{'s are' if count > 1 else ' is'} {target}."


def _blob(rng: np.random.Generator, width: int, height: int) -> Polygon:
    """A smooth irregular outline covering roughly a sixth to a third of the scene."""
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    radius = rng.uniform(0.25, 0.35) * min(width, height)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = sum(
        rng.uniform(0.05, 0.15) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    radii = radius * (1 + wobble)
    return tuple(
        (float(cx + r * math.cos(a)), float(cy + r * math.sin(a)))
        for r, a in zip(radii, angles, strict=True)
    )


def _place(
    rng: np.random.Generator,
    scene: dict[str, Any],
    colour: str,
    shape: str,
    ground: str,
    object_size: tuple[float, float],
) -> bool:
    """Add one object on ``ground``, clear of the others; False if no place was found."""
    half = float(rng.uniform(*object_size))
    size = "large" if half > sum(object_size) / 2 else "small"
    for _ in range(200):
        x = float(rng.uniform(half + 2, scene["width"] - half - 2))
        y = float(rng.uniform(half + 2, scene["height"] - half - 2))
        obj = SceneObject(colour, shape, size, x, y, half)
        clear = all(math.hypot(x - o.x, y - o.y) > half + o.half + _GAP for o in scene["objects"])
        if clear and all(scene["ground_at"](*v) == ground for v in obj.polygon(8)):
            jitter = rng.integers(-12, 13, 3)
            scene["objects"].append(obj)
            scene["grounds"].append(ground)
            rgb = np.clip(np.add(COLOURS[colour], jitter), 0, 255)
            scene["rgb"].append(tuple(int(c) for c in rgb))
            return True
    return False


def _targets_and_distractors(
    rng: np.random.Generator,
    scene: dict[str, Any],
    grounds: Sequence[str],
    num_targets: int,
    object_size: tuple[float, float],
) -> list[tuple[str, str, str]]:
    """Place target groups and their distractors; return the targets' (colour, shape, ground)."""
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = [kinds[i] for i in rng.choice(len(kinds), size=num_targets, replace=False)]
    targets = []
    for colour, shape in chosen:
        ground = str(rng.choice(grounds))
        count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        placed = sum(_place(rng, scene, colour, shape, ground, object_size) for _ in range(count))
        if placed:
            targets.append((colour, shape, ground))
    taken = set(chosen)
    for colour, shape, ground in targets:
        # Same colour other shape, same shape other colour, same kind on the other ground.
        other_shape = str(rng.choice([s for s in SHAPES if (colour, s) not in taken]))
        other_colour = str(rng.choice([c for c in COLOURS if (c, shape) not in taken]))
        options = [(colour, other_shape, ground), (other_colour, shape, ground)]
        options += [(colour, shape, g) for g in grounds if g != ground]
        for distractor in options:
            if rng.random() < 0.7:
                _place(rng, scene, *distractor, object_size)
    return targets


def _queries(
    scene: dict[str, Any],
    targets: Sequence[tuple[str, str, str]],
    rng: np.random.Generator,
    late_token: int,
    max_tokens: int,
) -> tuple[SeLoQuery, ...]:
    grounds = " and ".join(dict.fromkeys([scene["ground"], *scene["grounds"]]))
    opening = f"An aerial image of {grounds} with coloured objects, seen from above."
    queries = []
    for colour, shape, ground in targets:
        members = [
            o
            for o, g in zip(scene["objects"], scene["grounds"], strict=True)
            if (o.colour, o.shape, g) == (colour, shape, ground)
        ]
        target = phrase(colour, shape, ground, len(members))
        polygons = tuple(tuple(o.polygon()) for o in members)
        fact = _fact(target, len(members))
        text, late_start = long_text(opening, [fact], rng, late_token, max_tokens)
        queries.append(SeLoQuery(target, "short", target, polygons, 0))
        queries.append(SeLoQuery(text, "long", target, polygons, late_start))
    return tuple(queries)


def _clutter(rng: np.random.Generator, width: int, height: int) -> tuple:
    count = int(round(40 * width * height / 1024**2))
    return tuple(
        (
            float(rng.uniform(0, width)),
            float(rng.uniform(0, height)),
            float(rng.uniform(6, 28)),
            float(rng.uniform(6, 28)),
            int(rng.integers(len(CLUTTER_COLOURS))),
        )
        for _ in range(count)
    )


def make_scene(
    seed: int | Sequence[int],
    width: int = 1024,
    height: int = 1024,
    num_targets: int = 2,
    object_size: tuple[float, float] = (32.0, 96.0),
    patch_probability: float = 0.7,
    late_token: int = 77,
    max_tokens: int = 248,
) -> SeLoScene:
    """Lay out one large scene and its queries.

    Args:
        seed: seed (or seed sequence) that fixes everything about the scene.
        width: width in pixels.
        height: height in pixels.
        num_targets: object groups that queries describe (each gets a short and a long query).
        object_size: range of the objects' half extent in pixels.
        patch_probability: chance of a patch of a second ground.
        late_token: token position from which long queries state their decisive facts.
        max_tokens: token budget of long queries.

    Returns:
        The scene.

    Raises:
        ValueError: if the scene is too small for its objects or an argument is out of range.
    """
    if not 1 <= num_targets <= len(COLOURS) * len(SHAPES) // 2:
        raise ValueError(f"num_targets={num_targets} must be between 1 and 9")
    if min(width, height) < 6 * object_size[1]:
        raise ValueError(
            f"a {width} x {height} scene is too small for objects of half extent up to "
            f"{object_size[1]} px: make it at least {int(6 * object_size[1])} px"
        )
    rng = np.random.default_rng(seed)
    names = list(BACKGROUNDS)
    ground = names[rng.integers(len(names))]
    patch = None
    if rng.random() < patch_probability:
        other = [n for n in names if n != ground]
        patch = (other[rng.integers(len(other))], _blob(rng, width, height))
    scene: dict[str, Any] = {
        "width": width, "height": height, "ground": ground,
        "ground_at": functools.partial(_ground_at, ground, patch),
        "objects": [], "grounds": [], "rgb": [],
    }  # fmt: skip
    grounds = [ground] if patch is None else [ground, patch[0]]
    targets = _targets_and_distractors(rng, scene, grounds, num_targets, object_size)
    if not targets:
        raise ValueError(f"no target fits in a {width} x {height} scene; make it larger")
    return SeLoScene(
        width=width,
        height=height,
        ground=ground,
        patch=patch,
        objects=tuple(scene["objects"]),
        grounds=tuple(scene["grounds"]),
        rgb=tuple(scene["rgb"]),
        clutter=_clutter(rng, width, height),
        seed=int(rng.integers(2**31)),
        queries=_queries(scene, targets, rng, late_token, max_tokens),
    )


def _bilinear(grid: np.ndarray, xs: np.ndarray, ys: np.ndarray, cell: float) -> np.ndarray:
    """Values of a grid spaced ``cell`` px, linearly interpolated at columns xs and rows ys."""

    def split(coords: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
        position = np.clip(coords / cell, 0, cells - 1.001)
        low = np.floor(position).astype(int)
        return low, position - low

    (row, dy), (col, dx) = split(ys, grid.shape[0]), split(xs, grid.shape[1])
    row, dy, col, dx = row[:, None], dy[:, None], col[None, :], dx[None, :]
    top = grid[row, col] * (1 - dx) + grid[row, col + 1] * dx
    bottom = grid[row + 1, col] * (1 - dx) + grid[row + 1, col + 1] * dx
    return top * (1 - dy) + bottom * dy


def _texture(
    scene: SeLoScene, name: str, xs: np.ndarray, ys: np.ndarray, scale: float
) -> np.ndarray:
    """The textured ground ``name`` sampled at pixel centres ``xs`` x ``ys`` (scene pixels)."""
    rng = np.random.default_rng((scene.seed, list(BACKGROUNDS).index(name)))
    field = np.zeros((len(ys), len(xs)))
    for cell, amplitude in zip(_CELLS, TEXTURE[name], strict=True):
        grid = rng.normal(0, amplitude, (int(scene.height / cell) + 2, int(scene.width / cell) + 2))
        field += _bilinear(grid, xs, ys, cell)
    # Per-pixel noise averages out when a window is shrunk: scale it down with the window.
    key = (scene.seed, 99, int(xs[0] * 16), int(ys[0] * 16), len(xs), len(ys))
    noise = np.random.default_rng(key).normal(0, 5.0 * min(1.0, scale), (len(ys), len(xs), 3))
    base = np.asarray(BACKGROUNDS[name], dtype=np.float64)
    return base + field[..., None] + noise


def render(
    scene: SeLoScene,
    window: tuple[float, float, float, float] | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Draw a scene, or one window of it, at any resolution.

    Args:
        scene: the scene.
        window: ``(x, y, width, height)`` in scene pixels (default: the whole scene).
        size: output ``(width, height)`` in pixels (default: the window's size).

    Returns:
        uint8 ``[H, W, 3]`` RGB.
    """
    x0, y0, w, h = window if window is not None else (0, 0, scene.width, scene.height)
    out_w, out_h = size if size is not None else (int(round(w)), int(round(h)))
    scale = out_w / w
    xs = x0 + (np.arange(out_w) + 0.5) / scale
    ys = y0 + (np.arange(out_h) + 0.5) * (h / out_h)

    def to_out(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [((x - x0) * scale, (y - y0) * out_h / h) for x, y in points]

    pixels = _texture(scene, scene.ground, xs, ys, scale)
    if scene.patch is not None:
        mask = Image.new("L", (out_w, out_h), 0)
        ImageDraw.Draw(mask).polygon(to_out(scene.patch[1]), fill=255)
        inside = np.asarray(mask)[..., None] > 0
        pixels = np.where(inside, _texture(scene, scene.patch[0], xs, ys, scale), pixels)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for cx, cy, cw, ch, colour in scene.clutter:
        corners = to_out([(cx, cy), (cx + cw, cy + ch)])
        draw.rectangle([corners[0], corners[1]], fill=CLUTTER_COLOURS[colour])
    for obj, rgb in zip(scene.objects, scene.rgb, strict=True):
        draw.polygon(to_out(obj.polygon()), fill=rgb)
    return np.asarray(image)


def window_captions(
    scene: SeLoScene,
    window: tuple[float, float, float, float],
    rng: np.random.Generator,
    late_token: int = 77,
    max_tokens: int = 248,
) -> tuple[str, str]:
    """Short and long captions of a window, in the templates of the scene's queries.

    The main object is the group of identical objects (same colour, shape and ground) with the
    largest area mostly inside the window; the long caption also names the other groups after
    it. A window with no object mostly inside is captioned by its ground.

    Args:
        scene: the scene.
        window: ``(x, y, width, height)`` in scene pixels.
        rng: draws the order of the long caption's generic sentences.
        late_token: token position from which the long caption states its facts.
        max_tokens: token budget of the long caption.

    Returns:
        ``(short, long)``.
    """
    x0, y0, w, h = window
    groups: dict[tuple[str, str, str], list[float]] = {}
    for obj, ground in zip(scene.objects, scene.grounds, strict=True):
        side = 2 * obj.half
        inside_x = max(0.0, min(obj.x + obj.half, x0 + w) - max(obj.x - obj.half, x0))
        inside_y = max(0.0, min(obj.y + obj.half, y0 + h) - max(obj.y - obj.half, y0))
        if inside_x * inside_y >= 0.6 * side * side:
            groups.setdefault((obj.colour, obj.shape, ground), []).append(side * side)
    ground = scene.ground_at(x0 + w / 2, y0 + h / 2)
    if not groups:
        opening = f"An aerial image of {ground}, seen from above."
        fact = f"There is no coloured object, only {ground}."
        long = long_text(opening, [fact], rng, late_token, max_tokens)[0]
        return f"an aerial image of {ground}", long
    ordered = sorted(groups.items(), key=lambda item: -sum(item[1]))
    phrases = [phrase(*key, min(len(areas), 3)) for key, areas in ordered]
    facts = [_fact(phrases[0], len(ordered[0][1]))]
    facts += [f"There is also {p}." for p in phrases[1:]]
    grounds = " and ".join(dict.fromkeys([ground, *(key[2] for key, _ in ordered)]))
    opening = f"An aerial image of {grounds} with coloured objects, seen from above."
    return phrases[0], long_text(opening, facts, rng, late_token, max_tokens)[0]


def write_airslt(root: str | Path, scenes: Sequence[SeLoScene], quality: int = 95) -> Path:
    """Write scenes as an AIR-SLT folder: ``imgs/scene_NNN.jpg`` and ``annotations/anno.json``.

    Each query becomes one ``anno.json`` entry ``{caption, jpg_name, points}`` (points: its
    target polygons in pixel x, y), with the extra keys ``kind`` and ``target``, which AIR-SLT
    readers ignore. Files are written under temporary names and renamed.

    Args:
        root: the folder (created).
        scenes: the scenes, numbered in order.
        quality: JPEG quality.

    Returns:
        The path of ``anno.json``.
    """
    root = Path(root)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    entries = []
    for number, scene in enumerate(scenes):
        name = f"scene_{number:03d}.jpg"
        partial = root / "imgs" / f".{name}.partial"
        Image.fromarray(render(scene)).save(partial, format="JPEG", quality=quality)
        os.replace(partial, root / "imgs" / name)
        entries += [
            {
                "caption": q.caption,
                "jpg_name": name,
                "points": [[[round(x, 2), round(y, 2)] for x, y in p] for p in q.polygons],
                "kind": q.kind,
                "target": q.target,
            }
            for q in scene.queries
        ]
    path = root / "annotations" / "anno.json"
    partial = path.with_name(".anno.json.partial")
    partial.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    os.replace(partial, path)
    return path


@functools.lru_cache(maxsize=2048)
def _cached_scene(seed: tuple[int, ...], width: int, options: tuple) -> SeLoScene:
    return make_scene(seed, width, width, *options)


class SyntheticSeLoWindows(CaptionPlotMixin, NonGeoDataset):
    """Chips that look like the windows localization cuts from large synthetic scenes.

    Each chip is a square window of one of ``scales`` (pixels of a ``scene_size`` scene made by
    :func:`make_scene`), placed anywhere (or, with probability ``object_bias``, around one of the
    scene's objects), rendered at ``chip_size`` pixels. Captions follow the queries' templates
    (:func:`window_captions`): the short one names the main object or group and its ground; the
    long one states the facts only after token ``late_token``. Consecutive indexes share a scene
    (``windows_per_scene``). Chips are a pure function of ``(seed, split, index)``.

    Sample keys: ``image`` (float [3, chip_size, chip_size], 0..255), ``caption_short``,
    ``caption_long``.
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(
        self,
        split: str = "train",
        length: int = 1000,
        scene_size: int = 1024,
        scales: Sequence[int] = (256, 512, 768),
        chip_size: int = 64,
        object_size: tuple[float, float] = (32.0, 96.0),
        object_bias: float = 0.6,
        windows_per_scene: int = 8,
        late_token: int = 77,
        max_tokens: int = 248,
        seed: int = 0,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Initialize a new SyntheticSeLoWindows instance.

        Args:
            split: one of "train", "val", "test"; each split draws different scenes.
            length: number of chips.
            scene_size: side of the scenes the windows are cut from, in pixels.
            scales: window sides in scene pixels (localization's window sizes).
            chip_size: side of the rendered chip in pixels.
            object_size: range of the objects' half extent in scene pixels.
            object_bias: chance that a window is placed around an object.
            windows_per_scene: consecutive chips cut from one scene.
            late_token: token position from which long captions state their facts.
            max_tokens: token budget of long captions.
            seed: seed of the whole dataset.
            transforms: a function/transform that takes a sample and returns a transformed
                version.

        Raises:
            ValueError: if ``split`` is unknown or a size is out of range.
        """
        if split not in self.splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {self.splits}.")
        if length < 1 or chip_size < 8 or not scales or max(scales) > scene_size:
            raise ValueError(
                f"length={length} must be >= 1, chip_size={chip_size} >= 8 and the scales "
                f"{list(scales)} at most scene_size={scene_size}"
            )
        self.split, self.length, self.seed = split, length, seed
        self.scene_size, self.scales, self.chip_size = scene_size, tuple(scales), chip_size
        self.object_bias, self.windows_per_scene = object_bias, windows_per_scene
        self.late_token, self.max_tokens = late_token, max_tokens
        self.options = (2, tuple(object_size), 0.7, late_token, max_tokens)
        self.transforms = transforms

    def __len__(self) -> int:
        """Return the number of chips.

        Returns:
            Length of the dataset.
        """
        return self.length

    def window(self, index: int) -> tuple[SeLoScene, tuple[float, float, float, float]]:
        """The scene and the window ``(x, y, width, height)`` of chip ``index``.

        Args:
            index: index of the chip.

        Returns:
            The scene and the window in its pixels.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} chips.")
        number = index // self.windows_per_scene
        scene = _cached_scene(
            (self.seed, _SPLIT_SEEDS[self.split], number), self.scene_size, self.options
        )
        rng = np.random.default_rng((self.seed, _SPLIT_SEEDS[self.split], number, index))
        side = float(rng.choice(self.scales))
        limit = self.scene_size - side
        if scene.objects and rng.random() < self.object_bias:
            obj = scene.objects[rng.integers(len(scene.objects))]
            x = np.clip(obj.x - side / 2 + rng.uniform(-0.3, 0.3) * side, 0, limit)
            y = np.clip(obj.y - side / 2 + rng.uniform(-0.3, 0.3) * side, 0, limit)
        else:
            x, y = rng.uniform(0, limit), rng.uniform(0, limit)
        return scene, (float(x), float(y), side, side)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return a chip with its captions.

        Args:
            index: index to return.

        Returns:
            Sample with ``image``, ``caption_short`` and ``caption_long``.
        """
        scene, window = self.window(index)
        pixels = render(scene, window, (self.chip_size, self.chip_size))
        rng = np.random.default_rng((self.seed, _SPLIT_SEEDS[self.split], index, 1))
        short, long = window_captions(scene, window, rng, self.late_token, self.max_tokens)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1).contiguous(),
            "caption_short": short,
            "caption_long": long,
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
