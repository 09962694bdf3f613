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
    model.loaded = []  # (source, device) of every load

    def load_model(source, device="cpu", **kwargs):
        model.loaded.append((source, device))
        return model

    monkeypatch.setattr(dgtrs_geo, "load_model", load_model)
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


def test_zeroshot_accuracy_and_confusion_match_a_direct_computation(colour_model, tmp_path) -> None:
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
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["model_ids"] == {"colour": "colour-v1"} and report["models"] == ["colour"]
    assert report["datasets"] == [{"name": "EuroSAT", "task": "zeroshot"}]
    assert report["rmi_weights"] == {"rsu": 0.4, "ras": 0.35, "rda": 0.25}
    assert colour_model.loaded == [("colour", "cpu")]


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


def _recipe_map(
    image: np.ndarray, query: str, model: ColourModel, scales, jpeg: bool = False
) -> np.ndarray:
    """REFERENCE.md section 6's map, one window at a time, with the colour model's scores."""
    height, width = image.shape[:2]
    total, count = np.zeros((height, width)), np.zeros((height, width))
    text = model.encode_text([query])[0].numpy()
    for x, y, s in sorted(
        {(x, y, size) for size in scales for x, y in _windows(height, width, size)}
    ):
        crop = Image.fromarray(image[y : y + s, x : x + s]).resize((256, 256), Image.BICUBIC)
        score = float(model.encode_image(model.preprocess(crop)[None])[0].numpy() @ text)
        total[y : y + s, x : x + s] += score
        count[y : y + s, x : x + s] += 1
    mean = total / count
    p = (mean - mean.min()) / (mean.max() - mean.min())
    gray = cv2.medianBlur(np.uint8(255 * p), 251)
    if jpeg:  # the authors save the map as JPEG (OpenCV's quality 95) and read it back
        gray = cv2.imdecode(cv2.imencode(".jpg", gray)[1], cv2.IMREAD_GRAYSCALE)
    return gray.astype(np.float64) / 255


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


# --- smaller contracts the mutation run found untested -------------------------------------


def test_template_families_take_the_right_article() -> None:
    from dgtrs_geo.evaluation.templates import _with_article

    # Called while the module loads (TEMPLATES), so it is checked directly as well.
    assert _with_article("aerial image") == "an aerial image"
    assert _with_article("remote sensing image") == "a remote sensing image"
    assert _with_article("satellite image") == "a satellite image"


def test_classification_metrics_edge_cases() -> None:
    from dgtrs_geo.evaluation.zeroshot import classification_metrics

    # One sample is enough, and a class with a single sample has its own accuracy.
    one = classification_metrics(torch.tensor([[0.2, 0.9]]), torch.tensor([1]), ["a", "b"])
    assert one == {"top1": 100.0, "per_class": {"b": 100.0}, "confusion": [[0, 0], [0, 1]]}
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    mixed = classification_metrics(logits, torch.tensor([0, 1, 1, 2]), ["a", "b", "c"])
    assert mixed["per_class"] == pytest.approx({"a": 100.0, "b": 50.0, "c": 0.0})
    assert mixed["top1"] == pytest.approx(50.0)
    message = r"labels must be non-empty class indices in \[0, 1\]$"
    with pytest.raises(ValueError, match=message):
        classification_metrics(torch.zeros(0, 2), torch.zeros(0), ["a", "b"])
    with pytest.raises(ValueError, match=message):
        classification_metrics(torch.zeros(1, 2), torch.tensor([-1]), ["a", "b"])


