"""Fitting a LightningModule as a resumable pipeline stage.

Checkpoints go to the stage's work dir in the artifact store (not Hydra's per-run dir),
so the same command after a kill finds `last.ckpt` and resumes from it.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class EpochSeed(Callback):
    """Reseed torch/numpy/random from (seed, epoch) at each epoch start, so resumed epochs replay exactly."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        s = self.seed * 100_003 + trainer.current_epoch + 1000 * trainer.global_rank
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)


SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, warmup_steps: int, total_steps: int):
    """The learning-rate factor of optimiser step s (for `LambdaLR`): linear warm-up over `warmup_steps`, then
    constant, or a cosine decay to zero at `total_steps` (CLIP, Radford et al. 2021, Sec. 2.5)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule} is not one of {', '.join(SCHEDULES)}")
    warm = max(1, int(warmup_steps))
    decay = max(1, int(total_steps) - warm)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / decay)))

    return factor


class SimulatedKill(RuntimeError):
    pass


class StopAfterEpochs(Callback):
    """Die at the start of the epoch after `n` finished ones (the resume test's stand-in for a kill)."""

    def __init__(self, n: int):
        self.n, self.started = n, 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.started += 1
        if self.started > self.n:
            raise SimulatedKill(f"simulated kill after {self.n} epochs")


def small_fit_trainer(max_epochs: int, progress: bool = False, device="cpu") -> L.Trainer:
    """A one-process Trainer on `device` (the run's, `genretr.hardware.run_device`) without logger or checkpoints,
    for the small fits inside a stage (quantizers, captioner)."""
    device = torch.device(device)
    accelerator = {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")
    callbacks = []
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    return L.Trainer(max_epochs=max_epochs, accelerator=accelerator,
                     devices=[device.index or 0] if accelerator == "gpu" else 1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                     num_sanity_val_steps=0, callbacks=callbacks)


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, cfg, workdir: Path, max_epochs: int,
        logger=None, extra_callbacks=(), **trainer_kwargs) -> L.LightningModule:
    """Train `module` for `max_epochs`, resuming from `workdir/last.ckpt` when present."""
    workdir = Path(workdir)
    # The newest epoch is written whole, then `last.ckpt` is re-pointed at it: a kill never leaves it torn.
    ckpt = ModelCheckpoint(dirpath=workdir, filename="epoch{epoch}", save_last="link", save_top_k=1, monitor=None,
                           every_n_epochs=1, auto_insert_metric_name=False)
    callbacks = [ckpt, EpochSeed(int(cfg.seed)), *extra_callbacks]
    if cfg.get("progress", True):
        from lightning.pytorch.callbacks import RichProgressBar
        callbacks.append(RichProgressBar(leave=False))
    trainer: L.Trainer = instantiate(cfg.trainer, max_epochs=max_epochs, logger=logger if logger else False,
                                     callbacks=callbacks, default_root_dir=str(workdir),
                                     enable_progress_bar=bool(cfg.get("progress", True)), **trainer_kwargs)
    last = workdir / "last.ckpt"
    if last.exists():
        log.info("resuming from %s", last)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    return module
