"""Procedurally drawn scenes with short captions and long descriptions.

The scenes give tests and tiny training runs a real learning signal without any
download: flat coloured shapes (colour, shape, size, position) lie on a textured
background, and the captions state those facts. Long descriptions put some facts
that tell scenes apart only after token ``late_token`` (77 by default, CLIP's
context), so a 248-token text tower can use them and a 77-token one cannot.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchgeo.datasets import NonGeoDataset

from ..errors import InputError
from ..tokens import CLIP_CONTEXT_LENGTH, DGTRS_CONTEXT_LENGTH, clip_tokenizer, count_tokens
from .utils import CaptionPlotMixin

#: Background name -> mean RGB colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "green grass": (70, 130, 55),
    "yellow sand": (214, 190, 135),
    "blue water": (45, 85, 150),
    "grey concrete": (125, 125, 125),
}
#: Object colour name -> RGB; chosen to stay apart from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "yellow": (245, 215, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "purple": (140, 50, 180),
    "cyan": (40, 210, 210),
}
SHAPES = ("square", "circle", "triangle")
#: Size name -> half extent of the shape as a fraction of the scene (chip) size.
SIZES: dict[str, float] = {"small": 0.08, "large": 0.14}
#: 3 x 3 grid cell (row, col) -> phrase.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the centre",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Sentences true of every scene: they fill the description up to ``late_token``
#: the way real long captions open with generic context.
_FILLER = (
    "The picture is taken from directly above, like an orthophoto.",
    "The light is even and there are no clouds or shadows over the area.",
    "The scene shows one patch of a single kind of surface.",
    "No roads, buildings, trees or people are visible anywhere in the picture.",
    "Each object is a flat solid shape painted in a single colour.",
    "The objects lie flat on the surface and do not touch or overlap each other.",
    "The surface has a fine, slightly uneven texture all over.",
    "The borders of the image cut the surface evenly on all four sides.",
    "There is nothing written on the surface and there are no other markings.",
)
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene, in pixel coordinates of the image it is drawn in."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    half: float
    cell: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        """Colour and shape, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"

    def polygon(self, vertices: int = 32) -> list[tuple[float, float]]:
        """Outline of the shape as drawn, in pixel (x, y).

        Args:
            vertices: Number of vertices used for a circle.

        Returns:
            The polygon's vertices, not closed.
        """
        x, y, h = self.x, self.y, self.half
        match self.shape:
            case "square":
                return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
            case "triangle":
                return [(x, y - h), (x + h, y + h), (x - h, y + h)]
            case "circle":
                step = 2 * math.pi / vertices
                return [
                    (x + h * math.cos(i * step), y + h * math.sin(i * step))
                    for i in range(vertices)
                ]
            case _:
                raise ValueError(f"Unknown shape {self.shape!r}; expected one of {SHAPES}.")


@dataclass(frozen=True)
class Scene:
    """A drawn scene: the image and the facts its captions state."""

    image: np.ndarray
    background: str
    objects: tuple[SceneObject, ...]
    caption_short: str = ""
    caption_long: str = ""
    late_facts_start: int = 0
    relations: tuple[str, ...] = field(default_factory=tuple)


def _draw(
    size: tuple[int, int],
    background: str,
    objects: Sequence[SceneObject],
    rng: np.random.Generator,
) -> np.ndarray:
    height, width = size
    base = np.array(BACKGROUNDS[background], dtype=np.float32)
    # Texture: a shared brightness field plus a little colour noise, so the
    # background is not a constant a model could memorise pixel by pixel.
    noise = rng.normal(0, 7, (height, width, 1)) + rng.normal(0, 3, (height, width, 3))
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(array)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        draw.polygon(obj.polygon(), fill=COLOURS[obj.colour])
    return np.asarray(img)


def _relation(a: SceneObject, b: SceneObject) -> str:
    assert a.cell is not None and b.cell is not None
    if a.cell[1] != b.cell[1]:
        where = "to the left of" if a.cell[1] < b.cell[1] else "to the right of"
    else:
        where = "above" if a.cell[0] < b.cell[0] else "below"
    return f"The {a.name} is {where} the {b.name}."


def _object_phrase(obj: SceneObject) -> str:
    assert obj.cell is not None
    return f"a {obj.size} {obj.name} {POSITIONS[obj.cell]}"


def short_caption(background: str, obj: SceneObject) -> str:
    """Short caption naming one object and the background.

    Args:
        background: Background name (a key of :data:`BACKGROUNDS`).
        obj: The object to name.

    Returns:
        E.g. "a large red circle on green grass".
    """
    return f"a {obj.size} {obj.name} on {background}"


