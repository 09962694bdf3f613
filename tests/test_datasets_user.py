import shutil
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
import torch
from matplotlib import pyplot as plt
from torchgeo.datasets import DatasetNotFoundError
from torchgeo.samplers import Units

from dgtrs_geo.datasets import FeatureChipSampler, ManifestError, UserCaptions

DATA = Path(__file__).parent / "data" / "user_captions"
GPKG = DATA / "captions.gpkg"
# square colours drawn by data.py, by caption
COLOURS = {
    "a red roof": [255, 0, 0],
    "a blue pool": [0, 0, 255],
    "a yellow field": [255, 255, 0],
    "a white tank": [255, 255, 255],
}


def make(**kwargs: object) -> UserCaptions:
    return UserCaptions(
        DATA, GPKG, "caption", **{"long_caption_column": "description", "chip_size": 16, **kwargs}
    )


def test_chips_centre_on_reprojected_features() -> None:
    ds = make()
    assert ds.crs.to_epsg() == 32633 and ds.res == (1.0, 1.0)
    assert len(ds) == 4 and ds.chip_pixels == 16
    seen = []
    for query in FeatureChipSampler(ds):
        sample = ds[query]
        assert set(sample) == {"image", "caption_short", "caption_long", "crs", "bounds"}
        image = sample["image"]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        # the 8 x 8 m square sits in the middle of the 16 m chip, background around it
        assert image[:, 8, 8].tolist() == COLOURS[sample["caption_short"]]
        assert image[:, 5, 5].tolist() == COLOURS[sample["caption_short"]]
        assert image[:, 1, 1].tolist() == [40, 40, 40] and image[:, 14, 14].tolist() == [40, 40, 40]
        assert sample["caption_long"].startswith(sample["caption_short"] + " in the")
        seen.append(sample["caption_short"])
    assert sorted(seen) == sorted(COLOURS)


def test_chip_bounds_in_raster_crs() -> None:
    ds = make()
    x, y, _ = ds.chip(0)
    # red roof: tile a (west 500000, north 4650064), pixel column 16, row 16
    assert (x.start, x.stop) == pytest.approx((500016 - 8, 500016 + 8), abs=1e-6)
    assert (y.start, y.stop) == pytest.approx((4650048 - 8, 4650048 + 8), abs=1e-6)
    assert x.step == pytest.approx(1.0)


def test_chip_size_in_metres_and_big_features(tmp_path: Path) -> None:
    ds = make(chip_size=24, units=Units.CRS)
    assert ds.chip_pixels == 24
    sample = ds[ds.chip(1)]
    assert sample["image"].shape == (3, 24, 24)
    # a feature larger than the chip widens it, read at the same pixel count
    features = gpd.read_file(GPKG).to_crs(32633)
    features.loc[0, "geometry"] = features.geometry[0].buffer(20, cap_style="square")
    features.to_file(tmp_path / "big.gpkg")
    big = UserCaptions(DATA, tmp_path / "big.gpkg", "caption", chip_size=16)
    x, _, _ = big.chip(0)
    assert x.stop - x.start == pytest.approx(48) and x.step == pytest.approx(3)
    assert big[big.chip(0)]["image"].shape == (3, 16, 16)


def test_split_column() -> None:
    assert len(make(split="train", split_column="split")) == 2
    val = make(split="val", split_column="split")
    assert len(val) == 1 and val[val.chip(0)]["caption_short"] == "a yellow field"
    with pytest.raises(ValueError, match="needs split_column"):
        make(split="val")
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        make(split="dev", split_column="split")


def edited(tmp_path: Path, column: str, index: int, value: object) -> Path:
    features = gpd.read_file(GPKG)
    features.loc[index, column] = value
    path = tmp_path / "edited.gpkg"
    features.to_file(path)
    return path


def test_bad_features(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"feature 2: empty caption in column 'caption'"):
        UserCaptions(DATA, edited(tmp_path, "caption", 2, " "), "caption")
    with pytest.raises(ManifestError, match=r"feature 1: unknown split 'training'"):
        UserCaptions(
            DATA, edited(tmp_path, "split", 1, "training"), "caption", split_column="split"
        )
    with pytest.raises(
        ManifestError, match=r"no column 'label'; columns: \['caption', 'description', 'split'\]"
    ):
        UserCaptions(DATA, GPKG, "label")
    with pytest.raises(DatasetNotFoundError):
        UserCaptions(DATA, tmp_path / "missing.gpkg", "caption")
    with pytest.raises(DatasetNotFoundError):
        UserCaptions(tmp_path / "no_rasters", GPKG, "caption")


def test_features_outside_rasters_are_counted(tmp_path: Path) -> None:
    features = gpd.read_file(GPKG).to_crs(32633)
    features.loc[3, "geometry"] = shapely.box(0, 0, 10, 10)
    features.to_file(tmp_path / "far.gpkg")
    with pytest.warns(UserWarning, match="Left out 1 features"):
        ds = UserCaptions(DATA, tmp_path / "far.gpkg", "caption", chip_size=16)
    assert len(ds) == 3 and ds.num_outside == 1


def test_query_without_feature() -> None:
    ds = make()
    with pytest.raises(IndexError, match="holds no feature chip"):
        ds[(slice(500030, 500034, 1.0), slice(4650030, 4650034, 1.0), slice(None, None))]


def test_single_band_raster_repeated(tmp_path: Path) -> None:
    import rasterio

    with rasterio.open(DATA / "tile_a.tif") as src:
        profile, band = src.profile, src.read(1)
    profile.update(count=1)
    with rasterio.open(tmp_path / "gray.tif", "w", **profile) as dst:
        dst.write(band, 1)
    shutil.copy(GPKG, tmp_path / "c.gpkg")
    with pytest.warns(UserWarning, match="Left out 2 features"):  # the two on tile b
        ds = UserCaptions(tmp_path / "gray.tif", tmp_path / "c.gpkg", "caption", chip_size=16)
    assert len(ds) == 2
    image = ds[ds.chip(0)]["image"]
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[2])


def test_sampler_shuffles_reproducibly_and_plot() -> None:
    ds = make()
    order = [
        ds[q]["caption_short"]
        for q in FeatureChipSampler(ds, True, torch.Generator().manual_seed(1))
    ]
    again = [
        ds[q]["caption_short"]
        for q in FeatureChipSampler(ds, True, torch.Generator().manual_seed(1))
    ]
    assert order == again and sorted(order) == sorted(COLOURS) and len(FeatureChipSampler(ds)) == 4
    sample = ds[ds.chip(0)]
    sample["prediction"] = "a roof"
    fig = ds.plot(sample)
    assert "prediction: a roof" in fig.axes[0].get_title(loc="left")
    plt.close(fig)
