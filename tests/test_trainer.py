import csv
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torchgeo.main import main

import dgtrs_geo
from dgtrs_geo.datamodules import SyntheticScenesDataModule
from dgtrs_geo.models import create_clip, save_checkpoint, stretch_positional_embedding
from dgtrs_geo.models.kps import frozen_prefix_rows
from dgtrs_geo.trainers import DGTRSCLIPTask, encode_text_trimmed, warmup_cosine

CONF = Path(__file__).parent / "conf"


def tiny_data(**kwargs) -> SyntheticScenesDataModule:
    args = {"batch_size": 4, "image_size": 32, "train_length": 8, "val_length": 4, "test_length": 4}
    return SyntheticScenesDataModule(scene_size=32, **(args | kwargs))


def tiny_trainer(tmp_path: Path, **kwargs) -> Trainer:
    args = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
    }
    return Trainer(**(args | kwargs))


def test_warmup_cosine_hand_values() -> None:
    assert warmup_cosine(0, 4, 12) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(8, 4, 12) == pytest.approx(0.5)  # half-way through the 8 decay steps
    assert warmup_cosine(12, 4, 12) == pytest.approx(0.0)
    assert warmup_cosine(5, 0, 5) == pytest.approx(0.0)


def test_trimmed_text_forward_equals_full(tiny_model) -> None:
    tokens = tiny_model.tokenizer(["a red roof", "a long caption " * 30, "x"])
    with torch.no_grad():
        full = tiny_model.clip.encode_text(tokens)
        trimmed = encode_text_trimmed(tiny_model.clip, tokens)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_kps_start_from_77_tokens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clip77 = create_clip("dgtrs-tiny", context_length=77)
    path = save_checkpoint(clip77, tmp_path / "clip77.pt", format="open_clip")
    task = DGTRSCLIPTask(init_checkpoint=str(path), kps_keep=20, kps_ratio=4)
    table = task.model.positional_embedding.detach()
    assert table.shape[0] == 248 and task.model.context_length == 248
    torch.testing.assert_close(table, stretch_positional_embedding(clip77.positional_embedding))
    assert frozen_prefix_rows(task.model) == 20
    assert task.model.logit_scale.item() == pytest.approx(math.log(100))
    # every other weight comes from the checkpoint unchanged
    torch.testing.assert_close(task.model.visual.proj, clip77.visual.proj)


def test_cut_to_77_tokens(tiny_checkpoint: Path, tiny_model) -> None:
    task = DGTRSCLIPTask(init_checkpoint=str(tiny_checkpoint), context_length=77)
    assert task.model.context_length == 77
    torch.testing.assert_close(
        task.model.positional_embedding.detach(), tiny_model.clip.positional_embedding[:77]
    )
    assert task.tokenizer(["a roof"]).shape == (1, 77)


def test_context_longer_than_checkpoint_is_refused(tmp_path: Path) -> None:
    clip = create_clip("dgtrs-tiny", context_length=100)
    path = save_checkpoint(clip, tmp_path / "clip100.pt", format="open_clip")
    with pytest.raises(ValueError, match="cannot reach context_length=248"):
        DGTRSCLIPTask(init_checkpoint=str(path))


def test_bad_dgcl_schedule_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown DGCL schedule"):
        DGTRSCLIPTask(arch="dgtrs-tiny", dgcl_schedule="exponential")


def test_frozen_rows_and_logit_clamp_after_optimizer_steps(tiny_checkpoint: Path, tmp_path) -> None:
    task = DGTRSCLIPTask(
        init_checkpoint=str(tiny_checkpoint),
        lr=0.05,
        weight_decay=0.5,
        warmup_steps=1,
        logit_scale_init=4.0,
        logit_scale_max=4.2,
    )
    before = task.model.positional_embedding.detach().clone()
    tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(task, tiny_data())
    after = task.model.positional_embedding.detach()
    assert torch.equal(after[:20], before[:20])
    assert not torch.allclose(after[20:], before[20:])
    # weight decay did move the hidden rows of the raw parameter; the effective table ignores them
    raw = task.model.parametrizations.positional_embedding.original.detach()
    assert not torch.allclose(raw[:20], before[:20])
    assert task.model.logit_scale.item() <= 4.2 + 1e-6


def test_dgcl_weights_logged_per_step(tmp_path: Path) -> None:
    task = DGTRSCLIPTask(
        arch="dgtrs-tiny",
        warmup_steps=1,
        dgcl_schedule="linear",
        dgcl_long_start=0.0,
        dgcl_long_end=1.0,
        dgcl_short_start=1.0,
        dgcl_short_end=0.4,
    )
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = tiny_trainer(tmp_path, max_steps=4, logger=logger, log_every_n_steps=1)
    trainer.fit(
        task,
        tiny_data(batch_size=2),
    )
    with open(tmp_path / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("dgcl_w_long")]
    assert [int(row["step"]) for row in rows] == [0, 1, 2, 3]
    assert [float(row["dgcl_w_long"]) for row in rows] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [float(row["dgcl_w_short"]) for row in rows] == pytest.approx([1.0, 0.8, 0.6, 0.4])


