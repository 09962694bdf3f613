"""``torchgeo fit`` killed mid-epoch resumes from its last checkpoint with ``--ckpt_path``."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

CONF = Path(__file__).parent / "conf" / "dgtrs_clip_resume.yaml"


class KillAtStep(Callback):
    """SIGKILL the training process after a given optimizer step: no clean shutdown at all."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def torchgeo(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.getcwd()])}
    command = [sys.executable, "-m", "torchgeo", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_resume_after_kill_mid_epoch(tmp_path: Path) -> None:
    common = ["--config", str(CONF), "--trainer.default_root_dir", str(tmp_path)]
    killer = '[{"class_path": "test_trainer_resume.KillAtStep", "init_args": {"step": 3}}]'
    killed = torchgeo("fit", *common, f"--trainer.callbacks+={killer}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = next(tmp_path.rglob("last.ckpt"))
    saved = torch.load(last, weights_only=False, map_location="cpu")
    assert saved["global_step"] == 2  # 6 steps per epoch, checkpoints every 2, killed after 3

    resumed = torchgeo("fit", *common, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False, map_location="cpu")
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    assert final["global_step"] == 6  # the 4 remaining steps, not 6 new ones
