"""The contrastive loss across 2 gloo processes equals one process on the whole batch."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dgtrs_geo.losses import DualGranularityLoss
from dgtrs_geo.models import create_clip

BATCH = 8
#: (local_loss, gather_with_grad) per run; the last is the authors' released behaviour.
CONFIGS = ((False, True), (True, True), (False, False))


class DualEncoder(nn.Module):
    """One forward for the image and both captions, as the task's step is one DDP forward."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images: Tensor, long: Tensor, short: Tensor) -> tuple[Tensor, ...]:
        return (
            F.normalize(self.clip.encode_image(images), dim=-1),
            F.normalize(self.clip.encode_text(long), dim=-1),
            F.normalize(self.clip.encode_text(short), dim=-1),
            self.clip.logit_scale.exp(),
        )


def make_inputs() -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    import open_clip

    torch.manual_seed(0)
    clip = create_clip("dgtrs-tiny")
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=248)
    colours = ["red", "blue", "green", "white", "black", "grey", "yellow", "purple"]
    batch = {
        "images": torch.randn(BATCH, 3, 32, 32),
        "long": tokenizer([f"a long text about a {c} roof near a {c} car park" for c in colours]),
        "short": tokenizer([f"a {c} roof" for c in colours]),
    }
    return clip.state_dict(), batch


def run_step(model: nn.Module, batch: dict[str, Tensor], loss_fn: DualGranularityLoss):
    model.zero_grad()
    image, long, short, scale = model(batch["images"], batch["long"], batch["short"])
    out = loss_fn(image, long, short, scale, w_long=0.7, w_short=1.3)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return out.loss.detach(), grads


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        state, batch = make_inputs()
        shard = {key: value.chunk(world_size)[rank] for key, value in batch.items()}
        results = []
        for local_loss, gather_with_grad in CONFIGS:
            clip = create_clip("dgtrs-tiny")
            clip.load_state_dict(state)
            model = DistributedDataParallel(DualEncoder(clip))
            loss_fn = DualGranularityLoss(
                local_loss=local_loss,
                gather_with_grad=gather_with_grad,
                rank=rank,
                world_size=world_size,
            )
            loss, grads = run_step(model, shard, loss_fn)
            grads = {name.removeprefix("module."): g for name, g in grads.items()}
            results.append((loss, grads))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def single_process() -> tuple[Tensor, dict[str, Tensor]]:
    state, batch = make_inputs()
    clip = create_clip("dgtrs-tiny")
    clip.load_state_dict(state)
    return run_step(DualEncoder(clip), batch, DualGranularityLoss())


def assert_grads_close(grads: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-5)


def test_global_loss_and_gradients_on_every_rank(ddp_results: list, single_process) -> None:
    loss, grads = single_process
    for rank_results in ddp_results:
        rank_loss, rank_grads = rank_results[0]
        torch.testing.assert_close(rank_loss, loss, rtol=1e-5, atol=1e-6)
        assert_grads_close(rank_grads, grads)


def test_local_loss_gives_the_same_gradients(ddp_results: list, single_process) -> None:
    loss, grads = single_process
    local_losses = torch.stack([rank_results[1][0] for rank_results in ddp_results])
    # each rank scores its own rows against all columns: their mean is the global loss
    torch.testing.assert_close(local_losses.mean(), loss, rtol=1e-5, atol=1e-6)
    for rank_results in ddp_results:
        assert_grads_close(rank_results[1][1], grads)


def test_gather_without_gradients_loses_gradient(ddp_results: list, single_process) -> None:
    loss, grads = single_process
    rank_loss, rank_grads = ddp_results[0][2]
    torch.testing.assert_close(rank_loss, loss, rtol=1e-5, atol=1e-6)  # same value...
    # ...but the negatives' gradient on the other rank is dropped, halving the contrastive part
    diff = max((rank_grads[n] - grads[n]).abs().max().item() for n in grads)
    assert diff > 1e-4