def test_dataset_folders_are_found_in_either_spelling(tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.data import resolve_benchmarks

    _fabricate_eurosat(tmp_path / "eurosat")  # lower-case, as some downloads unpack
    (found,) = resolve_benchmarks("zeroshot", [], [str(tmp_path)])
    assert found.name == "EuroSAT" and len(found.dataset) == 9
    assert found.key.split("|")[1] == str(tmp_path / "eurosat")


def test_missing_image_folder_names_its_root_and_the_layout(tmp_path: Path) -> None:
    from torchgeo.datasets import DatasetNotFoundError

    from dgtrs_geo.evaluation.data import load_benchmark

    with pytest.raises(DatasetNotFoundError) as error:
        load_benchmark("AID", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(error.value)
    assert error.value.__notes__ == [
        "AID and ImageFolder datasets need one sub-folder of images per class"
    ]


def test_evaluate_selo_jpeg_roundtrip_both_modes_figures_and_progress(
    colour_model, tmp_path, capsys, monkeypatch
) -> None:
    from dgtrs_geo.evaluation import runner
    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.runner import EvaluationSettings, evaluate_selo
    from dgtrs_geo.evaluation.selo import selo_metrics
    from dgtrs_geo.localization import fast_probability_map

    image = _fabricate_airslt(tmp_path / "AIRSLT")
    drawn = []
    plot = runner.plot_selo_maps

    def spy(*args, **kwargs):
        drawn.append(args)
        return plot(*args, **kwargs)

    monkeypatch.setattr(runner, "plot_selo_maps", spy)
    data = load_benchmark("AIRSLT", str(tmp_path / "AIRSLT"))
    settings = EvaluationSettings(
        selo_scales=(96, 192), jpeg_roundtrip=True, figures_dir=tmp_path / "figures",
        selo_figures=2, progress=True,
    )  # fmt: skip
    result = evaluate_selo(colour_model, data, settings)
    assert list(result) == ["reference", "fast"]
    maps = {
        "reference": [_recipe_map(image, q, colour_model, (96, 192), jpeg=True) for q, _ in SELO_QUERIES],
        # The fast map is checked against a brute-force mean in test_oracle_localization.py.
        "fast": [fast_probability_map(image, q, colour_model, (96, 192)) for q, _ in SELO_QUERIES],
    }  # fmt: skip
    for mode, mode_maps in maps.items():
        for (query, box), prob_map, row in zip(
            SELO_QUERIES, mode_maps, result[mode]["samples"], strict=True
        ):
            x0, y0, x1, y1 = box
            polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
            expected = selo_metrics(prob_map, [polygon])
            assert {k: row[k] for k in expected} == pytest.approx(expected, abs=1e-6), (mode, query)
            assert (row["jpg_name"], row["caption"]) == ("scene_1.jpg", query)
            assert 0 < row["seconds"] < 600
        assert [r["index"] for r in result[mode]["samples"]] == [0, 1, 2]
    # Two figures (selo_figures), named after the model when no label is given.
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "selo-AIRSLT-colour-v1-000.png", "selo-AIRSLT-colour-v1-001.png"
    ]  # fmt: skip
    assert len(drawn) == 2
    for (query, _), (picture, drawn_maps, polygons, caption) in zip(
        SELO_QUERIES[:2], drawn, strict=True
    ):
        np.testing.assert_array_equal(picture, image)
        assert caption == query and len(polygons) == 1 and list(drawn_maps) == ["reference", "fast"]
    np.testing.assert_allclose(drawn[0][1]["reference"], maps["reference"][0], atol=1e-6)
    np.testing.assert_allclose(drawn[1][1]["fast"], maps["fast"][1], atol=1e-6)
    assert "AIRSLT queries" in capsys.readouterr().err
    quiet = EvaluationSettings(selo_scales=(96, 192), selo_modes=("fast",), progress=False)
    evaluate_selo(colour_model, data, quiet)
    assert "AIRSLT queries" not in capsys.readouterr().err


def test_selo_without_the_localization_module_says_so(monkeypatch) -> None:
    import sys

    from dgtrs_geo.evaluation.runner import _map_functions

    monkeypatch.setitem(sys.modules, "dgtrs_geo.localization.reference", None)
    with pytest.raises(RuntimeError, match=r"^SeLo needs dgtrs_geo.localization.reference, which"):
        _map_functions(("reference",))


def test_embeddings_are_cached_atomically_and_read_back(
    colour_model, tmp_path, monkeypatch
) -> None:
    import hashlib

    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))  # not there yet
    root = tmp_path / "EuroSAT"
    _fabricate_eurosat(root)
    saved: list[Path] = []
    save = torch.save

    def spy(payload, path, *args, **kwargs):
        saved.append(Path(path))
        return save(payload, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    args = ["evaluate", "zeroshot", "--model", "colour", "--dataset", "EuroSAT", "--root"]
    args += [str(root), "--device", "cpu", "--no-progress"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    # One file per model and dataset key (name, root, split, size), written under a temporary
    # name in the same folder and renamed.
    key = f"1|EuroSAT|{root}|all|9"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = tmp_path / "cache" / "embeddings" / "colour-v1"
    assert sorted(p.name for p in folder.iterdir()) == [f"EuroSAT-{digest}.pt"]
    (temporary,) = saved
    assert temporary.parent == folder and temporary.name.endswith(".partial")
    cached = torch.load(folder / f"EuroSAT-{digest}.pt", weights_only=True)
    assert (
        cached["image"].shape == (9, 3)
        and sorted(cached["label"].tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    )
    # Read back: no image is encoded again, and the numbers are the same.
    colour_model.record = True
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    assert colour_model.seen == []
    first, again = (
        json.loads((tmp_path / d / "results.json").read_text())["results"]["colour"]
        for d in ("a", "b")
    )
    assert first == again
    # Another key (the first 4 samples) is another file in the same folder.
    assert main([*args, "--limit", "4", "-o", str(tmp_path / "c")]) == 0
    assert len(list(folder.iterdir())) == 2 and len(colour_model.seen) == 4


def test_a_failed_cache_write_leaves_no_file(colour_model, tmp_path, monkeypatch) -> None:
    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.embeddings import encode_benchmark

    _fabricate_eurosat(tmp_path / "EuroSAT")
    data = load_benchmark("EuroSAT", str(tmp_path / "EuroSAT"))

    def full_disk(payload, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        encode_benchmark(colour_model, data, cache_dir=tmp_path / "cache", progress=False)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_to_pil_scales_rounds_clips_and_keeps_three_bands() -> None:
    from dgtrs_geo.evaluation.embeddings import to_pil

    image = torch.tensor([[-5.0, 0.4, 100.6, 300.0]]).expand(4, 1, 4).clone()
    image[3] = 7.0  # a fourth band (NIR, alpha...) is not shown
    rgb = to_pil(image)
    assert rgb.mode == "RGB" and rgb.size == (4, 1)
    assert np.asarray(rgb)[0].tolist() == [[0, 0, 0], [0, 0, 0], [101, 101, 101], [255] * 3]
    scaled = to_pil(image, pixel_scale=255 / 3000)
    # 100.6 and 300 digital numbers: 8.55 -> 9 and 25.5 -> 26 (round half to even: 26).
    assert np.asarray(scaled)[0, 2:].tolist() == [[9, 9, 9], [26, 26, 26]]


def test_save_figure_writes_that_png_at_120_dpi_and_closes_only_it(tmp_path: Path) -> None:
    from matplotlib import pyplot as plt

    from dgtrs_geo.evaluation.report import save_figure

    figure, _ = plt.subplots(figsize=(5, 4))
    other, _ = plt.subplots(figsize=(2, 2))  # now the current figure
    path = save_figure(figure, tmp_path / "sub" / "f.png")
    assert path == tmp_path / "sub" / "f.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (5 * 120, 4 * 120)
    assert not plt.fignum_exists(figure.number) and plt.fignum_exists(other.number)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.png"]
    plt.close(other)


# --- every benchmark name builds its own dataset ---------------------------------------------

DATA = Path(__file__).parent / "data"


def _class_folders(root: Path, base: Path, split_file: str, suffix: str) -> None:
    """Two classes x three splits of 8 x 8 RGB files, listed in TorchGeo's split files."""
    for k, split in enumerate(("train", "val", "test")):
        names = []
        for name, colour in (("dense_residential", (200, 30, 30)), ("harbor", (20, 40, 210))):
            filename = f"{name}{k:02d}{suffix}"
            (root / base / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), colour).save(root / base / name / filename)
            names.append(filename)
        (root / split_file.format(split)).write_text("\n".join(names) + "\n")


@pytest.mark.parametrize(
    ("name", "cls", "root"),
    [
        ("RSITMD", "RSITMD", DATA / "rs_captions" / "rsitmd"),
        ("RSICD", "RSICD", DATA / "rs_captions" / "rsicd"),
        ("UCMCaptions", "UCMCaptions", DATA / "rs_captions" / "ucm"),
        ("DGTRSD", "DGTRSD", DATA / "dgtrsd"),
    ],
)
def test_caption_benchmarks_default_to_their_test_split(name: str, cls: str, root: Path) -> None:
    from dgtrs_geo import datasets
    from dgtrs_geo.evaluation.data import load_benchmark

    data = load_benchmark(name.lower(), str(root))
    expected = getattr(datasets, cls)(root=str(root), split="test")
    assert type(data.dataset) is type(expected) and len(data.dataset) == len(expected) > 0
    assert (data.name, data.task, data.classnames, data.pixel_scale) == (
        name, "retrieval", None, 1.0
    )  # fmt: skip
    assert data.key == f"{name}|{root}|test|{len(expected)}"


def test_synthetic_scenes_need_no_root_and_follow_split_and_length() -> None:
    from dgtrs_geo.evaluation.data import load_benchmark

    data = load_benchmark("syntheticscenes", "/ignored", split="val", synthetic_length=7)
    assert len(data.dataset) == 7 and data.dataset.split == "val"
    assert data.key == "SyntheticScenes||val|7" and data.task == "retrieval"
    assert load_benchmark("SyntheticScenes", "").key == "SyntheticScenes||test|500"


@pytest.mark.parametrize("name", ["UCMerced", "RESISC45", "AID", "ImageFolder"])
def test_classification_benchmarks_read_every_split_as_8_bit(name: str, tmp_path: Path) -> None:
    from torch.utils.data import ConcatDataset

    from dgtrs_geo.evaluation.data import load_benchmark

    match name:
        case "UCMerced":
            _class_folders(tmp_path, Path("UCMerced_LandUse/Images"), "uc_merced-{}.txt", ".tif")
        case "RESISC45":
            _class_folders(tmp_path, Path("NWPU-RESISC45"), "resisc45-{}.txt", ".jpg")
        case _:
            _class_folders(tmp_path, Path("."), "unused-{}.txt", ".png")
    data = load_benchmark(name, str(tmp_path))
    assert data.task == "zeroshot" and data.pixel_scale == 1.0
    assert data.classnames == ["dense residential", "harbor"]
    assert len(data.dataset) == 6 and data.key == f"{name}|{tmp_path}|all|6"
    if name in ("UCMerced", "RESISC45"):
        assert isinstance(data.dataset, ConcatDataset)  # train + val + test
        test_only = load_benchmark(name, str(tmp_path), split="test")
        assert not isinstance(test_only.dataset, ConcatDataset) and len(test_only.dataset) == 2
    # 8-bit data as it is: the first sample of the first class is red.
    assert data.dataset[0]["image"][:, 0, 0].tolist() == pytest.approx([200, 30, 30], abs=2)


def test_limit_keeps_the_first_samples_and_no_more() -> None:
    from torch.utils.data import Subset

    from dgtrs_geo.evaluation.data import load_benchmark

    whole = load_benchmark("SyntheticScenes", "", synthetic_length=5)
    assert load_benchmark("SyntheticScenes", "", limit=5, synthetic_length=5).dataset is not None
    assert not isinstance(
        load_benchmark("SyntheticScenes", "", limit=5, synthetic_length=5).dataset, Subset
    )
    cut = load_benchmark("SyntheticScenes", "", limit=3, synthetic_length=5)
    assert isinstance(cut.dataset, Subset) and list(cut.dataset.indices) == [0, 1, 2]
    assert cut.key == "SyntheticScenes||test|3" and len(whole.dataset) == 5
    with pytest.raises(ValueError, match="unknown dataset 'Nowhere'; known datasets: RSITMD, "):
        load_benchmark("Nowhere", "")


def test_run_evaluation_contract(colour_model, tmp_path: Path, monkeypatch) -> None:
    from dgtrs_geo.errors import InputError
    from dgtrs_geo.evaluation import embeddings
    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.runner import (
        EvaluationSettings,
        evaluate_retrieval,
        model_label,
        run_evaluation,
    )

    _fabricate_eurosat(tmp_path / "EuroSAT")
    data = load_benchmark("EuroSAT", str(tmp_path / "EuroSAT"))
    with pytest.raises(
        InputError, match=r"^evaluation needs at least one --model and one --dataset$"
    ):
        run_evaluation([], [data], EvaluationSettings())
    with pytest.raises(InputError, match=r"would share a row name in the report: \['x', 'x'\]"):
        run_evaluation(["a/x.pt", "b/x.pt"], [data], EvaluationSettings())
    with pytest.raises(InputError, match="^EuroSAT gave no captions: is it a caption dataset"):
        evaluate_retrieval(colour_model, data, EvaluationSettings(progress=False))
    assert model_label("dgtrs-clip-vit-b-16") == "dgtrs-clip-vit-b-16"
    assert model_label("/runs/7/last.ckpt") == "last"
    assert model_label("/runs/7/exported") == "/runs/7/exported"  # no suffix: kept whole
    # Settings reach the loader and the embedding loop: device, batches, workers, progress.
    loaders = []
    real_loader = embeddings.DataLoader

    def loader(*args, **kwargs):
        loaders.append(kwargs)
        return real_loader(*args, **{**kwargs, "num_workers": 0})

    monkeypatch.setattr(embeddings, "DataLoader", loader)
    sizes = []
    encode = colour_model.encode_image
    monkeypatch.setattr(
        colour_model, "encode_image", lambda x: (sizes.append(len(x)), encode(x))[1]
    )
    settings = EvaluationSettings(device="cuda:7", batch_size=4, num_workers=3, progress=True)
    run_evaluation(["colour"], [data], settings)
    assert colour_model.loaded[-1] == ("colour", "cuda:7")
    assert sizes == [4, 4, 1] and loaders[-1]["num_workers"] == 3


def test_confusion_figure_shows_row_normalised_rates() -> None:
    from matplotlib import pyplot as plt

    from dgtrs_geo.evaluation.zeroshot import plot_confusion_matrix

    figure = plot_confusion_matrix([[3, 1, 0], [0, 0, 0], [2, 2, 4]], ["a", "b", "c"], "t")
    ax = figure.axes[0]
    rates = ax.images[0].get_array()
    # Each true class's row sums to 1; a class without samples stays 0 (no division by 0).
    np.testing.assert_allclose(rates, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    assert ax.images[0].get_clim() == (0, 1)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "t")
    assert tuple(figure.get_size_inches()) == (5.0, 4.0)
    big = plot_confusion_matrix(np.eye(30, dtype=int).tolist(), [str(i) for i in range(30)])
    assert tuple(big.get_size_inches()) == (10.5, 9.5) and big.axes[0].get_title() == ""
    plt.close(figure)
    plt.close(big)


class _Planted:
    """Not a tensor: a cache file holding it must not be unpickled."""


def test_a_planted_cache_file_is_refused_not_unpickled(colour_model, tmp_path: Path) -> None:
    import pickle

    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.embeddings import cache_path, encode_benchmark

    _fabricate_eurosat(tmp_path / "EuroSAT")
    data = load_benchmark("EuroSAT", str(tmp_path / "EuroSAT"))
    path = cache_path(tmp_path / "cache", colour_model.model_id, data)
    path.parent.mkdir(parents=True)
    torch.save({"image": _Planted()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        encode_benchmark(colour_model, data, cache_dir=tmp_path / "cache", progress=False)
