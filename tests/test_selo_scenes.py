"""The large synthetic SeLo scenes: queries match what is drawn, long queries hide their facts
past token 77, the AIR-SLT folder reads as it is, and training chips look like the windows
localization cuts."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dgtrs_geo.datamodules.synthetic_selo import SyntheticSeLoDataModule
from dgtrs_geo.datasets import AIRSLT
from dgtrs_geo.datasets.synthetic import BACKGROUNDS, COLOURS, SHAPES
from dgtrs_geo.datasets.synthetic_selo import (
    SyntheticSeLoWindows,
    long_text,
    make_scene,
    render,
    window_captions,
    write_airslt,
)
from dgtrs_geo.tokens import clip_tokenizer

WORDS = {"a": 1, "two": 2, "three": 3}
TARGET = re.compile(
    rf"^(a|two|three) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})s? on ({'|'.join(BACKGROUNDS)})$"
)


@pytest.fixture(scope="module")
def scenes() -> list:
    return [make_scene(seed, 768, 768, object_size=(24.0, 64.0)) for seed in range(6)]


def _parse(target: str) -> tuple[int, str, str, str]:
    match = TARGET.match(target)
    assert match is not None, target
    return WORDS[match[1]], match[2], match[3], match[4]


def test_deterministic_by_seed() -> None:
    a, b, c = make_scene(4, 768, 768), make_scene(4, 768, 768), make_scene(5, 768, 768)
    assert a == b
    assert a.queries != c.queries
    np.testing.assert_array_equal(render(a), render(b))


def test_queries_name_what_is_drawn_where_the_polygons_are(scenes: list) -> None:
    for scene in scenes:
        image = render(scene).astype(float)
        assert {q.kind for q in scene.queries} == {"short", "long"}
        for query in scene.queries:
            count, colour, shape, ground = _parse(query.target)
            assert len(query.polygons) == count
            for polygon in query.polygons:
                vertices = np.array(polygon)
                # A triangle's vertex mean lies inside it, as for squares and circles.
                x, y = vertices.mean(axis=0).astype(int)
                assert np.abs(image[y, x] - COLOURS[colour]).max() < 40, (query.target, x, y)
                # Square, circle and triangle have 4, 32 and 3 vertices.
                assert len(vertices) == {"square": 4, "circle": 32, "triangle": 3}[shape]
                # The ground just left of the object is the named one (texture within +-45).
                left = int(vertices[:, 0].min()) - 6
                ground_pixel = np.median(image[y - 2 : y + 3, left - 2 : left + 1], axis=(0, 1))
                assert np.abs(ground_pixel - BACKGROUNDS[ground]).max() < 45, query.target


def test_targets_are_every_object_their_words_fit(scenes: list) -> None:
    distractors = 0
    for scene in scenes:
        for query in scene.queries:
            _, colour, shape, ground = _parse(query.target)
            fitting = {
                tuple(o.polygon())
                for o, g in zip(scene.objects, scene.grounds, strict=True)
                if (o.colour, o.shape, g) == (colour, shape, ground)
            }
            assert fitting == set(query.polygons)
            distractors += sum(
                (o.colour == colour) != (o.shape == shape) or (o.name == f"{colour} {shape}")
                for o in scene.objects
            ) - len(fitting)
    # Objects sharing colour or shape with a target (or both, on another ground) are common.
    assert distractors >= 2 * len(scenes)


def test_long_queries_state_their_facts_after_token_77(scenes: list) -> None:
    for scene in scenes:
        for query in (q for q in scene.queries if q.kind == "long"):
            tokens = clip_tokenizer().encode(query.caption)
            assert len(tokens) + 2 <= 248
            assert query.late_start >= 77
            head = clip_tokenizer().decode(tokens[: query.late_start - 1])
            tail = clip_tokenizer().decode(tokens[query.late_start - 1 :])
            assert query.target in tail
            assert not any(shape in head for shape in SHAPES), head


def test_long_text_rejects_what_cannot_fit() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="beyond"):
        long_text("An aerial image.", ["fact."], rng, late_token=240)
    with pytest.raises(ValueError, match="do not fit"):
        long_text("An aerial image.", ["word " * 200], rng)


def test_make_scene_rejects_a_scene_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        make_scene(0, 256, 256)


def test_airslt_folder_reads_as_it_is(tmp_path: Path, scenes: list) -> None:
    write_airslt(tmp_path, scenes[:2])
    dataset = AIRSLT(str(tmp_path))
    queries = [q for s in scenes[:2] for q in s.queries]
    assert len(dataset) == len(queries)
    for index, query in enumerate(queries):
        sample = dataset[index]
        assert sample["caption"] == query.caption
        assert sample["image"].shape == (3, 768, 768)
        np.testing.assert_allclose(
            np.concatenate(sample["polygons"]), np.concatenate(query.polygons), atol=0.005
        )

    # JPEG keeps the picture (it drops some per-pixel noise): compare 8 x 8 pixel means.
    def shrink(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (96, 96), interpolation=cv2.INTER_AREA).astype(float)

    assert np.abs(shrink(dataset.image_array(0)) - shrink(render(scenes[0]))).mean() < 1.5
    assert not list(tmp_path.rglob("*.partial"))


def test_chips_look_like_shrunk_windows(scenes: list) -> None:
    scene = scenes[0]
    full = render(scene)
    for x, y, side in ((0, 0, 256), (300, 200, 384), (256, 512, 256)):
        chip = render(scene, (x, y, side, side), (64, 64)).astype(float)
        window = full[y : y + side, x : x + side]
        shrunk = cv2.resize(window, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
        # Same picture up to object edges and noise that was averaged away in the shrunk window.
        assert np.median(np.abs(chip - shrunk)) < 6
        assert np.abs(chip - shrunk).mean() < 12


def _inside(obj, window: tuple[float, float, float, float]) -> float:
    """Share of an object's bounding square inside a window."""
    x, y, w, h = window
    dx = max(0.0, min(obj.x + obj.half, x + w) - max(obj.x - obj.half, x))
    dy = max(0.0, min(obj.y + obj.half, y + h) - max(obj.y - obj.half, y))
    return dx * dy / (2 * obj.half) ** 2


