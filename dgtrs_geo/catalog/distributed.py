"""Indexing on many GPUs and machines: Lightning ``Trainer.predict`` over scenes, and array shards.

One scene is one prediction: ``predict_step`` embeds a scene (see ``indexing.py``) and a
:class:`PartWriter` (a ``BasePredictionWriter``) writes its part atomically as soon as the step
ends, so ``--devices N --num-nodes M --strategy ddp`` spreads scenes over GPUs and nodes the way
Lightning spreads training batches, and a killed run keeps every part it finished.

Known pitfalls of prediction writers under DDP, and how they are kept out:

- Batch indices: ``write_on_batch_end`` receives ``batch_indices`` that are empty or relative to
  the rank's own sampler. Nothing here uses them: each prediction carries its scene.
- Every rank writes only its own scenes: scenes are assigned to ``(shard, rank)`` by a hash of
  their id (:func:`owner`), the same on every rank whatever order or moment it resolved its
  sources in, and each rank's data loader holds only its own scenes (Lightning's distributed
  sampler is turned off).
- Padding duplicates: ``DistributedSampler`` pads ranks to equal length by repeating samples;
  with no such sampler there is no padding, and the writer still writes a scene at most once.
- Predictions held in memory: ``return_predictions=False``, so a million scenes do not pile up.

Array jobs without a shared launcher (SLURM ``--array``, Kubernetes Indexed Jobs, AWS Batch array
jobs) each take a disjoint share with ``--shard I/N`` or from their index variables
(:func:`resolve_shard`); ``dgtrs-geo catalog finalize`` then consolidates every part once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence

import torch.distributed as dist
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..localization.options import LocalizationOptions
from .indexing import SceneOutcome, SceneResult, embed_scene, write_result
from .sources import Scene
from .store import CatalogStore

__all__ = ["PartWriter", "owner", "parse_shard", "resolve_shard", "run_index"]

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]


def _share(index: int, count: int, source: str) -> tuple[int, int]:
    if not 0 <= index < count:
        raise InputError(f"{source} gives shard {index} of {count}: need 0 <= I < N")
    return index, count


def parse_shard(text: str) -> tuple[int | None, int]:
    """Parse ``I/N`` (shard I of N, from 0) or ``N`` (the index comes from the environment)."""
    index, _, count = text.rpartition("/")
    try:
        parsed = (int(index) if index else None, int(count))
    except ValueError:
        raise InputError(f"--shard {text!r} must be I/N (e.g. 0/8) or a count N") from None
    if parsed[1] < 1 or (parsed[0] is not None and not 0 <= parsed[0] < parsed[1]):
        raise InputError(f"--shard {text!r}: need 0 <= I < N and N >= 1")
    return parsed


def _slurm(environ: Mapping[str, str]) -> tuple[int, int]:
    task = int(environ["SLURM_ARRAY_TASK_ID"])
    first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
    step = int(environ.get("SLURM_ARRAY_TASK_STEP", 1))
    count = int(environ["SLURM_ARRAY_TASK_COUNT"])
    index = (task - first) // step
    if not 0 <= index < count:
        raise InputError(
            f"SLURM array task {task} is not one of {count} evenly spaced tasks from {first}: "
            "give --shard I/N"
        )
    return index, count


def resolve_shard(
    shard: str | tuple[int, int] | None, environ: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """Return this job's share ``(index, count)`` of the scenes.

    Args:
        shard: ``(I, N)``, ``"I/N"``, ``"N"`` (a count; the index from the environment) or
            ``None`` (both from the environment when an array job sets them, else ``(0, 1)``).
        environ: the environment (default ``os.environ``). Read: ``SLURM_ARRAY_TASK_ID`` with
            ``SLURM_ARRAY_TASK_COUNT`` (and ``_MIN``, ``_STEP``); ``JOB_COMPLETION_INDEX``
            (Kubernetes Indexed Job) or ``AWS_BATCH_JOB_ARRAY_INDEX``, whose count must be given.

    Raises:
        InputError: if the share is malformed, or an array index is set without a count.

    """
    environ = os.environ if environ is None else environ
    if isinstance(shard, tuple):
        shard = f"{shard[0]}/{shard[1]}"
    index, count = parse_shard(shard) if shard else (None, None)
    if index is not None and count is not None:
        return index, count
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        found, total = _slurm(environ)
        if count is not None and count != total:
            raise InputError(f"--shard {count} differs from the SLURM array's {total} tasks")
        return found, total
    for variable in ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"):
        if variable in environ:
            if count is None:
                raise InputError(
                    f"{variable} is set, so this is one job of an array, but the number of jobs "
                    "is unknown: pass --shard N (the array's size)"
                )
            return _share(int(environ[variable]), count, variable)
    if count is not None and count != 1:
        raise InputError(
            f"--shard {count} gives a count but no array-job index variable is set "
            "(SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX): give --shard I/N"
        )
    return 0, 1


def owner(scene_id: str, shards: int, world: int) -> tuple[int, int]:
    """Return the ``(shard, rank)`` that indexes ``scene_id``: a hash, so the same everywhere."""
    key = int(hashlib.sha256(scene_id.encode()).hexdigest()[:16], 16)
    return key % shards, (key // shards) % world


class _Positions(Dataset[int]):
    """The positions ``0 .. n-1``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _SceneData(LightningDataModule):
    """This rank's scenes of this shard, one per batch."""

    def __init__(self, scenes: Sequence[Scene], shard: tuple[int, int]) -> None:
        super().__init__()
        self.scenes = list(scenes)
        self.shard = shard
        self.assigned: list[Scene] = []

    def setup(self, stage: str) -> None:
        """Keep the scenes that ``(shard, global rank)`` owns (:func:`owner`)."""
        assert self.trainer is not None  # Lightning sets it before calling setup
        rank, world = self.trainer.global_rank, self.trainer.world_size
        index, count = self.shard
        self.assigned = [s for s in self.scenes if owner(s.scene_id, count, world) == (index, rank)]

    def predict_dataloader(self) -> DataLoader:
        # Positions, not scenes: Lightning moves batches to the device and cannot copy frozen
        # dataclasses; the module looks the scene up.
        return DataLoader(_Positions(len(self.assigned)), batch_size=1, collate_fn=list)


