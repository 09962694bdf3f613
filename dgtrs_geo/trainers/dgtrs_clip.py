"""DGTRS-CLIP trainer: dual-granularity contrastive fine-tuning with DGCL, as a TorchGeo task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch.utilities.types
import open_clip
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from open_clip import CLIP
from open_clip.transformer import text_global_pool
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from ..curriculum import DGCLSchedule, ScheduleName, dgcl_weights
from ..evaluation.retrieval import retrieval_recalls
from ..losses import DualGranularityLoss
from ..models import build_clip, create_clip, freeze_positional_prefix, load_model, save_checkpoint
from ..tokens import CLIP_CONTEXT_LENGTH, DGTRS_CONTEXT_LENGTH, KPS_KEEP, KPS_RATIO, clip_tokenizer

try:
    from torchgeo.tasks import BaseTask
except ImportError:  # torchgeo < 0.9 keeps its tasks in torchgeo.trainers
    from torchgeo.trainers import BaseTask

__all__ = ["DGTRSCLIPTask", "encode_text_trimmed", "warmup_cosine"]

#: The captions of a batch, in the order the loss and the metrics report them.
GRANULARITIES = ("long", "short")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then per-step cosine decay to 0 (Long-CLIP).

    Args:
        step: optimizer steps done so far.
        warmup_steps: steps of the linear warm-up.
        total_steps: steps of the whole run.

    Returns:
        The factor the base learning rate is multiplied by.

    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))


def encode_text_trimmed(clip: CLIP, tokens: Tensor) -> Tensor:
    """``clip.encode_text(tokens)`` computed only up to the batch's last end-of-text token.

    The text tower is causal and pooled at the end-of-text token (the largest id), so padding
    after the longest caption cannot change any embedding. Short captions use ~15 of 248
    positions: trimming makes their forward and backward an order of magnitude cheaper.
    Models pooled another way fall back to the full forward.

    Args:
        clip: an open_clip ``CLIP``.
        tokens: ``[B, context_length]`` token ids.

    Returns:
        The unnormalised ``[B, D]`` text features.

    """
    if getattr(clip, "text_pool_type", None) != "argmax" or clip.attn_mask is None:
        return clip.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = text_global_pool(clip.ln_final(x), tokens, "argmax")
    if isinstance(clip.text_projection, nn.Linear):
        return clip.text_projection(x)
    return x @ clip.text_projection


def _no_weight_decay(name: str, parameter: Tensor) -> bool:
    """Gains, biases, the class token and the logit scale are not decayed (open_clip's rule)."""
    return parameter.ndim < 2 or "logit_scale" in name


class DGTRSCLIPTask(BaseTask):
    """Fine-tune a CLIP with long and short captions: DGTRS-CLIP's recipe.

    The text positional table is stretched to 248 tokens with Knowledge-Preserved Stretching when
    training starts from a 77-token CLIP, and its first ``kps_keep`` rows stay frozen. Each step
    weighs the image-long and image-short InfoNCE terms by the DGCL schedule (both weights are
    logged). Validation reports long- and short-caption retrieval recalls; ``val_mR`` is the mean
    of the two mR values.

    Batches are dictionaries with ``image`` (normalised ``[B, 3, S, S]``), ``caption_long`` and
    ``caption_short`` (lists of strings); captions are tokenised here at the model's context.
    """

    ignore = ()
    monitor = "val_mR"
    mode = "max"

    model: CLIP

    def __init__(
        self,
        arch: str = "dgtrs-vit-b-16",
        init_checkpoint: str | None = None,
        context_length: int = DGTRS_CONTEXT_LENGTH,
        kps_keep: int = KPS_KEEP,
        kps_ratio: int = KPS_RATIO,
        freeze_kept_positions: bool = True,
        lr: float = 1e-6,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 200,
        dgcl_schedule: ScheduleName = "cosine",
        dgcl_long_start: float = 0.5,
        dgcl_long_end: float = 1.0,
        dgcl_short_start: float = 1.0,
        dgcl_short_end: float = 0.5,
        dgcl_stages: Sequence[Sequence[float]] = (),
        dgcl_allow_zero_short: bool = False,
        logit_scale_init: float | None = math.log(100),
        logit_scale_max: float = math.log(100),
        label_smoothing: float = 0.0,
        pca_short_components: int | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        export_dir: str | None = None,
    ) -> None:
        """Initialize a new DGTRSCLIPTask instance.

        Args:
            arch: architecture of a randomly initialised model (``dgtrs-vit-b-16``,
                ``dgtrs-vit-l-14``, ``dgtrs-tiny`` or any open_clip name); an
                ``init_checkpoint`` brings its own architecture.
            init_checkpoint: initial weights: a registry name (``openai-vit-b-16``,
                ``longclip-b``, ``dgtrs-clip-vit-b-16``, ...) or a checkpoint path in any format
                ``dgtrs_geo.load_model`` reads. None starts from random weights.
            context_length: text tokens the trained model reads. A 77-token start is stretched
                to it with KPS; a longer start is cut to it (e.g. 77 for a baseline).
            kps_keep: leading positional rows KPS copies unchanged (and that stay frozen).
            kps_ratio: KPS stretch factor of the other rows.
            freeze_kept_positions: keep rows ``< kps_keep`` of the positional table frozen.
            lr: peak learning rate of AdamW (Long-CLIP: 1e-6).
            weight_decay: AdamW weight decay of matrices (Long-CLIP: 1e-2).
            betas: AdamW betas.
            warmup_steps: optimizer steps of linear warm-up before the per-step cosine decay.
            dgcl_schedule: DGCL schedule kind: constant, linear, cosine or staged.
            dgcl_long_start: long-caption weight at the start.
            dgcl_long_end: long-caption weight at the end (linear, cosine).
            dgcl_short_start: short-caption weight at the start.
            dgcl_short_end: short-caption weight at the end (linear, cosine).
            dgcl_stages: ``[[t_begin, w_long, w_short], ...]`` of the staged schedule.
            dgcl_allow_zero_short: permit a zero short weight (ablations only).
            logit_scale_init: reset the logit scale to this value (log of the inverse
                temperature; Long-CLIP: ln 100); None keeps the initial checkpoint's.
            logit_scale_max: clamp of the logit scale after every optimizer step.
            label_smoothing: label smoothing of the contrastive losses (Long-CLIP: 0.1).
            pca_short_components: Long-CLIP's PCA short branch: image components kept, or None.
            local_loss: compute local rows against gathered columns only (saves memory).
            gather_with_grad: gather other devices' features with gradients (correct); False
                reproduces the authors' released code.
            export_dir: when set, write DGTRS-format and open_clip-format checkpoints there at
                the end of ``fit``.

        """
        super().__init__()

    def configure_models(self) -> None:
        """Build the CLIP through the model layer, apply KPS and freeze the kept rows."""
        hparams = self.hparams
        context = hparams["context_length"]
        source = hparams["init_checkpoint"]
        if source is None:
            clip = create_clip(hparams["arch"], context_length=context)
        else:
            loaded = load_model(source).clip
            if loaded.context_length == CLIP_CONTEXT_LENGTH and context > CLIP_CONTEXT_LENGTH:
                # Only a 77-token start is stretched, and the file tells its length once read.
                loaded = load_model(source, kps=(hparams["kps_keep"], hparams["kps_ratio"])).clip
            clip = self._fit_context(loaded, context)
        if hparams["logit_scale_init"] is not None:
            with torch.no_grad():
                clip.logit_scale.fill_(hparams["logit_scale_init"])
        if hparams["freeze_kept_positions"]:
            freeze_positional_prefix(clip, keep=hparams["kps_keep"])
        self.model = clip.train()
        self.tokenizer = clip_tokenizer(context)
        self.schedule = DGCLSchedule(
            name=hparams["dgcl_schedule"],
            long_start=hparams["dgcl_long_start"],
            long_end=hparams["dgcl_long_end"],
            short_start=hparams["dgcl_short_start"],
            short_end=hparams["dgcl_short_end"],
            stages=tuple(tuple(stage) for stage in hparams["dgcl_stages"]),
            allow_zero_short=hparams["dgcl_allow_zero_short"],
        )

    @staticmethod
    def _fit_context(clip: CLIP, context: int) -> CLIP:
        """Return ``clip`` with ``context`` text positions, cutting a longer table if needed."""
        if clip.context_length == context:
            return clip
        if clip.context_length < context:
            raise ValueError(
                f"the initial checkpoint has {clip.context_length} text positions and cannot reach "
                f"context_length={context}: KPS stretches {CLIP_CONTEXT_LENGTH}-token models only; "
                f"set context_length={clip.context_length} or start from a "
                f"{CLIP_CONTEXT_LENGTH}-token CLIP"
            )
        state = dict(clip.state_dict())
        state["positional_embedding"] = state["positional_embedding"][:context]
        quick_gelu = isinstance(
            clip.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
        )
        return build_clip(state, quick_gelu=quick_gelu, source="initial checkpoint cut")

    def configure_losses(self) -> None:
        """Initialize the dual-granularity loss for this process's place in the world."""
        trainer = self._trainer
        self.criterion = DualGranularityLoss(
            label_smoothing=self.hparams["label_smoothing"],
            pca_short_components=self.hparams["pca_short_components"],
            local_loss=self.hparams["local_loss"],
            gather_with_grad=self.hparams["gather_with_grad"],
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )

    def configure_metrics(self) -> None:
        """Prepare the per-epoch feature store of the retrieval metrics."""
        self._features: dict[str, list[Tensor]] = {}

    def setup(self, stage: str) -> None:
        """Rebuild the loss once the trainer knows the rank and the world size."""
        self.configure_losses()

    def configure_optimizers(self) -> lightning.pytorch.utilities.types.OptimizerLRScheduler:
        """AdamW (no decay on gains, biases and the logit scale), warm-up then cosine per step.

        Returns:
            Optimizer and per-step learning rate scheduler.

        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                (no_decay if _no_weight_decay(name, parameter) else decay).append(parameter)
        optimizer = AdamW(
            [
                {"params": decay, "weight_decay": self.hparams["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams["lr"],
            betas=tuple(self.hparams["betas"]),
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError(
                "DGTRSCLIPTask schedules the learning rate and DGCL over the whole run: set "
                "trainer.max_steps or trainer.max_epochs"
            )
        self._total_steps = int(total_steps)
        warmup = self.hparams["warmup_steps"]
        scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, self._total_steps))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def forward(self, images: Tensor | None = None, texts: Sequence[str] | None = None) -> Tensor:
        """Embed images or texts (L2-normalised, float32).

        Args:
            images: normalised images ``[B, 3, S, S]``.
            texts: captions, tokenised here at the model's context length.

        Returns:
            ``[B, D]`` unit embeddings of whichever input was given.

        """
        if images is not None:
            features = self.model.encode_image(images)
        elif texts is not None:
            tokens = self.tokenizer(list(texts)).to(self.device)
            features = encode_text_trimmed(self.model, tokens)
        else:
            raise ValueError("pass images or texts")
        return F.normalize(features.float(), dim=-1)

    def _dgcl_weights(self) -> tuple[float, float]:
        """DGCL weights of the current optimizer step; the final weights outside ``fit``."""
        if self.trainer.state.fn != TrainerFn.FITTING:
            return self.schedule(1.0)
        return dgcl_weights(self.global_step, self._total_steps, self.schedule)

    def _step_loss(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Embed one batch, compute the DGCL-weighted loss and log it; the shared step body."""
        features = {"image": self(images=batch["image"])}
        for granularity in GRANULARITIES:
            features[granularity] = self(texts=batch[f"caption_{granularity}"])
        w_long, w_short = self._dgcl_weights()
        output = self.criterion(
            features["image"],
            features["long"],
            features["short"],
            self.model.logit_scale.exp(),
            w_long,
            w_short,
        )
        batch_size = batch["image"].shape[0]
        on_step = stage == "train"
        values = {
            f"{stage}_loss": output.loss,
            f"{stage}_loss_long": output.loss_long,
            f"{stage}_loss_short": output.loss_short,
        }
        if on_step:
            values |= {
                "dgcl_w_long": w_long,
                "dgcl_w_short": w_short,
                "logit_scale": self.model.logit_scale.detach().exp(),
            }
        self.log_dict(
            values,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=batch_size,
            sync_dist=not on_step,
        )
        return output.loss, features

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Compute the training loss.

        Args:
            batch: The output of your DataLoader.
            batch_idx: Integer displaying index of this batch.
            dataloader_idx: Index of the current dataloader.

        Returns:
            The loss tensor.

        """
        loss, _ = self._step_loss(batch, "train")
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Clamp the logit scale after the optimizer step, as open_clip and Long-CLIP do."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self.hparams["logit_scale_max"])

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        _, features = self._step_loss(batch, stage)
        for key, value in features.items():
            self._features.setdefault(key, []).append(value.detach())

    def _eval_epoch_end(self, stage: str) -> None:
        """Log retrieval recalls of the whole epoch, features gathered from every device."""
        if not self._features:
            return
        gathered = {}
        for key, chunks in self._features.items():
            local = torch.cat(chunks)
            gathered[key] = self.all_gather(local).reshape(-1, local.shape[-1]).float()
        self._features = {}
        images = gathered["image"]
        pairs = torch.arange(images.shape[0], device=images.device)
        metrics: dict[str, float] = {}
        for granularity in GRANULARITIES:
            recalls = retrieval_recalls(images, gathered[granularity], pairs)
            metrics |= {f"{stage}_{granularity}_{name}": value for name, value in recalls.items()}
        metrics[f"{stage}_mR"] = sum(metrics[f"{stage}_{g}_mR"] for g in GRANULARITIES) / 2
        # Every rank computed the same numbers from the same gathered features.
        self.log_dict(metrics, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Compute the validation loss and keep the embeddings for retrieval.

        Args:
            batch: The output of your DataLoader.
            batch_idx: Integer displaying index of this batch.
            dataloader_idx: Index of the current dataloader.

        """
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Log long and short retrieval R@1/5/10, mR, and their mean ``val_mR``."""
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Compute the test loss and keep the embeddings for retrieval.

        Args:
            batch: The output of your DataLoader.
            batch_idx: Integer displaying index of this batch.
            dataloader_idx: Index of the current dataloader.

        """
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Log long and short retrieval R@1/5/10, mR, and their mean ``test_mR``."""
        self._eval_epoch_end("test")

    def predict_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Embed a batch.

        Args:
            batch: The output of your DataLoader.
            batch_idx: Integer displaying index of this batch.
            dataloader_idx: Index of the current dataloader.

        Returns:
            ``{"image": [B, D]}`` plus ``caption_long`` / ``caption_short`` embeddings for the
            captions the batch carries, all L2-normalised float32.

        """
        embeddings = {"image": self(images=batch["image"])}
        for granularity in GRANULARITIES:
            if (captions := batch.get(f"caption_{granularity}")) is not None:
                embeddings[f"caption_{granularity}"] = self(texts=captions)
        return embeddings

    def export(self, path: str | Path, format: Literal["dgtrs", "open_clip"] = "dgtrs") -> Path:
        """Write the trained CLIP for other code (the authors' loader, open_clip, ``load_model``).

        Args:
            path: destination ``.pt`` file, written atomically.
            format: ``"dgtrs"`` (two positional tables, OpenAI key names) or ``"open_clip"``.

        Returns:
            The written path.

        """
        return save_checkpoint(self.model, path, format=format)

    @rank_zero_only
    def on_fit_end(self) -> None:
        """Export both checkpoint formats when ``export_dir`` is set."""
        if (directory := self.hparams["export_dir"]) is not None:
            for format in ("dgtrs", "open_clip"):
                self.export(Path(directory) / f"{format}.pt", format=format)
