import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from dgtrs_geo.cli import main

AIRSLT_ROOT = Path(__file__).parent / "data" / "airslt"
COLOURS = {"airplane": (200, 40, 40), "beach": (230, 210, 150), "forest": (30, 110, 40)}


def _write_jpeg(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 20, size=(size, size, 3))
    array = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fabricate_rsitmd(root: Path) -> None:
    images = []
    for index, (name, colour) in enumerate(COLOURS.items()):
        filename = f"{name}_{index}.jpg"
        _write_jpeg(root / "images" / filename, colour, index)
        sentences = [{"raw": f"caption {k} of a {name} scene"} for k in range(5)]
        images.append({"filename": filename, "split": "test", "sentences": sentences})
    (root / "dataset_RSITMD.json").write_text(json.dumps({"images": images}))


def _fabricate_ucmerced(root: Path) -> None:
    # TorchGeo's ImageFolder needs every class in every split: sample k of each class is split k.
    files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for class_index, (name, colour) in enumerate(COLOURS.items()):
        for k, split in enumerate(files):
            filename = f"{name}{k:02d}.tif"
            array = np.stack([np.full((24, 24), c, dtype=np.uint8) for c in colour])
            path = root / "UCMerced_LandUse" / "Images" / name / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(
                path, "w", driver="GTiff", width=24, height=24, count=3, dtype="uint8"
            ) as dst:
                dst.write(array + class_index + k)
            files[split].append(filename)
    for split, chosen in files.items():
        (root / f"uc_merced-{split}.txt").write_text("\n".join(chosen) + "\n")


def _fabricate_eurosat(root: Path) -> None:
    base = root / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" / "tif"
    files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name in ("AnnualCrop", "SeaLake"):
        for k, split in enumerate(files):
            filename = f"{name}_{k + 1}.tif"
            path = base / name / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            data = np.random.default_rng(k).integers(0, 4000, size=(13, 16, 16)).astype(np.uint16)
            profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 13, "dtype": "uint16"}
            with rasterio.open(path, "w", transform=from_origin(0, 16, 1, 1), **profile) as dst:
                dst.write(data)
            # The split files list the RGB release's .jpg names; TorchGeo maps them to .tif.
            files[split].append(filename.replace(".tif", ".jpg"))
    for split, chosen in files.items():
        (root / f"eurosat-{split}.txt").write_text("\n".join(chosen) + "\n")


def _fabricate_aid(root: Path) -> None:
    for index, (name, colour) in enumerate(COLOURS.items()):
        folder = {"airplane": "Airport", "beach": "Beach", "forest": "DenseResidential"}[name]
        for k in range(2):
            _write_jpeg(
                root / folder / f"{folder.lower()}_{k}.jpg", colour, 10 * index + k, size=48
            )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    _fabricate_rsitmd(root / "RSITMD")
    _fabricate_ucmerced(root / "UCMerced")
    _fabricate_eurosat(root / "EuroSAT")
    _fabricate_aid(root / "AID")
    return root


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dgtrs_geo.models import create_clip, save_checkpoint

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("second") / "tiny-b.pt"
    return save_checkpoint(create_clip("dgtrs-tiny"), path, format="dgtrs")


@pytest.fixture(scope="module")
def evaluated(
    data_root: Path,
    tiny_checkpoint: Path,
    second_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    (data_root / "AIRSLT").symlink_to(AIRSLT_ROOT, target_is_directory=True)
    out = tmp_path_factory.mktemp("report")
    # One template per family keeps the 248-token text tower's work small on a shared CPU.
    templates = out.parent / "templates.txt"
    templates.write_text(
        "# one per family\na remote sensing image of {}.\nan aerial image of {}.\n"
        "a satellite image of {}.\n"
    )
    # Module fixtures run before conftest's per-test cache isolation: point at the same cache.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGTRS_GEO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        code = main(
            [
                "evaluate",
                "all",
                "--model",
                str(tiny_checkpoint),
                "--model",
                str(second_checkpoint),
                "--root",
                str(data_root),
                "--selo-scales",
                "128",
                "--templates",
                str(templates),
                "--device",
                "cpu",
                "--no-progress",
                "-o",
                str(out),
            ]
        )
    assert code == 0
    return out