def test_validation_metrics_and_export_round_trip(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = []
    original = DGTRSCLIPTask.validation_step

    def recorded(self, batch, *args, **kwargs):
        batches.append(batch)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(DGTRSCLIPTask, "validation_step", recorded)
    task = DGTRSCLIPTask(init_checkpoint=str(tiny_checkpoint), export_dir=str(tmp_path / "export"))
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, tiny_data(train_length=4))
    metrics = trainer.callback_metrics
    # The recalls of the trained model on the 4 validation pairs, ranked here by hand.
    (batch,) = batches
    task.eval()
    with torch.no_grad():
        images = task(images=batch["image"])
        for granularity in ("long", "short"):
            recalls = _ranked_recalls(images, task(texts=batch[f"caption_{granularity}"]))
            for key, value in recalls.items():
                assert metrics[f"val_{granularity}_{key}"].item() == pytest.approx(value), key
    mean = (metrics["val_long_mR"] + metrics["val_short_mR"]) / 2
    assert metrics["val_mR"].item() == pytest.approx(mean.item())

    task.eval()
    images = torch.randn(3, 3, 32, 32)
    texts = ["a small red circle on green grass", "two objects on sand", "water"]
    with torch.no_grad():
        expected_image, expected_text = task(images=images), task(texts=texts)
    for name in ("dgtrs", "open_clip"):
        # open_clip state dicts do not record the activation: DGTRS-CLIP uses QuickGELU
        model = dgtrs_geo.load_model(tmp_path / "export" / f"{name}.pt", quick_gelu=True)
        assert model.context_length == 248
        torch.testing.assert_close(
            model.encode_image(images), expected_image, atol=1e-5, rtol=0, msg=name
        )
        torch.testing.assert_close(model.encode_text(texts), expected_text, atol=1e-5, rtol=0)


def test_predict_returns_embeddings(tiny_checkpoint: Path, tiny_model, tmp_path: Path) -> None:
    task = DGTRSCLIPTask(init_checkpoint=str(tiny_checkpoint))
    data = tiny_data()
    batches = tiny_trainer(tmp_path).predict(task, data)
    assert len(batches) == 1
    out = batches[0]
    assert set(out) == {"image", "caption_long", "caption_short"}
    assert out["image"].shape == (4, 32) and out["caption_long"].shape == (4, 32)
    torch.testing.assert_close(out["image"].norm(dim=-1), torch.ones(4))
    data.setup("predict")
    captions = [data.predict_dataset[i]["caption_short"] for i in range(4)]
    torch.testing.assert_close(
        out["caption_short"], tiny_model.encode_text(captions), atol=1e-5, rtol=0
    )


def _ranked_recalls(images: torch.Tensor, texts: torch.Tensor) -> dict[str, float]:
    """R@1/5/10 and mR of one caption per image (image i <-> caption i), counted by hand."""
    scores = images @ texts.T
    positive = scores.diagonal()
    off = ~torch.eye(len(scores), dtype=torch.bool)
    ranks = {
        "i2t": ((scores >= positive[:, None]) & off).sum(dim=1),
        "t2i": ((scores >= positive[None, :]) & off).sum(dim=0),
    }
    out = {
        f"{d}_r{k}": 100.0 * (r < k).float().mean().item()
        for d, r in ranks.items()
        for k in (1, 5, 10)
    }
    return out | {"mR": sum(out.values()) / len(out)}


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_torchgeo_cli(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list] = {"tasks": [], "before_step": []}
    for step in ("validation_step", "test_step", "training_step", "predict_step"):
        original = getattr(DGTRSCLIPTask, step)

        def spy(self, batch, *args, _original=original, _step=step, **kwargs):
            seen["tasks"].append(self)
            if _step == "training_step":
                seen["before_step"].append(self.model.positional_embedding.detach().clone())
            out = _original(self, batch, *args, **kwargs)
            seen.setdefault(_step, []).append((batch, out))
            return out

        monkeypatch.setattr(DGTRSCLIPTask, step, spy)
    args = [command, "--config", str(CONF / "dgtrs_clip.yaml"), "--trainer.fast_dev_run=true"]
    main([*args, "--trainer.default_root_dir", str(tmp_path)])
    task = seen["tasks"][-1]
    # The YAML reached the task: a CLI that ignored it would build the default architecture.
    assert task.hparams["arch"] == "dgtrs-tiny" and task.hparams["lr"] == 0.001
    task.eval()
    if command == "predict":
        ((batch, out),) = seen["predict_step"]  # fast_dev_run: one batch of 4
        with torch.no_grad():
            torch.testing.assert_close(out["image"], task(images=batch["image"]))
            for granularity in ("long", "short"):
                expected = task(texts=batch[f"caption_{granularity}"])
                torch.testing.assert_close(out[f"caption_{granularity}"], expected)
        assert out["image"].shape == (4, 32)
        return
    # fit trains one step (the trainable rows move), then validates; validate and test evaluate.
    assert len(seen["before_step"]) == (1 if command == "fit" else 0)
    if command == "fit":
        moved = task.model.positional_embedding.detach()
        assert not torch.equal(moved[20:], seen["before_step"][0][20:])
    prefix = "test" if command == "test" else "val"
    ((batch, _),) = seen[f"{'test' if command == 'test' else 'validation'}_step"]
    metrics = {k: v.item() for k, v in task.trainer.callback_metrics.items()}
    long_short = []
    with torch.no_grad():
        images = task(images=batch["image"])
        for granularity in ("long", "short"):
            recalls = _ranked_recalls(images, task(texts=batch[f"caption_{granularity}"]))
            for key, value in recalls.items():
                assert metrics[f"{prefix}_{granularity}_{key}"] == pytest.approx(value), key
            long_short.append(recalls["mR"])
    assert metrics[f"{prefix}_mR"] == pytest.approx(sum(long_short) / 2)


def test_torchgeo_cli_rejects_unknown_key(tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONF / "dgtrs_clip.yaml"), "--model.init_args.learning_rate=1"]
    with pytest.raises(SystemExit):
        main([*args, "--trainer.default_root_dir", str(tmp_path)])


@pytest.mark.parametrize(
    "recipe", sorted((CONF.parents[1] / "trainers").glob("*.yaml")), ids=lambda p: p.name
)
def test_recipes_validate_against_the_cli(recipe: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: dgtrs_geo.trainers.DGTRSCLIPTask" in printed
