"""`dgtrs-geo evaluate` end to end against answers computed here, with a colour model.

``ColourModel`` embeds an image as its mean (R, G, B) and a text as the colour it names, so the
expected accuracy, pixels, recalls and SeLo maps follow from the fabricated files alone. Each test
names the planted bug it catches (issue 15): reversed class order, EuroSAT's wrong bands or
missing reflectance scaling, SeLo scored on ``1 - map``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from rasterio.transform import from_origin

import dgtrs_geo
from dgtrs_geo.cli import main

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)

# A class's (unnormalised) text direction: the colour of its scenes.
CLASS_COLOURS = {
    "annual crop": (1.0, 0.3, 0.0),
    "forest": (0.0, 1.0, 0.2),
    "sea lake": (0.0, 0.2, 1.0),
}
WORD_COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _text_vector(text: str) -> tuple[float, float, float]:
    for name, colour in {**CLASS_COLOURS, **WORD_COLOURS}.items():
        if name in text:
            return colour
    return (0.3, 0.3, 0.3)


class _TextTower:
    def __init__(self, owner: ColourModel) -> None:
        self.owner = owner

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        # Unnormalised, and longer prompts give longer vectors: the ensemble mean is weighted.
        texts = [self.owner.texts[int(t)] for t in tokens[:, 0]]
        return torch.tensor([[len(t) * c for c in _text_vector(t)] for t in texts])


class ColourModel:
    """Image embedding = normalised mean RGB in [0, 1]; text embedding = the colour it names."""

    model_id = "colour-v1"
    image_size = 8
    mean = tuple(MEAN.flatten().tolist())
    std = tuple(STD.flatten().tolist())
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.seen: list[np.ndarray] = []
        self.record = False
        self.clip = _TextTower(self)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB"))
        if self.record:
            self.seen.append(array.copy())
        x = torch.from_numpy(array.copy()).permute(2, 0, 1).float()[None] / 255
        return ((x - MEAN) / STD)[0]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.float() * STD + MEAN
        return F.normalize(rgb.mean(dim=(2, 3)), dim=1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        start = len(self.texts)
        self.texts.extend(texts)
        return torch.arange(start, start + len(texts))[:, None]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(torch.tensor([_text_vector(t) for t in texts]), dim=1)


@pytest.fixture
def colour_model(monkeypatch: pytest.MonkeyPatch) -> ColourModel:
    model = ColourModel()
    monkeypatch.setattr(dgtrs_geo, "load_model", lambda source, device="cpu", **kw: model)
    return model


def _evaluate(task: str, dataset: str, root: Path, out: Path, *extra: str) -> dict:
    args = ["evaluate", task, "--model", "colour", "--dataset", dataset, "--root", str(root)]
    args += ["--device", "cpu", "--no-progress", "--no-cache", "-o", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())["results"]["colour"][dataset]


# --- zero-shot on EuroSAT's real layout -----------------------------------------------------

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
# Digital numbers (reflectance x 10000) of B04, B03, B02 per class; sample "forest" of the test
# split is water-coloured, so zero-shot gets 8 of 9 right, not all.
TILE_RGB = {
    "AnnualCrop": (2400, 900, 300),
    "Forest": (300, 2000, 600),
    "SeaLake": (200, 600, 2500),
}
EUROSAT_BASE = Path("ds/images/remote_sensing/otherDatasets/sentinel_2/tif")


def _fabricate_eurosat(root: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Write 13-band uint16 tiles (B01..B12, B8A as TorchGeo reads them); return their files."""
    classes = sorted(TILE_RGB)
    files: dict[str, tuple[np.ndarray, int]] = {}
    for k, split in enumerate(("train", "val", "test")):
        names = []
        for label, name in enumerate(classes):
            rgb = TILE_RGB["SeaLake"] if (name, split) == ("Forest", "test") else TILE_RGB[name]
            rng = np.random.default_rng(10 * k + label)
            data = np.empty((13, 12, 12), np.uint16)
            for band in range(13):
                # Every other band holds its own level: reading the wrong band shows.
                data[band] = 100 * band + 150 + rng.integers(0, 50, (12, 12))
            for band, value in zip(("B04", "B03", "B02"), rgb, strict=True):
                data[BANDS.index(band)] = value + rng.integers(-150, 150, (12, 12))
            data[BANDS.index("B04"), 0, 0] = 3700  # above 3000: saturates at 255
            filename = f"{name}_{k + 1}.tif"
            path = root / EUROSAT_BASE / name / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            profile = {"driver": "GTiff", "width": 12, "height": 12, "count": 13}
            with rasterio.open(
                path, "w", dtype="uint16", transform=from_origin(0, 12, 1, 1), **profile
            ) as dst:
                dst.write(data)
            files[filename] = (data, label)
            names.append(filename.replace(".tif", ".jpg"))
        (root / f"eurosat-{split}.txt").write_text("\n".join(names) + "\n")
    return files