def _long_caption(
    background: str,
    objects: Sequence[SceneObject],
    rng: np.random.Generator,
    late_token: int,
    max_tokens: int,
) -> tuple[str, int, tuple[str, ...]]:
    count = _NUMBERS[len(objects)]
    early = [
        f"An aerial image of {background}, seen from above.",
        f"There are {count} coloured objects on the {background.split()[-1]}.",
    ]
    filler = [_FILLER[i] for i in rng.permutation(len(_FILLER))]
    # Position of the next token: start-of-text plus the BPE tokens so far
    while len(clip_tokenizer().encode(" ".join(early))) + 1 < late_token:
        if not filler:
            raise ValueError(
                f"late_token={late_token} is longer than the scene's generic text can "
                "fill; use a late_token of at most 150."
            )
        early.append(filler.pop())
    late_start = len(clip_tokenizer().encode(" ".join(early))) + 1

    late = [f"The main object is {_object_phrase(objects[0])}."]
    late += [f"There is also {_object_phrase(obj)}." for obj in objects[1:]]
    relations = tuple(_relation(a, b) for i, a in enumerate(objects) for b in objects[i + 1 :])
    text = " ".join(early + late)
    if count_tokens(text) > max_tokens:
        raise ValueError(
            f"{len(objects)} objects do not fit in {max_tokens} tokens after "
            f"late_token={late_token}; lower num_objects or late_token."
        )
    kept = []
    # Relations are extra detail: keep as many as the context holds
    for sentence in relations:
        if count_tokens(f"{text} {sentence}") > max_tokens:
            break
        text = f"{text} {sentence}"
        kept.append(sentence)
    return text, late_start, tuple(kept)


def draw_scene(
    seed: int | Sequence[int],
    scene_size: int = 64,
    num_objects: tuple[int, int] = (2, 4),
    late_token: int = CLIP_CONTEXT_LENGTH,
    max_tokens: int = DGTRS_CONTEXT_LENGTH,
) -> Scene:
    """Draw one small scene on a 3 x 3 grid with its captions.

    Args:
        seed: Seed (or seed sequence) that fixes everything about the scene.
        scene_size: Width and height in pixels.
        num_objects: Inclusive range of the number of objects (1 to 9).
        late_token: Token position (start-of-text is 0) from which the object
            facts start in the long description.
        max_tokens: Token budget of the long description (the text context).

    Returns:
        The scene with its image (uint8 [H, W, 3]) and captions.

    Raises:
        ValueError: If the object count range is invalid or the facts do not fit.
    """
    low, high = num_objects
    if not 1 <= low <= high <= len(POSITIONS):
        raise ValueError(f"num_objects={num_objects} must satisfy 1 <= min <= max <= 9.")
    rng = np.random.default_rng(seed)
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    n = int(rng.integers(low, high + 1))
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    # Distinct colour-shape pairs keep every reference in the captions unambiguous
    chosen = rng.choice(len(kinds), size=n, replace=False)
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    cell_size = scene_size / 3
    objects = []
    for k, c in zip(chosen, cells, strict=True):
        colour, shape = kinds[k]
        size = list(SIZES)[rng.integers(len(SIZES))]
        half = SIZES[size] * scene_size
        row, col = divmod(int(c), 3)
        slack = max(cell_size / 2 - half - 1, 0)
        x = (col + 0.5) * cell_size + rng.uniform(-slack, slack)
        y = (row + 0.5) * cell_size + rng.uniform(-slack, slack)
        objects.append(SceneObject(colour, shape, size, x, y, half, (row, col)))
    image = _draw((scene_size, scene_size), background, objects, rng)
    long, late_start, relations = _long_caption(background, objects, rng, late_token, max_tokens)
    return Scene(
        image=image,
        background=background,
        objects=tuple(objects),
        caption_short=short_caption(background, objects[0]),
        caption_long=long,
        late_facts_start=late_start,
        relations=relations,
    )


