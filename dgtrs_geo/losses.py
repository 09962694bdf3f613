"""Dual-granularity contrastive loss: image-long and image-short InfoNCE with one logit scale.

Each term is open_clip's symmetric CLIP loss. Across devices the features are gathered **with
gradients** (``torch.distributed.nn.all_gather``): every rank's features then receive the gradient
of every rank's logits, which is the gradient of one big batch. The authors' released code gathers
without gradients and so drops the negatives' share of the gradient on every other rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor, nn

__all__ = ["DualGranularityLoss", "DualLossOutput", "SymmetricInfoNCE", "pca_reconstruct"]


class SymmetricInfoNCE(ClipLoss):
    """open_clip's ``ClipLoss`` with optional label smoothing.

    ``(CE(s * I @ T^T, y) + CE(s * T @ I^T, y)) / 2`` where ``s`` is the (already exponentiated)
    logit scale and ``y`` the diagonal, negatives gathered from all ranks when ``world_size > 1``.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Initialize a new SymmetricInfoNCE instance.

        Args:
            label_smoothing: label smoothing of both cross-entropies (Long-CLIP used 0.1).
            local_loss: compute logits of local rows against all gathered columns only
                (memory ``O(B * W * B)`` instead of ``O((W * B)^2)``); the gradient is the same.
            gather_with_grad: gather other ranks' features with gradients (the correct
                contrastive gradient); ``False`` reproduces the authors' released behaviour.
            rank: this process's rank.
            world_size: number of processes sharing the global batch.

        """
        super().__init__(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            rank=rank,
            world_size=world_size,
        )
        self.label_smoothing = label_smoothing

    def forward(  # type: ignore[override]
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor
    ) -> Tensor:
        """Compute the symmetric InfoNCE loss.

        Args:
            image_features: L2-normalised image embeddings ``[B, D]`` of this rank.
            text_features: L2-normalised text embeddings ``[B, D]`` paired row by row.
            logit_scale: exponentiated logit scale (a scalar tensor).

        Returns:
            The scalar loss.

        """
        logits_per_image, logits_per_text = self.get_logits(
            image_features, text_features, logit_scale
        )
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        smoothing = self.label_smoothing
        return (
            F.cross_entropy(logits_per_image, labels, label_smoothing=smoothing)
            + F.cross_entropy(logits_per_text, labels, label_smoothing=smoothing)
        ) / 2


def pca_reconstruct(features: Tensor, components: int = 32) -> Tensor:
    """Project features onto the batch's top principal components and back (Long-CLIP).

    Long-CLIP matched short captions to this coarse version of the image features ("primary
    component matching"). The basis is computed without gradient: with fewer samples than
    dimensions most eigenvalues are equal (zero), and the eigenvector backward divides by their
    differences. Gradients still flow through the projection of the features themselves.

    Args:
        features: ``[B, D]`` features.
        components: number of principal components kept (clamped to ``D``).

    Returns:
        ``[B, D]`` reconstruction from the top components, same dtype as ``features``.

    """
    x = features.float()
    mean = x.mean(dim=0, keepdim=True)
    centered = x - mean
    with torch.no_grad():
        _, eigenvectors = torch.linalg.eigh(centered.T @ centered)
        # eigh sorts eigenvalues ascending: the last columns are the principal directions
        basis = eigenvectors[:, -min(components, x.shape[1]) :]
    return (centered @ basis @ basis.T + mean).to(features.dtype)


@dataclass
class DualLossOutput:
    """The weighted total and both terms of a dual-granularity loss."""

    loss: Tensor
    loss_long: Tensor
    loss_short: Tensor


class DualGranularityLoss(nn.Module):
    """``w_long * L(I, T_long) + w_short * L(I, T_short)`` with one shared logit scale.

    The weights come from the DGCL schedule each step (:mod:`dgtrs_geo.curriculum`).
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        pca_short_components: int | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Initialize a new DualGranularityLoss instance.

        Args:
            label_smoothing: label smoothing of every cross-entropy (Long-CLIP: 0.1, DGTRS: 0).
            pca_short_components: when set, the short branch compares short captions with
                :func:`pca_reconstruct` of the image features (Long-CLIP used 32; DGTRS removed
                it). PCA runs over this rank's batch, so with several ranks this option is not
                equivalent to one big batch.
            local_loss: see :class:`SymmetricInfoNCE`.
            gather_with_grad: see :class:`SymmetricInfoNCE`.
            rank: this process's rank.
            world_size: number of processes sharing the global batch.

        """
        super().__init__()
        self.pca_short_components = pca_short_components
        self.contrastive = SymmetricInfoNCE(
            label_smoothing=label_smoothing,
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            rank=rank,
            world_size=world_size,
        )

    def forward(
        self,
        image_features: Tensor,
        long_features: Tensor,
        short_features: Tensor,
        logit_scale: Tensor,
        w_long: float = 1.0,
        w_short: float = 1.0,
    ) -> DualLossOutput:
        """Compute both contrastive terms and their weighted sum.

        Args:
            image_features: L2-normalised image embeddings ``[B, D]``.
            long_features: L2-normalised long-caption embeddings ``[B, D]``.
            short_features: L2-normalised short-caption embeddings ``[B, D]``.
            logit_scale: exponentiated logit scale shared by both terms.
            w_long: weight of the long term.
            w_short: weight of the short term.

        Returns:
            The weighted loss and both unweighted terms.

        """
        loss_long = self.contrastive(image_features, long_features, logit_scale)
        short_images = image_features
        if self.pca_short_components:
            short_images = F.normalize(
                pca_reconstruct(image_features, self.pca_short_components), dim=-1
            )
        loss_short = self.contrastive(short_images, short_features, logit_scale)
        return DualLossOutput(w_long * loss_long + w_short * loss_short, loss_long, loss_short)
