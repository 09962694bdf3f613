import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from torchgeo.datasets import DatasetNotFoundError

from dgtrs_geo.datasets import AIRSLT

ROOT = Path(__file__).parent / "data" / "airslt"


def test_loads_the_real_layout() -> None:
    dataset = AIRSLT(str(ROOT))
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["caption"] == "two white tanks stand by the runway"
    assert sample["jpg_name"] == "airport_1.jpg"
    assert sample["image"].shape == (3, 256, 320)
    assert len(sample["polygons"]) == 2
    np.testing.assert_array_equal(
        sample["polygons"][0], [[180, 40], [230, 40], [230, 90], [180, 90]]
    )
    # The drawn tank is white where its polygon is (JPEG keeps it near 245).
    assert sample["image"][:, 65, 205].min() > 200
    assert dataset.image_path(2).endswith(os.path.join("imgs", "port_3.jpg"))
    array = dataset.image_array(1)
    assert array.dtype == np.uint8
    assert array.shape == (256, 320, 3)
    np.testing.assert_array_equal(array, sample["image"].permute(1, 2, 0).numpy())


def test_plot() -> None:
    dataset = AIRSLT(str(ROOT))
    sample = dataset[0]
    sample["prediction"] = np.zeros((256, 320))
    figure = dataset.plot(sample, suptitle="test")
    assert len(figure.axes) == 2
    plt.close(figure)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="Dataset not found"):
        AIRSLT(str(tmp_path / "nowhere"))


def test_missing_images(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "annotations", tmp_path / "annotations")
    with pytest.raises(DatasetNotFoundError) as info:
        AIRSLT(str(tmp_path))
    assert "2 images named" in "\n".join(info.value.__notes__)


def test_root_level_annotations_and_images(tmp_path: Path) -> None:
    shutil.copy(ROOT / "annotations" / "anno.json", tmp_path / "anno.json")
    for name in ("airport_1.jpg", "port_3.jpg"):
        shutil.copy(ROOT / "imgs" / name, tmp_path / name)
    assert len(AIRSLT(str(tmp_path))) == 3


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"caption": "x", "jpg_name": "a.jpg"}, "lacks"),
        ({"caption": "x", "jpg_name": "a.jpg", "points": [[[0, 0], [5, 5]]]}, ">= 3"),
        ({"caption": "x", "jpg_name": "a.jpg", "points": []}, "no polygon"),
    ],
)
def test_malformed_annotations(tmp_path: Path, entry: dict, match: str) -> None:
    (tmp_path / "anno.json").write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=match):
        AIRSLT(str(tmp_path))