class SyntheticScenes(CaptionPlotMixin, NonGeoDataset):
    """Procedurally drawn scenes with a short caption and a long description.

    Each scene is a textured background (grass, sand, water, concrete) with 2 to 4
    flat shapes, each with a colour (6), a shape (square, circle, triangle), a size
    (small, large) and a cell of a 3 x 3 grid. The short caption names the main
    object and the background ("a large red circle on green grass"). The long
    description (more than 77 CLIP tokens, at most 248) opens with the background,
    the object count and generic sentences true of every scene, then, from token
    ``late_token`` on, gives every object with size and position and the spatial
    relations between them. A model that reads only 77 tokens of the long text thus
    sees the background and the count; one that reads 248 sees everything.

    Scenes are drawn on the fly and are a pure function of ``(seed, split, index)``.

    Sample keys: ``image`` (float [3, S, S], 0..255), ``caption_short``,
    ``caption_long`` (str).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(
        self,
        split: str = "train",
        length: int = 1000,
        scene_size: int = 64,
        num_objects: tuple[int, int] = (2, 4),
        late_token: int = CLIP_CONTEXT_LENGTH,
        max_tokens: int = DGTRS_CONTEXT_LENGTH,
        seed: int = 0,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Initialize a new SyntheticScenes instance.

        Args:
            split: One of "train", "val", "test"; each split draws different scenes.
            length: Number of scenes in the split.
            scene_size: Scene width and height in pixels.
            num_objects: Inclusive range of objects per scene (at most 9).
            late_token: Token position from which the object facts start in the
                long description (77: just past CLIP's context).
            max_tokens: Token budget of the long description.
            seed: Seed of the whole dataset.
            transforms: A function/transform that takes a sample and returns a
                transformed version.

        Raises:
            ValueError: If *split* is unknown or a size is not positive.
        """
        if split not in self.splits:
            raise InputError(f"Unknown split {split!r}; expected one of {self.splits}.")
        if length < 1 or scene_size < 8:
            raise ValueError(f"length={length} must be >= 1 and scene_size={scene_size} >= 8.")
        self.split = split
        self.length = length
        self.scene_size = scene_size
        self.num_objects = tuple(num_objects)
        self.late_token = late_token
        self.max_tokens = max_tokens
        self.seed = seed
        self.transforms = transforms
        # Fail on an impossible configuration now, not in a dataloader worker
        self.scene(0)

    def __len__(self) -> int:
        """Return the number of scenes.

        Returns:
            Length of the dataset.
        """
        return self.length

    def scene(self, index: int) -> Scene:
        """Draw scene *index* with its facts.

        Args:
            index: Index of the scene.

        Returns:
            The scene, with its objects and captions.

        Raises:
            IndexError: If *index* is out of range.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes.")
        return draw_scene(
            (self.seed, _SPLIT_SEEDS[self.split], index),
            self.scene_size,
            self.num_objects,  # type: ignore[arg-type]
            self.late_token,
            self.max_tokens,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return a scene.

        Args:
            index: Index to return.

        Returns:
            Sample with ``image``, ``caption_short`` and ``caption_long``.
        """
        scene = self.scene(index)
        image = torch.from_numpy(scene.image.astype(np.float32)).permute(2, 0, 1)
        sample: dict[str, Any] = {
            "image": image.contiguous(),
            "caption_short": scene.caption_short,
            "caption_long": scene.caption_long,
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


@dataclass(frozen=True)
class LargeScene:
    """A large scene for localization tests.

    Attributes:
        image: uint8 [H, W, 3].
        background: Background name.
        objects: The drawn objects (pixel coordinates of ``image``).
        annotations: One per object, AIR-SLT style: ``{"caption": str, "points":
            [polygon]}``, each polygon a list of pixel ``[x, y]``.
    """

    image: np.ndarray
    background: str
    objects: tuple[SceneObject, ...]
    annotations: tuple[dict[str, Any], ...]

    @property
    def captions(self) -> list[str]:
        """The query of each annotation, in order."""
        return [a["caption"] for a in self.annotations]

    @property
    def polygons(self) -> list[list[list[float]]]:
        """The ground-truth polygons of each annotation, in order."""
        return [a["points"] for a in self.annotations]


def draw_large_scene(
    height: int = 512,
    width: int = 512,
    num_objects: int = 6,
    chip_size: int = 64,
    background: str | None = None,
    seed: int = 0,
) -> LargeScene:
    """Draw a large scene with ground-truth polygons of every described object.

    Objects have the same size relative to ``chip_size`` as in
    :class:`SyntheticScenes` of ``scene_size=chip_size``, so a model trained on
    those scenes sees them at its training scale in windows of ``chip_size``
    pixels. Each object has its own colour and shape, so each caption names
    exactly one object.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        num_objects: Number of objects (at most 18, the colour-shape pairs).
        chip_size: Scene size the object sizes are relative to.
        background: Background name, or None to draw one from the seed.
        seed: Seed that fixes the scene.

    Returns:
        The scene: image, objects and AIR-SLT style annotations.

    Raises:
        ValueError: If the objects do not fit or an argument is unknown.
    """
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    if not 1 <= num_objects <= len(kinds):
        raise ValueError(f"num_objects={num_objects} must be between 1 and {len(kinds)}.")
    if background is not None and background not in BACKGROUNDS:
        raise ValueError(f"Unknown background {background!r}; expected one of {list(BACKGROUNDS)}.")
    rng = np.random.default_rng(seed)
    if background is None:
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    chosen = rng.choice(len(kinds), size=num_objects, replace=False)
    objects: list[SceneObject] = []
    for k in chosen:
        colour, shape = kinds[k]
        size = list(SIZES)[rng.integers(len(SIZES))]
        half = SIZES[size] * chip_size
        # Keep a chip's width between objects so one window rarely holds two
        for _ in range(1000):
            x = rng.uniform(half + 1, width - half - 1)
            y = rng.uniform(half + 1, height - half - 1)
            if all(math.hypot(x - o.x, y - o.y) > chip_size for o in objects):
                break
        else:
            raise ValueError(
                f"{num_objects} objects do not fit {chip_size} px apart in a "
                f"{width} x {height} scene; enlarge it or use fewer objects."
            )
        objects.append(SceneObject(colour, shape, size, x, y, half))
    image = _draw((height, width), background, objects, rng)
    annotations = tuple(
        {
            "caption": short_caption(background, obj),
            "points": [[[x, y] for x, y in obj.polygon()]],
        }
        for obj in objects
    )
    return LargeScene(image, background, tuple(objects), annotations)
