"""Training throughput: DGTRSCLIPTask under Lightning vs a bare PyTorch loop on the same batch.

Both run the same model, the same trimmed text forward, the same dual-granularity loss and AdamW
on one fixed batch; the ratio is the task's overhead (Lightning, logging, DGCL, scheduler). A third
number runs open_clip's own full-context ``encode_text`` to show what trimming padding saves.

    python benchmarks/train_step.py --arch dgtrs-tiny --image-size 32 --batch-size 16 --steps 8
    python benchmarks/train_step.py --arch dgtrs-vit-b-16 --batch-size 128 --device cuda
"""

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from dgtrs_geo.datasets.synthetic import SyntheticScenes
from dgtrs_geo.trainers import DGTRSCLIPTask, encode_text_trimmed


def make_batch(batch_size: int, image_size: int) -> dict:
    scenes = SyntheticScenes(length=batch_size, scene_size=max(image_size, 8))
    samples = [scenes[i] for i in range(batch_size)]
    images = torch.stack([s["image"] for s in samples]) / 255
    images = F.interpolate(images, size=image_size, mode="bicubic", align_corners=False)
    return {
        "image": (images - 0.45) / 0.27,
        "caption_long": [s["caption_long"] for s in samples],
        "caption_short": [s["caption_short"] for s in samples],
    }


class StepTimer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module.device)
        self.end = time.perf_counter()

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()


def task_throughput(args, batch: dict) -> float:
    task = DGTRSCLIPTask(arch=args.arch, lr=1e-5, warmup_steps=1)
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=args.warmup + args.steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader([batch] * (args.warmup + args.steps), batch_size=None)
    trainer.fit(task, train_dataloaders=loader)
    return args.steps * args.batch_size / (timer.end - timer.start)


def bare_throughput(args, batch: dict, encode_text: Callable) -> float:
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    task = DGTRSCLIPTask(arch=args.arch, lr=1e-5, warmup_steps=1).to(device)
    clip, loss_fn, tokenizer = task.model, task.criterion, task.tokenizer
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-5, weight_decay=0.01)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in args.precision)
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            StepTimer._sync(device)
            start = time.perf_counter()
        images = batch["image"].to(device)
        long = tokenizer(batch["caption_long"]).to(device)
        short = tokenizer(batch["caption_short"]).to(device)
        with autocast:
            image_features = F.normalize(clip.encode_image(images).float(), dim=-1)
            long_features = F.normalize(encode_text(clip, long).float(), dim=-1)
            short_features = F.normalize(encode_text(clip, short).float(), dim=-1)
            loss = loss_fn(
                image_features, long_features, short_features, clip.logit_scale.exp(), 1.0, 1.0
            ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    StepTimer._sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="dgtrs-tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on a GPU")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = make_batch(args.batch_size, args.image_size)
    bare = bare_throughput(args, batch, encode_text_trimmed)
    full = bare_throughput(args, batch, lambda clip, tokens: clip.encode_text(tokens))
    task = task_throughput(args, batch)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "precision": args.precision,
        "task_samples_per_s": round(task, 2),
        "bare_samples_per_s": round(bare, 2),
        "bare_full_context_samples_per_s": round(full, 2),
        "task_over_bare": round(task / bare, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