def _expected_rgb(data: np.ndarray) -> np.ndarray:
    """The 8-bit RGB the protocol shows the model: B04, B03, B02 at 3000 -> 255."""
    rgb = np.stack([data[BANDS.index(b)] for b in ("B04", "B03", "B02")], axis=-1)
    return np.clip(np.rint(rgb.astype(np.float64) * 255 / 3000), 0, 255).astype(np.uint8)


def test_eurosat_pixels_are_b04_b03_b02_scaled_to_3000(colour_model, tmp_path) -> None:
    files = _fabricate_eurosat(tmp_path / "EuroSAT")
    colour_model.record = True
    _evaluate("zeroshot", "EuroSAT", tmp_path / "EuroSAT", tmp_path / "out")
    expected = sorted(_expected_rgb(data).tobytes() for data, _ in files.values())
    assert len(colour_model.seen) == 9
    assert sorted(a.tobytes() for a in colour_model.seen) == expected


def test_zeroshot_accuracy_and_confusion_match_a_direct_computation(
    colour_model, tmp_path
) -> None:
    files = _fabricate_eurosat(tmp_path / "EuroSAT")
    templates = tmp_path / "templates.txt"
    templates.write_text("a satellite image of {}.\nan aerial view of some {} seen from far.\n")
    result = _evaluate(
        "zeroshot", "EuroSAT", tmp_path / "EuroSAT", tmp_path / "out", "--templates", str(templates)
    )
    names = ["annual crop", "forest", "sea lake"]
    assert result["classnames"] == names
    weights = np.array([CLASS_COLOURS[n] for n in names])
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    confusion = np.zeros((3, 3), int)
    for data, label in files.values():
        colour = _expected_rgb(data).reshape(-1, 3).mean(axis=0) / 255
        confusion[label, int(np.argmax(weights @ (colour / np.linalg.norm(colour))))] += 1
    # The water-coloured forest tile is taken for a lake; the other eight are right.
    assert confusion.tolist() == [[3, 0, 0], [0, 2, 1], [0, 0, 3]]
    assert result["confusion"] == confusion.tolist()
    assert result["top1"] == pytest.approx(100 * 8 / 9)
    assert result["per_class"] == pytest.approx(
        {"annual crop": 100.0, "forest": 200 / 3, "sea lake": 100.0}
    )
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert table[2] == "| model | EuroSAT |" and table[4] == "| colour | 88.89 |"


def test_class_weights_follow_the_class_order_with_the_real_prompt_ensemble(
    colour_model,
) -> None:
    from dgtrs_geo.evaluation.templates import TEMPLATES
    from dgtrs_geo.evaluation.zeroshot import class_weights

    names = ["sea lake", "annual crop", "forest"]
    weights = class_weights(colour_model, names, TEMPLATES, batch_size=7)
    expected = []
    for name in names:
        # Each prompt's vector is len(prompt) x the class colour: the mean keeps the direction.
        lengths = [len(t.format(name)) for t in TEMPLATES]
        expected.append(np.mean(lengths) * np.array(CLASS_COLOURS[name]))
    expected = np.array(expected) / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(weights.numpy(), expected, atol=1e-6)
    assert len(colour_model.texts) == 3 * len(TEMPLATES)


