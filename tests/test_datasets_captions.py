import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from matplotlib import pyplot as plt
from torchgeo.datasets import DatasetNotFoundError

import dgtrs_geo.datasets.captions as captions_module
from dgtrs_geo.datasets import RSICD, RSITMD, ManifestError, RSCaptionDataset, UCMCaptions

DATA = Path(__file__).parent / "data" / "rs_captions"
CASES = [
    (RSITMD, "rsitmd", {"train": 3, "test": 2}),
    (RSICD, "rsicd", {"train": 3, "val": 2, "test": 2}),
    (UCMCaptions, "ucm", {"train": 2, "val": 1, "test": 2}),
]


@pytest.mark.parametrize(("cls", "folder", "sizes"), CASES)
def test_public_layout(cls: type[RSCaptionDataset], folder: str, sizes: dict[str, int]) -> None:
    for split, n in sizes.items():
        ds = cls(DATA / folder, split=split)
        assert len(ds) == n
    ds = cls(DATA / folder, split="test")
    sample = ds[1]
    assert set(sample) == {"image", "captions", "caption_short", "caption_long"}
    assert sample["image"].shape == (3, 16, 16) and sample["image"].dtype == torch.float32
    entries = json.loads((DATA / folder / cls.filename).read_text())["images"]
    entry = [e for e in entries if e["split"] == "test"][1]
    assert sample["captions"] == [s["raw"] for s in entry["sentences"]]
    assert sample["caption_short"] == entry["sentences"][0]["raw"]
    assert sample["caption_long"] == " ".join(sample["captions"])


def test_flat_captions_and_image_index() -> None:
    ds = RSICD(DATA / "rsicd", split="test")
    flat = ds.all_captions
    index = ds.caption_to_image
    assert len(flat) == 10 and index.tolist() == [0] * 5 + [1] * 5
    assert index.dtype == torch.long
    for caption, image in zip(flat, index.tolist(), strict=True):
        assert caption in ds[image]["captions"]
    assert flat[5] == "caption 0 of river image 6 ."


def test_pixels_match_file() -> None:
    import numpy as np
    from PIL import Image

    ds = UCMCaptions(DATA / "ucm", split="train")
    expected = np.asarray(Image.open(DATA / "ucm" / "imgs" / "airport_0.tif"), dtype=np.float32)
    assert torch.equal(ds[0]["image"], torch.from_numpy(expected).permute(2, 0, 1))


def test_empty_split_and_unknown_split() -> None:
    with pytest.raises(ManifestError, match="no images in split 'val'"):
        RSITMD(DATA / "rsitmd", split="val")
    with pytest.raises(ValueError, match="Unknown split 'valid'"):
        RSITMD(DATA / "rsitmd", split="valid")


def copy(tmp_path: Path, folder: str) -> Path:
    root = tmp_path / folder
    shutil.copytree(DATA / folder, root)
    return root


def test_missing_image_and_empty_caption(tmp_path: Path) -> None:
    root = copy(tmp_path, "rsicd")
    (root / "RSICD_images" / "beach_1.jpg").unlink()
    with pytest.raises(ManifestError, match=r"images\[1\] \('beach_1.jpg'\): image not found"):
        RSICD(root, split="train")
    RSICD(root, split="test")  # other splits do not need that image
    annotations = json.loads((root / "dataset_rsicd.json").read_text())
    annotations["images"][5]["sentences"][2]["raw"] = "  "
    (root / "dataset_rsicd.json").write_text(json.dumps(annotations))
    with pytest.raises(ManifestError, match=r"images\[5\] .*empty caption"):
        RSICD(root, split="test")


def test_corrupt_image_skip(tmp_path: Path) -> None:
    root = copy(tmp_path, "ucm")
    (root / "imgs" / "beach_1.tif").write_bytes(b"II*\x00garbage")
    with pytest.warns(UserWarning, match="Skipped 1 of 2"):
        ds = UCMCaptions(root, split="train", skip_corrupt=True)
    assert len(ds) == 1 and ds.num_skipped == 1 and ds.caption_to_image.tolist() == [0] * 5
    with pytest.raises(OSError, match="Cannot decode image .*beach_1.tif"):
        UCMCaptions(root, split="train")[1]


def test_not_found_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="Dataset not found") as info:
        RSITMD(tmp_path)
    assert "dataset_RSITMD.json" in info.value.__notes__[0]
    # no public direct link: download=True cannot help and says so
    with pytest.raises(DatasetNotFoundError, match="cannot be automatically downloaded"):
        RSITMD(tmp_path, download=True)


def fake_download(url: str, root: str | Path, *args: object, **kwargs: object) -> None:
    shutil.copy(url, root)


@pytest.fixture
def mirrored(monkeypatch: pytest.MonkeyPatch) -> str:
    archive = DATA / "rsitmd" / "rsitmd.zip"
    monkeypatch.setattr(RSITMD, "url", str(archive))
    monkeypatch.setattr(RSITMD, "md5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(captions_module, "download_url", fake_download)
    return str(archive)


def test_download_extracts_archive(tmp_path: Path, mirrored: str) -> None:
    ds = RSITMD(tmp_path, split="test", download=True, checksum=True)
    assert len(ds) == 2 and (tmp_path / "images" / "meadow_4.tif").is_file()
    # a second instance finds the extracted files without downloading
    shutil.rmtree(tmp_path / "images")
    assert len(RSITMD(tmp_path, split="test")) == 2  # re-extracted from the archive


def test_download_checksum_mismatch(
    tmp_path: Path, mirrored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RSITMD, "md5", "0" * 32)
    with pytest.raises(RuntimeError, match="does not match its MD5"):
        RSITMD(tmp_path, download=True, checksum=True)


def test_plot_shows_all_captions() -> None:
    ds = RSITMD(DATA / "rsitmd", split="train")
    sample = ds[0]
    sample["prediction"] = "an airport"
    fig = ds.plot(sample)
    title = fig.axes[0].get_title(loc="left")
    assert all(c in title for c in sample["captions"]) and "prediction: an airport" in title
    plt.close(fig)


def test_module_lists_sources() -> None:
    for cls in (RSITMD, RSICD, UCMCaptions):
        assert cls.source.startswith("https://") and cls.url is None
    assert captions_module.RSCaptionDataset.splits == ("train", "val", "test")
