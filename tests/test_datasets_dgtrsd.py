import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torchgeo.datasets import DatasetNotFoundError

from dgtrs_geo.datasets import DGTRSD, CorruptImageError, ManifestError, read_manifest
from dgtrs_geo.datasets.utils import first_sentence

DATA = Path(__file__).parent / "data" / "dgtrsd"


@pytest.mark.parametrize("manifest", ["dgtrsd.jsonl", "dgtrsd.csv"])
def test_jsonl_and_csv_read_the_same(manifest: str) -> None:
    train = DGTRSD(DATA, split="train", manifest=manifest)
    assert len(train) == 3
    sample = train[2]
    assert set(sample) == {"image", "caption_short", "caption_long"}
    assert sample["caption_short"] == "A blue lake."
    assert sample["caption_long"] == "A blue lake. The water is calm and deep blue."
    assert sample["image"].shape == (3, 12, 16) and sample["image"].dtype == torch.float32
    # c.jpg is solid (30, 30, 200); JPEG keeps a flat colour within a few levels
    assert torch.allclose(
        sample["image"].mean(dim=(1, 2)), torch.tensor([30.0, 30.0, 200.0]), atol=3
    )
    assert len(DGTRSD(DATA, split="val", manifest=manifest)) == 1
    test = DGTRSD(DATA, split="test", manifest=manifest)
    # PNG is lossless: exact values
    assert torch.equal(test[1]["image"][:, 0, 0], torch.tensor([250.0, 250.0, 250.0]))


def test_sharegpt4v_layout() -> None:
    ds = DGTRSD(DATA, split="train", manifest="sharegpt4v.json")
    assert len(ds) == 6  # no split key: everything is train
    assert ds[1]["caption_long"] == "A green park. Grass covers every part of it."
    assert ds[1]["caption_short"] == "A green park."
    with pytest.raises(ManifestError, match="no entries for split 'val'"):
        DGTRSD(DATA, split="val", manifest="sharegpt4v.json")


def test_first_sentence() -> None:
    assert first_sentence("One. Two three.") == "One."
    assert first_sentence("  Is it? Yes!  ") == "Is it?"
    assert first_sentence("No full stop") == "No full stop"
    assert first_sentence("A 2.5 m wide road. More.") == "A 2.5 m wide road."


def test_manifest_per_split_and_absolute_paths(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DATA / "dgtrsd.jsonl").read_text().splitlines()]
    for split in ("train", "test"):
        with open(tmp_path / f"captions_{split}.jsonl", "w") as f:
            for row in rows:
                if row["split"] == split:
                    row = {**row, "image": str(DATA / row["image"])}
                    if split == "test":
                        del row["split"]
                    f.write(json.dumps(row) + "\n")
    # the test file has no split key: its rows count as train, so split=test finds none
    assert len(DGTRSD(tmp_path, split="train", manifest="captions_{split}.jsonl")) == 3
    with pytest.raises(ManifestError, match="no entries for split 'test'"):
        DGTRSD(tmp_path, split="test", manifest="captions_{split}.jsonl")


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def good_line(**changes: str) -> str:
    row = {
        "image": str(DATA / "images" / "a.jpg"),
        "caption_short": "s",
        "caption_long": "l",
        **changes,
    }
    return json.dumps(row)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"image": "x.jpg", "caption_short": "s"', r"line 2: not valid JSON"),
        ('["a list"]', r"line 2: expected a JSON object"),
        (good_line(caption_short="   "), r"line 2: empty or missing 'caption_short'"),
        (good_line(caption_long=""), r"line 2: empty or missing 'caption_long'"),
        (json.dumps({"caption_short": "s", "caption_long": "l"}), r"line 2: missing 'image'"),
        (good_line(split="training"), r"line 2: unknown split 'training'"),
        (good_line(image="images/nowhere.jpg"), r"line 2: image not found: .*images/nowhere.jpg"),
    ],
)
def test_bad_manifest_lines(tmp_path: Path, bad: str, message: str) -> None:
    manifest = write(tmp_path / "m.jsonl", [good_line(), bad])
    with pytest.raises(ManifestError, match=message) as info:
        DGTRSD(tmp_path, manifest="m.jsonl")
    assert str(manifest) in str(info.value)


def test_bad_csv_row_names_its_line(tmp_path: Path) -> None:
    write(
        tmp_path / "m.csv",
        ["image,caption_short,caption_long", f"{DATA}/images/a.jpg,s,l", f"{DATA}/images/b.png,,l"],
    )
    with pytest.raises(ManifestError, match=r"m.csv line 3: empty or missing 'caption_short'"):
        read_manifest(tmp_path / "m.csv")


def test_unknown_extension_and_split(tmp_path: Path) -> None:
    write(tmp_path / "m.txt", ["x"])
    with pytest.raises(ValueError, match="Unknown manifest extension '.txt'"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        DGTRSD(DATA, split="dev")


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="Dataset not found"):
        DGTRSD(tmp_path)


@pytest.fixture
def with_corrupt(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "images", tmp_path / "images")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # a truncated PNG: header fine, pixel data cut
    data = (DATA / "images" / "b.png").read_bytes()
    (tmp_path / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    lines = [
        json.dumps({"image": f"images/{n}", "caption_short": n, "caption_long": n})
        for n in ("a.jpg", "broken.jpg", "cut.png", "c.jpg")
    ]
    write(tmp_path / "m.jsonl", lines)
    return tmp_path


def test_corrupt_images_fail_by_default(with_corrupt: Path) -> None:
    ds = DGTRSD(with_corrupt, manifest="m.jsonl")
    assert len(ds) == 4 and ds.num_skipped == 0
    with pytest.raises(
        CorruptImageError, match=r"m.jsonl line 2: Cannot decode image .*broken.jpg"
    ):
        ds[1]
    with pytest.raises(CorruptImageError, match=r"line 3: .*cut.png"):
        ds[2]


def test_corrupt_images_skipped_with_count(with_corrupt: Path) -> None:
    with pytest.warns(UserWarning, match="Skipped 2 of 4 images"):
        ds = DGTRSD(with_corrupt, manifest="m.jsonl", skip_corrupt=True)
    assert ds.num_skipped == 2
    assert [ds[i]["caption_short"] for i in range(len(ds))] == ["a.jpg", "c.jpg"]


def test_transforms_and_plot() -> None:
    ds = DGTRSD(DATA, transforms=lambda s: {**s, "caption_long": s["caption_long"].upper()})
    sample = ds[0]
    assert sample["caption_long"] == "A RED FIELD. IT FILLS THE WHOLE IMAGE, FLAT AND EVEN."
    sample["prediction"] = "a red field"
    fig = ds.plot(sample, suptitle="x")
    assert isinstance(fig, Figure)
    title = fig.axes[0].get_title(loc="left")
    assert "caption_short: A red field." in title and "prediction: a red field" in title
    plt.close(fig)
    fig = ds.plot(sample, show_titles=False)
    assert fig.axes[0].get_title(loc="left") == ""
    plt.close(fig)


def test_relative_paths_resolve_against_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    records = read_manifest(os.path.relpath(DATA / "dgtrsd.jsonl", tmp_path))
    assert records[0].image == str(DATA / "images" / "a.jpg")
    assert records[0].where.endswith("dgtrsd.jsonl line 1")