# --- retrieval on RSITMD's real layout ------------------------------------------------------

RSITMD_IMAGES = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (20, 40, 210)}


def _fabricate_rsitmd(root: Path) -> list[tuple[np.ndarray, list[str]]]:
    images, samples = [], []
    for index, (word, colour) in enumerate(RSITMD_IMAGES.items()):
        array = np.zeros((10, 10, 3), np.uint8)
        array[:] = colour
        array[:5, :5] = (120, 120, 120)  # not a flat colour: a mean to compute
        filename = f"{word}_{index}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / "images" / filename)
        # Each image's first caption names its colour; the others name the next image's colour.
        other = list(RSITMD_IMAGES)[(index + 1) % 3]
        captions = [f"a {word} scene"] + [f"caption {k} with {other}" for k in range(4)]
        sentences = [{"raw": text} for text in captions]
        images.append({"filename": filename, "split": "test", "sentences": sentences})
        samples.append((array, captions))
    (root / "dataset_RSITMD.json").write_text(json.dumps({"images": images}))
    return samples


def test_retrieval_recalls_match_a_direct_ranking(colour_model, tmp_path) -> None:
    samples = _fabricate_rsitmd(tmp_path / "RSITMD")
    result = _evaluate("retrieval", "RSITMD", tmp_path / "RSITMD", tmp_path / "out")["short"]
    images = np.array([a.reshape(-1, 3).mean(axis=0) for a, _ in samples])
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts = [(t, i) for i, (_, captions) in enumerate(samples) for t in captions]
    text_emb = np.array([_text_vector(t) for t, _ in texts])
    owner = np.array([i for _, i in texts])
    scores = images @ text_emb.T
    i2t_rank = [
        int(((scores[i] >= scores[i, owner == i].max()) & (owner != i)).sum()) for i in range(3)
    ]
    t2i_rank = [
        int(((scores[:, j] >= scores[owner[j], j]) & (np.arange(3) != owner[j])).sum())
        for j in range(len(texts))
    ]
    expected = {}
    for name, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in (1, 5, 10):
            expected[f"{name}_r{k}"] = 100 * float(np.mean(np.array(ranks) < k))
    expected["mR"] = float(np.mean(list(expected.values())))
    assert result == pytest.approx(expected)
    # Not a certainty: the four captions naming another colour rank their image last but one.
    assert expected["t2i_r1"] == pytest.approx(100 * 3 / 15)


# --- SeLo on AIR-SLT's real layout ----------------------------------------------------------

SELO_SIZE = (320, 384)  # rows, cols
RED_BOX = (40, 60, 160, 200)  # x0, y0, x1, y1 (inclusive): the red roof, off-centre
GREEN_BOX = (260, 200, 360, 300)
SELO_QUERIES = [
    ("a red roof", RED_BOX),
    ("a red roof", (250, 30, 350, 120)),  # annotated where the roof is not
    ("a green field", GREEN_BOX),
]


def _selo_image() -> np.ndarray:
    rng = np.random.default_rng(4)
    image = rng.integers(70, 110, size=(*SELO_SIZE, 3)).astype(np.uint8)
    for box, colour in ((RED_BOX, (230, 30, 30)), (GREEN_BOX, (30, 200, 40))):
        x0, y0, x1, y1 = box
        image[y0 : y1 + 1, x0 : x1 + 1] = colour
    return image


def _fabricate_airslt(root: Path) -> np.ndarray:
    image = _selo_image()
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    # PNG bytes under the .jpg name the annotations use: lossless, so the pixels are known.
    Image.fromarray(image).save(root / "imgs" / "scene_1.jpg", format="PNG")
    entries = [
        {
            "caption": caption,
            "jpg_name": "scene_1.jpg",
            "points": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]],
        }
        for caption, (x0, y0, x1, y1) in SELO_QUERIES
    ]
    (root / "annotations" / "anno.json").write_text(json.dumps(entries))
    return image