class _SceneEncoder(LightningModule):
    """Holds the model and embeds one scene a step."""

    def __init__(
        self,
        model,
        store: CatalogStore,
        options: LocalizationOptions,
        progress: ProgressFn | None,
    ) -> None:
        super().__init__()
        self.embedding_model = model
        if isinstance(getattr(model, "clip", None), nn.Module):
            # A submodule, so Lightning puts the weights on this rank's device.
            self.clip = model.clip
        self.store = store
        self.options = options
        self.progress = progress

    def on_predict_start(self) -> None:
        """Point the model (and the device its inputs go to) at this rank's device."""
        if hasattr(self.embedding_model, "to"):
            self.embedding_model.to(self.device)

    def _scene_progress(self, position: int, total: int) -> ProgressFn | None:
        if self.progress is None or not self.trainer.is_global_zero:
            return None
        report = self.progress
        return lambda fraction, message: report(
            (position + fraction) / total, f"scene {position + 1}/{total}: {message}"
        )

    def predict_step(self, batch: list[int], batch_idx: int) -> list[SceneResult]:
        data: _SceneData = self.trainer.datamodule  # type: ignore[attr-defined]
        results = []
        for position in batch:
            scene = data.assigned[position]
            results.append(
                embed_scene(
                    self.store,
                    scene,
                    self.embedding_model,
                    self.options,
                    progress=self._scene_progress(position, len(data.assigned)),
                )
            )
        return results


class PartWriter(BasePredictionWriter):
    """Writes each scene's part (or failure) when its step ends, once per scene.

    Args:
        store: the catalog.

    """

    def __init__(self, store: CatalogStore) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.outcomes: dict[str, SceneOutcome] = {}

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: list[SceneResult],
        batch_indices: Sequence[int] | None,
        batch: list[int],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write the scenes of this step's prediction that this writer has not written yet."""
        for result in prediction:
            if result.scene.scene_id not in self.outcomes:
                self.outcomes[result.scene.scene_id] = write_result(self.store, result)


def _accelerator(device: str) -> tuple[str, int | list[int] | str]:
    match device.split(":"):
        case ["cpu"]:
            return "cpu", "auto"
        case ["cuda"]:
            return "gpu", "auto"
        case ["cuda", index]:
            return "gpu", [int(index)]
        case _:
            return "auto", "auto"


def run_index(
    store: CatalogStore,
    scenes: Sequence[Scene],
    model,
    options: LocalizationOptions,
    *,
    shard: tuple[int, int] = (0, 1),
    devices: int | None = None,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: ProgressFn | None = None,
) -> list[SceneOutcome] | None:
    """Index this job's share of ``scenes`` with ``Trainer.predict``; parts are written as they end.

    Args:
        store: the catalog.
        scenes: every scene of the run, in the same order on every rank.
        model: a loaded model.
        options: the catalog's options with this run's ``device`` (``auto``, ``cpu``, ``cuda``,
            ``cuda:N``), ``batch_size`` and ``num_workers``.
        shard: this job's ``(index, count)``.
        devices: processes per node (GPUs); ``None``: one.
        num_nodes: machines.
        strategy: Lightning strategy (``"ddp"`` across devices and nodes).
        progress: called on global rank 0 with ``(fraction, message)``.

    Returns:
        Every rank's scene outcomes on global rank 0, sorted by scene id; ``None`` on the others.

    """
    if "spawn" in strategy or "fork" in strategy:
        # Their ranks run in child processes, whose outcomes this process never sees.
        raise InputError(f"strategy {strategy!r} is not supported for indexing: use ddp")
    accelerator, chosen = _accelerator(options.device)
    trainer = Trainer(
        accelerator=accelerator,
        devices=devices if devices is not None else (chosen if chosen != "auto" else 1),
        num_nodes=num_nodes,
        strategy=strategy,
        callbacks=[writer := PartWriter(store)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    module = _SceneEncoder(model, store, options, progress)
    trainer.predict(module, datamodule=_SceneData(scenes, shard), return_predictions=False)
    outcomes = list(writer.outcomes.values())
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[list[SceneOutcome] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, outcomes)
        outcomes = [o for rank in gathered for o in rank or []]
    if not trainer.is_global_zero:
        return None
    return sorted(outcomes, key=lambda o: o.scene_id)
