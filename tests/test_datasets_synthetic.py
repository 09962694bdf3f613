import re

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from dgtrs_geo.datasets import SyntheticScenes, draw_large_scene, draw_scene
from dgtrs_geo.datasets.synthetic import COLOURS, POSITIONS, SHAPES
from dgtrs_geo.tokens import clip_tokenizer, count_tokens


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(split="train", length=40, scene_size=48, seed=3)


def test_sample_keys_and_image(scenes: SyntheticScenes) -> None:
    sample = scenes[0]
    assert set(sample) == {"image", "caption_short", "caption_long"}
    assert sample["image"].dtype == torch.float32
    assert sample["image"].shape == (3, 48, 48)
    assert 0 <= sample["image"].min() and sample["image"].max() <= 255
    assert len(scenes) == 40


def test_deterministic_by_seed_and_split(scenes: SyntheticScenes) -> None:
    again = SyntheticScenes(split="train", length=40, scene_size=48, seed=3)
    for i in (0, 17):
        a, b = scenes[i], again[i]
        assert torch.equal(a["image"], b["image"])
        assert a["caption_long"] == b["caption_long"]
    other_seed = SyntheticScenes(split="train", length=40, scene_size=48, seed=4)
    other_split = SyntheticScenes(split="val", length=40, scene_size=48, seed=3)
    longs = {scenes[i]["caption_long"] for i in range(10)}
    assert longs.isdisjoint(other_seed[i]["caption_long"] for i in range(10))
    assert longs.isdisjoint(other_split[i]["caption_long"] for i in range(10))


def test_objects_are_drawn_where_captions_say(scenes: SyntheticScenes) -> None:
    for i in range(10):
        scene = scenes.scene(i)
        for obj in scene.objects:
            pixel = scene.image[int(obj.y), int(obj.x)]
            assert tuple(pixel) == COLOURS[obj.colour]
            row, col = obj.cell
            assert int(obj.x // 16) == col and int(obj.y // 16) == row
            assert f"a {obj.size} {obj.colour} {obj.shape} {POSITIONS[obj.cell]}" in (
                scene.caption_long
            )
        main = scene.objects[0]
        assert scene.caption_short == f"a {main.size} {main.name} on {scene.background}"
        # colour-shape pairs are unique within a scene
        assert len({o.name for o in scene.objects}) == len(scene.objects)


def test_relations_match_grid_cells(scenes: SyntheticScenes) -> None:
    pattern = re.compile(
        r"The (\w+ \w+) is (to the left of|to the right of|above|below) the (\w+ \w+)\."
    )
    checked = 0
    for i in range(10):
        scene = scenes.scene(i)
        cells = {o.name: o.cell for o in scene.objects}
        for sentence in scene.relations:
            a, where, b = pattern.fullmatch(sentence).groups()
            (ra, ca), (rb, cb) = cells[a], cells[b]
            expected = {
                "to the left of": ca < cb,
                "to the right of": ca > cb,
                "above": ca == cb and ra < rb,
                "below": ca == cb and ra > rb,
            }[where]
            assert expected, sentence
            checked += 1
    assert checked > 10


def test_long_captions_hide_object_facts_past_token_77(scenes: SyntheticScenes) -> None:
    bpe = clip_tokenizer()
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        n = count_tokens(scene.caption_long)
        assert 77 < n <= 248
        assert scene.late_facts_start >= 77
        # what a 77-token text tower reads: SOT + 75 BPE tokens + EOT
        seen = bpe.decode(bpe.encode(scene.caption_long)[:75])
        assert seen.startswith(f"an aerial image of {scene.background}")
        for obj in scene.objects:
            assert obj.name not in seen
            assert obj.name in scene.caption_long
        for size in ("small", "large"):
            assert size not in seen


def test_late_token_and_object_count_configurable() -> None:
    scene = draw_scene(7, scene_size=32, num_objects=(1, 1), late_token=0)
    assert len(scene.objects) == 1
    assert scene.caption_long.split(". ")[2].startswith("The main object is")
    four = draw_scene(8, num_objects=(4, 4), late_token=120)
    assert len(four.objects) == 4 and four.late_facts_start >= 120
    assert count_tokens(four.caption_long) <= 248


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "training"}, "Unknown split 'training'"),
        ({"num_objects": (3, 2)}, "num_objects"),
        ({"num_objects": (1, 10)}, "num_objects"),
        ({"late_token": 400}, "late_token=400"),
        ({"length": 0}, "length=0"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticScenes(**kwargs)


def test_index_out_of_range(scenes: SyntheticScenes) -> None:
    with pytest.raises(IndexError, match="out of range"):
        scenes[40]


def test_transforms_applied() -> None:
    ds = SyntheticScenes(
        length=2, scene_size=16, transforms=lambda s: {**s, "image": s["image"] / 255}
    )
    assert ds[0]["image"].max() <= 1


def test_plot(scenes: SyntheticScenes) -> None:
    sample = scenes[1]
    fig = scenes.plot(sample, suptitle="scene")
    assert isinstance(fig, Figure)
    title = fig.axes[0].get_title(loc="left")
    assert "caption_short: " + sample["caption_short"] in title
    plt.close(fig)
    sample["prediction"] = "a red circle"
    fig = scenes.plot(sample, show_titles=True)
    assert "prediction: a red circle" in fig.axes[0].get_title(loc="left")
    plt.close(fig)


def test_large_scene_ground_truth() -> None:
    scene = draw_large_scene(height=256, width=320, num_objects=5, chip_size=48, seed=2)
    assert scene.image.shape == (256, 320, 3) and scene.image.dtype == np.uint8
    assert len(scene.annotations) == len(scene.captions) == len(scene.polygons) == 5
    assert len(set(scene.captions)) == 5
    for obj, ann in zip(scene.objects, scene.annotations, strict=True):
        assert ann["caption"] == f"a {obj.size} {obj.colour} {obj.shape} on {scene.background}"
        (polygon,) = ann["points"]
        xs, ys = np.array(polygon).T
        assert xs.min() >= 0 and xs.max() < 320 and ys.min() >= 0 and ys.max() < 256
        assert tuple(scene.image[int(obj.y), int(obj.x)]) == COLOURS[obj.colour]
        assert obj.shape in SHAPES
        # polygon centre (vertex mean) is the object centre for every shape but the triangle
        if obj.shape != "triangle":
            assert np.allclose([xs.mean(), ys.mean()], [obj.x, obj.y])
    centres = np.array([[o.x, o.y] for o in scene.objects])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert gaps[~np.eye(5, dtype=bool)].min() > 48
    again = draw_large_scene(height=256, width=320, num_objects=5, chip_size=48, seed=2)
    assert np.array_equal(scene.image, again.image)


def test_large_scene_errors() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        draw_large_scene(height=64, width=64, num_objects=10, chip_size=64)
    with pytest.raises(ValueError, match="Unknown background"):
        draw_large_scene(background="snow")
    with pytest.raises(ValueError, match="num_objects=19"):
        draw_large_scene(num_objects=19)