def test_evaluate_all_writes_the_table(evaluated: Path) -> None:
    lines = (evaluated / "results.md").read_text().splitlines()
    assert lines[2] == (
        "| model | RSITMD mR | EuroSAT | UCMerced | AID | SeLo Rsu / Rda / Ras / Rmi "
        "| SeLo (fast) Rsu / Rda / Ras / Rmi | SeLo s/query (reference / fast) |"
    )
    rows = [line.split(" | ") for line in lines[4:6]]
    assert [row[0] for row in rows] == ["| dgtrs-tiny", "| tiny-b"]
    report = json.loads((evaluated / "results.json").read_text())
    for label, row in zip(report["models"], rows, strict=True):
        result = report["results"][label]
        assert row[1] == f"{result['RSITMD']['short']['mR']:.2f}"
        assert row[2] == f"{result['EuroSAT']['top1']:.2f}"
        selo = result["AIRSLT"]["reference"]["mean"]
        assert row[5] == " / ".join(
            f"{selo[k]:.4f}".removeprefix("0") for k in ("rsu", "rda", "ras", "rmi")
        )
    for label in report["models"]:
        for index in range(3):
            assert (
                evaluated / "figures" / f"selo-AIRSLT-{label}-{index:03d}.png"
            ).stat().st_size > 0
    for name in ("AID", "EuroSAT", "UCMerced"):
        for label in report["models"]:
            assert (evaluated / "figures" / f"confusion-{name}-{label}.png").stat().st_size > 0


def test_zeroshot_uses_the_whole_dataset(evaluated: Path) -> None:
    report = json.loads((evaluated / "results.json").read_text())
    for label in report["models"]:
        eurosat = report["results"][label]["EuroSAT"]
        confusion = np.array(eurosat["confusion"])
        assert confusion.sum() == 6  # 3 splits x 2 classes
        assert eurosat["classnames"] == ["annual crop", "sea lake"]
        assert eurosat["top1"] == pytest.approx(100 * np.trace(confusion) / 6)
        aid = report["results"][label]["AID"]
        assert aid["classnames"] == ["airport", "beach", "dense residential"]
        assert np.array(aid["confusion"]).sum(axis=1).tolist() == [2, 2, 2]