def test_window_captions_name_the_object_in_the_window(scenes: list) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for scene in scenes:
        for obj, ground in zip(scene.objects, scene.grounds, strict=True):
            side = 2 * obj.half + 40
            window = (obj.x - side / 2, obj.y - side / 2, side, side)
            if any(_inside(o, window) > 0.3 for o in scene.objects if o is not obj):
                continue
            short, long = window_captions(scene, window, rng)
            assert short == f"a {obj.colour} {obj.shape} on {ground}"
            assert f"The main object is {short}." in long
            checked += 1
    assert checked >= 15
    # A window far from every object is captioned by its ground.
    empty = next(
        (x, y, 128.0, 128.0)
        for x in range(0, 640, 32)
        for y in range(0, 640, 32)
        if all(_inside(o, (x, y, 128.0, 128.0)) == 0 for o in scenes[0].objects)
    )
    short, long = window_captions(scenes[0], empty, rng)
    ground = scenes[0].ground_at(empty[0] + 64, empty[1] + 64)
    assert short == f"an aerial image of {ground}"
    assert f"There is no coloured object, only {ground}." in long


def test_windows_dataset_samples() -> None:
    dataset = SyntheticSeLoWindows(split="val", length=24, chip_size=48, windows_per_scene=6)
    sample = dataset[5]
    assert set(sample) == {"image", "caption_short", "caption_long"}
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.float32
    again = SyntheticSeLoWindows(split="val", length=24, chip_size=48, windows_per_scene=6)
    assert torch.equal(again[5]["image"], sample["image"])
    train = SyntheticSeLoWindows(split="train", length=24, chip_size=48, windows_per_scene=6)
    assert train[5]["caption_long"] != sample["caption_long"] or not torch.equal(
        train[5]["image"], sample["image"]
    )
    scene, window = dataset.window(5)
    assert scene is dataset.window(0)[0]  # chips 0..5 share a scene
    assert window[2] in (256, 512, 768) and window[2] == window[3]
    assert 0 <= window[0] <= 1024 - window[2] and 0 <= window[1] <= 1024 - window[3]
    with pytest.raises(IndexError):
        dataset[24]
    with pytest.raises(ValueError, match="split"):
        SyntheticSeLoWindows(split="dev")


def test_datamodule_batches() -> None:
    datamodule = SyntheticSeLoDataModule(batch_size=4, image_size=32, val_length=8)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    batch = datamodule.aug(batch)
    assert batch["image"].shape == (4, 3, 32, 32)
    assert len(batch["caption_short"]) == len(batch["caption_long"]) == 4