def _recipe_map(image: np.ndarray, query: str, model: ColourModel, scales) -> np.ndarray:
    """REFERENCE.md section 6's map, one window at a time, with the colour model's scores."""
    height, width = image.shape[:2]
    total, count = np.zeros((height, width)), np.zeros((height, width))
    text = model.encode_text([query])[0].numpy()
    for x, y, s in sorted({(x, y, s) for s in scales for x, y in _windows(height, width, s)}):
        crop = Image.fromarray(image[y : y + s, x : x + s]).resize((256, 256), Image.BICUBIC)
        score = float(model.encode_image(model.preprocess(crop)[None])[0].numpy() @ text)
        total[y : y + s, x : x + s] += score
        count[y : y + s, x : x + s] += 1
    mean = total / count
    p = (mean - mean.min()) / (mean.max() - mean.min())
    return cv2.medianBlur(np.uint8(255 * p), 251).astype(np.float64) / 255


def _windows(height: int, width: int, s: int) -> set[tuple[int, int]]:
    """Two grids of stride ``s`` at offsets 0 and ``s / 2``, clamped to end at the edges."""
    return {
        (min(x, width - s), min(y, height - s))
        for offset in (0, s // 2)
        for y in range(offset, height, s)
        for x in range(offset, width, s)
    }


def _rsu(prob_map: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    mask = np.zeros(prob_map.shape)
    mask[y0 : y1 + 1, x0 : x1 + 1] = 1  # fillPoly includes the outline
    inside = (prob_map * mask).sum()
    ratio = inside / (prob_map.sum() - inside + 1e-7) * (mask.size - mask.sum()) / mask.sum()
    return 1 - math.exp(-0.707 * ratio)


def test_selo_metrics_match_the_recipe_computed_here(colour_model, tmp_path) -> None:
    from dgtrs_geo.evaluation.selo import selo_metrics

    image = _fabricate_airslt(tmp_path / "AIRSLT")
    scales = (96, 192)
    result = _evaluate(
        "selo", "AIRSLT", tmp_path / "AIRSLT", tmp_path / "out",
        "--selo-scales", "96,192", "--selo-modes", "reference",
    )  # fmt: skip
    assert list(result) == ["reference"]
    rows = result["reference"]["samples"]
    assert [r["caption"] for r in rows] == [q for q, _ in SELO_QUERIES]
    expected_rows = []
    for (query, box), row in zip(SELO_QUERIES, rows, strict=True):
        prob_map = _recipe_map(image, query, colour_model, scales)
        x0, y0, x1, y1 = box
        polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
        # Rsu by its formula; Ras and Rda by the protocol function (tested in test_selo.py) on
        # the map computed here.
        metrics = selo_metrics(prob_map, [polygon])
        assert metrics["rsu"] == pytest.approx(_rsu(prob_map, box), abs=1e-9)
        rmi = 0.4 * metrics["rsu"] + 0.35 * (1 - metrics["ras"]) + 0.25 * metrics["rda"]
        assert metrics["rmi"] == pytest.approx(rmi)
        # The inverted map would score differently: the comparison below can fail.
        assert abs(_rsu(1 - prob_map, box) - metrics["rsu"]) > 0.1
        for name in ("rsu", "ras", "rda", "rmi"):
            assert row[name] == pytest.approx(metrics[name], abs=1e-6), (query, name)
        expected_rows.append(metrics)
    # The red roof query on the roof beats the one annotated elsewhere.
    assert expected_rows[0]["rsu"] > expected_rows[1]["rsu"] + 0.2
    for name in ("rsu", "ras", "rda", "rmi"):
        mean = np.mean([m[name] for m in expected_rows])
        assert result["reference"]["mean"][name] == pytest.approx(mean, abs=1e-6)
    assert result["reference"]["seconds_per_query"] == pytest.approx(
        np.mean([r["seconds"] for r in rows])
    )
