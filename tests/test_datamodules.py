from pathlib import Path

import pytest
import torch

from dgtrs_geo.datamodules import (
    CLIP_MEAN,
    CLIP_STD,
    CaptionDataModule,
    DGTRSDDataModule,
    SyntheticScenesDataModule,
    UserCaptionsDataModule,
    clip_augmentation,
    collate_captions,
)


def test_clip_augmentation_values() -> None:
    # a constant image normalises to the hand-computed (v/255 - mean) / std per channel
    image = torch.full((2, 3, 40, 60), 200.0)
    out = clip_augmentation(32)({"image": image, "caption_short": ["a", "b"]})
    assert out["image"].shape == (2, 3, 32, 32)
    expected = torch.tensor([(200 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(out["image"].mean(dim=(0, 2, 3)), expected, atol=1e-4)
    assert out["caption_short"] == ["a", "b"]


def test_clip_augmentation_center_crops_the_short_side() -> None:
    # Black up to column 33 of 90, white after: the short side resized to 16 makes it 48 wide
    # with the edge at 17.6; the centre crop keeps columns 16..32, so the edge is 1.6 px in.
    # A squash to 16 x 16 would put it at 5.9 px, a left crop leaves all black, a right one
    # all white: each gives other values at columns 0 and 3.
    image = torch.zeros(1, 3, 30, 90)
    image[..., 33:] = 255.0
    out = clip_augmentation(16, mean=(0, 0, 0), std=(1, 1, 1))({"image": image})["image"]
    assert out.shape == (1, 3, 16, 16)
    assert out[0, 0, 8, 0].item() == pytest.approx(0, abs=0.05)
    assert out[0, 0, 8, 3].item() == pytest.approx(1, abs=0.05)
    assert out[0, 0, 8, 13].item() == pytest.approx(1, abs=0.05)


def test_collate_keeps_caption_lists() -> None:
    samples = [
        {
            "image": torch.full((3, 4, 4), float(i)),
            "caption_short": f"s{i}",
            "captions": [f"c{i}"] * 5,
        }
        for i in range(3)
    ]
    batch = collate_captions(samples)
    assert batch["image"].shape == (3, 3, 4, 4)
    assert batch["image"][2].max() == 2
    assert batch["caption_short"] == ["s0", "s1", "s2"]
    assert batch["captions"] == [["c0"] * 5, ["c1"] * 5, ["c2"] * 5]


def test_synthetic_datamodule_batches() -> None:
    dm = SyntheticScenesDataModule(
        batch_size=4,
        image_size=32,
        train_length=10,
        val_length=6,
        test_length=5,
        scene_size=48,
        seed=1,
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 10 and len(dm.val_dataset) == 6
    loader = dm.train_dataloader()
    assert len(loader) == 2  # drop_last on train
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 48, 48)
    batch = dm.aug(batch)
    assert set(batch) == {"image", "caption_short", "caption_long"}
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["image"].dtype == torch.float32
    # normalised: a 0..255 image could not go below 0 otherwise
    assert batch["image"].min() < 0
    assert (
        all(isinstance(c, str) for c in batch["caption_long"]) and len(batch["caption_long"]) == 4
    )
    val = next(iter(dm.val_dataloader()))
    assert val["caption_short"][0] == dm.val_dataset[0]["caption_short"]

    dm.setup("test")
    dm.setup("predict")
    assert len(dm.test_dataset) == 5 and len(dm.predict_dataset) == 5
    assert dm.predict_dataset[0]["caption_long"] == dm.test_dataset[0]["caption_long"]
    assert dm.predict_dataset[0]["caption_long"] != dm.val_dataset[0]["caption_long"]


DATA = Path(__file__).parent / "data"


def test_dgtrsd_datamodule() -> None:
    dm = DGTRSDDataModule(batch_size=2, image_size=8, root=DATA / "dgtrsd", manifest="dgtrsd.csv")
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 1
    batch = dm.aug(next(iter(dm.train_dataloader())))
    assert batch["image"].shape == (2, 3, 8, 8)
    assert set(batch) == {"image", "caption_short", "caption_long"}
    assert len(batch["caption_long"]) == 2
    assert set(batch["caption_short"]) <= {"A red field.", "A green park.", "A blue lake."}
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["caption_short"] == ["A grey car park.", "A white roof."]  # not shuffled


def test_caption_datamodule_by_name() -> None:
    dm = CaptionDataModule("RSICD", batch_size=2, image_size=8, root=DATA / "rs_captions" / "rsicd")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert len(batch["captions"]) == 2 and all(len(c) == 5 for c in batch["captions"])
    assert batch["captions"][0][0] == batch["caption_short"][0]
    batch = dm.aug(batch)
    assert batch["image"].shape == (2, 3, 8, 8)
    # RSITMD ships no val split: validate on test instead
    dm = CaptionDataModule("rsitmd", root=DATA / "rs_captions" / "rsitmd", val_split="test")
    dm.setup("validate")
    assert len(dm.val_dataset) == 2
    with pytest.raises(ValueError, match="Unknown caption dataset 'coco'"):
        CaptionDataModule("coco")


def test_user_captions_datamodule() -> None:
    root = DATA / "user_captions"
    dm = UserCaptionsDataModule(
        root,
        root / "captions.gpkg",
        "caption",
        "description",
        split_column="split",
        batch_size=2,
        image_size=8,
        chip_size=16,
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert sorted(batch["caption_short"]) == ["a blue pool", "a red roof"]
    batch = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    batch = dm.aug(batch)
    assert set(batch) == {"image", "caption_short", "caption_long"}
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].min() < 0
    dm.setup("test")
    (test,) = list(dm.test_dataloader())
    assert test["caption_long"] == ["a white tank in the north east of tile b"]
    # without split_column every stage sees all features
    dm = UserCaptionsDataModule(root, root / "captions.gpkg", "caption", chip_size=16)
    dm.setup("validate")
    assert len(dm.val_dataset) == 4


def test_synthetic_datamodule_from_cli_config() -> None:
    # the way `torchgeo fit --config` builds it: a class_path with typed init_args
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = parser.parse_object(
        {
            "data": {
                "class_path": "dgtrs_geo.datamodules.SyntheticScenesDataModule",
                "init_args": {
                    "batch_size": 2,
                    "image_size": 32,
                    "train_length": 4,
                    "num_objects": [1, 2],
                    "scene_size": 32,
                },
            }
        }
    )
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, SyntheticScenesDataModule)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and dm.train_dataset.num_objects == (1, 2)
    assert all(1 <= len(dm.train_dataset.scene(i).objects) <= 2 for i in range(4))