def test_selo_csv_matches_means(evaluated: Path) -> None:
    import csv

    with open(evaluated / "selo_samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3  # models x modes x queries
    report = json.loads((evaluated / "results.json").read_text())
    for label in report["models"]:
        for mode in ("reference", "fast"):
            mine = [r for r in rows if r["model"] == label and r["mode"] == mode]
            mean = report["results"][label]["AIRSLT"][mode]["mean"]
            for key in ("rsu", "rda", "ras", "rmi"):
                assert np.mean([float(r[key]) for r in mine]) == pytest.approx(mean[key])
            assert all(float(r["seconds"]) > 0 for r in mine)


def test_retrieval_matches_a_direct_computation(
    evaluated: Path, tiny_model, data_root: Path
) -> None:
    from dgtrs_geo.datasets import RSITMD
    from dgtrs_geo.evaluation import retrieval_recalls
    from dgtrs_geo.evaluation.embeddings import to_pil

    dataset = RSITMD(str(data_root / "RSITMD"), split="test")
    images = tiny_model.encode_pil([to_pil(dataset[i]["image"]) for i in range(len(dataset))])
    texts = tiny_model.encode_text(dataset.all_captions)
    expected = retrieval_recalls(images, texts, dataset.caption_to_image)
    report = json.loads((evaluated / "results.json").read_text())
    assert report["results"]["dgtrs-tiny"]["RSITMD"]["short"] == pytest.approx(expected, abs=1e-4)


def test_cached_embeddings_are_reused(
    evaluated: Path,
    data_root: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dgtrs_geo.models import EmbeddingModel

    def fail(*args, **kwargs):
        raise AssertionError("images were encoded again")

    monkeypatch.setattr(EmbeddingModel, "encode_image", fail)
    args = ["evaluate", "retrieval", "--model", str(tiny_checkpoint), "--dataset", "RSITMD"]
    args += [
        "--root",
        str(data_root / "RSITMD"),
        "--device",
        "cpu",
        "--no-progress",
        "-o",
        str(tmp_path),
    ]
    assert main(args) == 0
    first = json.loads((evaluated / "results.json").read_text())["results"]["dgtrs-tiny"]["RSITMD"]
    again = json.loads((tmp_path / "results.json").read_text())["results"]["dgtrs-tiny"]["RSITMD"]
    assert again == first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "RSITMD", "--root", "/nonexistent/rsitmd"], "Dataset not found"),
        (["--dataset", "AIRSLT", "--root", "/nonexistent/airslt"], "Dataset not found"),
        (["--dataset", "AID", "--root", "/nonexistent/aid"], "one sub-folder of images per class"),
        (["--dataset", "Nowhere", "--root", "/tmp"], "unknown dataset 'Nowhere'"),
    ],
)
def test_bad_datasets(
    extra: list[str],
    message: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code = main(["evaluate", "all", "--model", str(tiny_checkpoint), "-o", str(tmp_path), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.md").exists()


def test_wrong_task_for_dataset(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "evaluate",
        "selo",
        "--model",
        str(tiny_checkpoint),
        "--dataset",
        "EuroSAT",
        "--root",
        "/x",
    ]
    assert main([*args, "-o", str(tmp_path)]) == 2
    assert "EuroSAT is a zeroshot dataset, not a selo one" in capsys.readouterr().err


def test_model_that_fails_to_load(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    args = ["evaluate", "retrieval", "--model", str(broken), "--dataset", "RSITMD"]
    args += ["--root", str(data_root / "RSITMD"), "--device", "cpu", "-o", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot load model {str(broken)!r}" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_short_and_long_retrieval_on_synthetic_scenes(
    tiny_checkpoint: Path, tiny_model, tmp_path: Path
) -> None:
    args = [
        "evaluate",
        "retrieval",
        "--model",
        str(tiny_checkpoint),
        "--dataset",
        "SyntheticScenes",
    ]
    args += ["--limit", "6", "--device", "cpu", "--no-progress", "--no-cache", "-o", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())["results"]["dgtrs-tiny"]
    assert set(result["SyntheticScenes"]) == {"short", "long"}
    from dgtrs_geo.evaluation import retrieval_recalls
    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.embeddings import to_pil

    # The same 6 scenes embedded here: R@1 and R@5 of 6 candidates are not certainties.
    dataset = load_benchmark("SyntheticScenes", "", limit=6).dataset
    samples = [dataset[i] for i in range(6)]
    images = tiny_model.encode_pil([to_pil(s["image"]) for s in samples])
    for granularity, recalls in result["SyntheticScenes"].items():
        texts = tiny_model.encode_text([s[f"caption_{granularity}"] for s in samples])
        expected = retrieval_recalls(images, texts, torch.arange(6))
        assert recalls == pytest.approx(expected, abs=1e-4), granularity
    header = (tmp_path / "results.md").read_text().splitlines()[2]
    assert header == "| model | SyntheticScenes mR | SyntheticScenes long mR |"
    assert not list(tmp_path.glob("**/*.partial"))


def test_resolve_benchmarks_pairs_names_and_roots(data_root: Path) -> None:
    from dgtrs_geo.evaluation.data import resolve_benchmarks

    found = resolve_benchmarks("zeroshot", [], [str(data_root)])
    assert [b.name for b in found] == ["EuroSAT", "UCMerced", "AID"]
    assert found[0].pixel_scale == pytest.approx(255 / 3000)
    paired = resolve_benchmarks(
        "all", ["aid", "rsitmd"], [str(data_root / "AID"), str(data_root / "RSITMD")]
    )
    assert [(b.name, b.task) for b in paired] == [("AID", "zeroshot"), ("RSITMD", "retrieval")]
    assert (
        len(
            resolve_benchmarks("zeroshot", ["EuroSAT"], [str(data_root / "EuroSAT")], split="test")[
                0
            ].dataset
        )
        == 2
    )
    with pytest.raises(ValueError, match="one --root per --dataset"):
        resolve_benchmarks("all", ["AID", "RSITMD", "EuroSAT"], ["a", "b"])
    with pytest.raises(ValueError, match="unknown split"):
        resolve_benchmarks("zeroshot", ["EuroSAT"], [str(data_root / "EuroSAT")], split="holdout")


def test_selo_with_limit_and_one_mode(tiny_model, tmp_path: Path) -> None:
    from dgtrs_geo.evaluation.data import load_benchmark
    from dgtrs_geo.evaluation.runner import EvaluationSettings, evaluate_selo

    data = load_benchmark("airslt", str(AIRSLT_ROOT), limit=1)
    settings = EvaluationSettings(selo_scales=(128,), selo_modes=("fast",), progress=False)
    result = evaluate_selo(tiny_model, data, settings)
    assert list(result) == ["fast"]
    assert [row["caption"] for row in result["fast"]["samples"]] == [
        "a red plane parks near the terminal on the left"
    ]
    with pytest.raises(ValueError, match="SeLo modes"):
        evaluate_selo(tiny_model, data, EvaluationSettings(selo_modes=("exact",)))
