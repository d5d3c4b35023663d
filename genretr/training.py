"""Fitting a LightningModule as a resumable pipeline stage.

Checkpoints go to the stage's work dir in the artifact store (not Hydra's per-run dir),
so the same command after a kill finds `last.ckpt` and resumes from it.

The trainable-state contract.  A module may define ``trainable_state_dict()``: the entries of its
``state_dict()`` that training changes (an MLLM under LoRA: the adapters and the identifier-token rows);
every other entry is frozen and comes back identical when the module is built again (from its pretrained
checkpoint, or a random init under the same seed).  Such a module is saved as that state alone
(`trained_state`, the train stage's ``model.pt``) and loaded over a fresh build (`load_trained_state`: every
saved key must be the module's and every trainable key must be there); `TrainableStateCheckpoints` keeps
its Lightning checkpoints to that state too.  A module without it is saved and loaded whole, as before.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from genretr.errors import GenretrError

log = logging.getLogger(__name__)


FROZEN_FINGERPRINT = "genretr.frozen_fingerprint"  # the key under which trained_state records the frozen weights


def frozen_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """One float64 sum per frozen entry (sorted by name): what the saved trainable state was trained on top of."""
    trainable = set(module.trainable_state_dict())
    state = module.state_dict()
    return torch.stack([state[k].detach().double().sum().cpu() for k in sorted(state) if k not in trainable]
                       or [torch.zeros((), dtype=torch.float64)])


def trained_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What to save of a trained module, on the CPU: `trainable_state_dict()` (with the frozen weights'
    fingerprint) when it has one, else everything."""
    if not hasattr(module, "trainable_state_dict"):
        return {k: v.cpu() for k, v in module.state_dict().items()}
    return {**{k: v.cpu() for k, v in module.trainable_state_dict().items()},
            FROZEN_FINGERPRINT: frozen_fingerprint(module)}


def check_trainable_state(module: torch.nn.Module, state: dict) -> None:
    """Refuse `state` unless its keys are all `module`'s and hold every key of its `trainable_state_dict()`."""
    unexpected = sorted(set(state) - set(module.state_dict()))
    missing = sorted(set(module.trainable_state_dict()) - set(state))
    if unexpected or missing:
        raise GenretrError(f"{type(module).__name__}: the saved state does not fit the model: "
                           f"{len(missing)} trainable entries missing {missing[:3]}, "
                           f"{len(unexpected)} unknown {unexpected[:3]}")


def load_trained_state(module: torch.nn.Module, state: dict) -> None:
    """Load what `trained_state` saved into a freshly built `module` (its frozen entries stay as built)."""
    if not hasattr(module, "trainable_state_dict"):
        module.load_state_dict(state)
        return
    state = dict(state)
    saved = state.pop(FROZEN_FINGERPRINT, None)
    check_trainable_state(module, state)
    now = frozen_fingerprint(module)
    if saved is not None and (saved.shape != now.shape or not torch.allclose(saved, now, rtol=1e-6, atol=1e-6)):
        raise GenretrError(f"{type(module).__name__}: the frozen weights differ from those the saved adapters were "
                           "trained on (did backbone.model.pretrained change on disk?): retrain, or remove that "
                           "train artifact")
    module.load_state_dict(state, strict=False)


class TrainableStateCheckpoints:
    """LightningModule mixin (listed before `L.LightningModule`): `trainable_state_dict()` is the parameters that
    require grad, and Lightning checkpoints hold only those; resuming loads them over the rebuilt frozen ones."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.strict_loading = False  # the frozen entries are not in the checkpoint; on_load_checkpoint checks

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = set(self.trainable_state_dict())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # DeepSpeed's checkpoint holds none: its engine restores the weights itself
            check_trainable_state(self, checkpoint["state_dict"])


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


def stepping_batches(trainer) -> int:
    """Optimiser steps of the whole fit: the datamodule's own count where its epochs differ in length (a phased
    schedule's memorize-only epochs come first), else Lightning's estimate."""
    count = getattr(getattr(trainer, "datamodule", None), "stepping_batches", None)
    if not callable(count):
        return max(1, int(trainer.estimated_stepping_batches))
    batches = count(int(trainer.max_epochs), int(trainer.world_size))
    return max(1, math.ceil(batches / int(trainer.accumulate_grad_batches)))


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


def log_heldout(module: L.LightningModule, logits: torch.Tensor, labels: torch.Tensor, pad: int,
                loss: torch.Tensor | None = None) -> None:
    """A decoder's validation step on held-out queries: teacher-forced token cross-entropy
    (``decoder/val_loss``; `loss` when the model computed it already) and the share whose arg-max sequence is
    their target's exactly (``decoder/val_exact``, greedy decoding's R@1 without the trie).  `logits` (N, T, V)
    predict `labels` (N, T, `pad` after EOS)."""
    keep = labels != pad
    if loss is None:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=pad)
    exact = ((logits.argmax(-1) == labels) | ~keep).all(1).float().mean()
    n = len(labels)
    module.log("decoder/val_loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
    module.log("decoder/val_exact", exact, prog_bar=True, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)


EARLY_STOP_MONITORS = {"exact": ("decoder/val_exact", 1.0), "loss": ("decoder/val_loss", -1.0)}


class EarlyStop(Callback):
    """Stop a fit once the held-out score has not improved by more than `min_delta` for `patience` epochs (never
    before `min_epochs` epochs: the exact match stays 0 while a decoder learns the first tokens), and end it with
    the weights of its best epoch (the later of equals).  `monitor`: ``loss`` (lower is better) or ``exact``.

    Unlike Lightning's `EarlyStopping` it keeps the best weights itself, and its whole state (the best score,
    epoch, weights and the epochs waited) is in every checkpoint: a run killed after it decided to stop resumes,
    stops at once and ends with the same weights as an uninterrupted one."""

    def __init__(self, patience: int, monitor: str = "loss", min_delta: float = 0.0, min_epochs: int = 0):
        if monitor not in EARLY_STOP_MONITORS:
            raise GenretrError(f"backbone.fit.early_stop.monitor={monitor} is not one of "
                               f"{', '.join(EARLY_STOP_MONITORS)}")
        if int(patience) < 1:
            raise GenretrError(f"backbone.fit.early_stop.patience={patience} must be >= 1 (0 turns it off)")
        self.key, self.sign = EARLY_STOP_MONITORS[monitor]
        self.patience, self.min_delta, self.min_epochs = int(patience), float(min_delta), int(min_epochs)
        self.best, self.best_epoch, self.best_state, self.waited = -math.inf, -1, None, 0
        self.reference = -math.inf

    def on_train_start(self, trainer, pl_module):
        if self.waited >= self.patience and trainer.current_epoch >= self.min_epochs:  # resumed after the decision:
            trainer.should_stop = True  # the fit loop ends before another epoch starts

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.key not in trainer.callback_metrics:
            return
        score = self.sign * float(trainer.callback_metrics[self.key])
        if score > self.reference + self.min_delta:  # patience counts from the last real improvement
            self.reference, self.waited = score, 0
        else:
            self.waited += 1
        if score >= self.best:  # the weights kept: the best epoch, the later one on a tie
            self.best, self.best_epoch = score, trainer.current_epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        done = self.waited >= self.patience and trainer.current_epoch + 1 >= self.min_epochs
        stop = trainer.strategy.reduce_boolean_decision(done, all=False)
        if stop:
            trainer.should_stop = True
            log.info("early stop after epoch %d: %s best %.4f at epoch %d", trainer.current_epoch, self.key,
                     self.sign * self.best, self.best_epoch)

    def on_train_end(self, trainer, pl_module):
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def summary(self) -> dict:
        """What it decided, for the train artifact's fit.json (epochs numbered from 0)."""
        scored = self.best_epoch >= 0  # no epoch scored (a NaN score every epoch): nothing was kept
        return {"monitor": self.key, "best_epoch": self.best_epoch if scored else None,
                "best": round(self.sign * self.best, 6) if scored else None, "patience": self.patience,
                "min_epochs": self.min_epochs}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "waited": self.waited, "reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_state, self.waited, self.reference = state["best_state"], state["waited"], state["reference"]


def early_stop_holdout(fit_cfg) -> float:
    """The share of training queries a decoder's ``fit.early_stop`` block holds out: 0 when it is absent or its
    patience is 0."""
    stop = fit_cfg.get("early_stop") if fit_cfg is not None else None
    return float(stop.get("holdout", 0.05)) if stop and int(stop.get("patience", 0)) else 0.0


def early_stop_callbacks(fit_cfg, memorize_epochs: int = 0) -> list[Callback]:
    """`EarlyStop` for a decoder's ``fit.early_stop`` block (none when its patience is 0).  A phased schedule's
    `memorize_epochs` see no queries, so the patience starts counting after them."""
    if not early_stop_holdout(fit_cfg):
        return []
    stop = fit_cfg.early_stop
    patience = int(stop.patience)
    return [EarlyStop(patience, str(stop.get("monitor", "loss")), float(stop.get("min_delta", 0.0)),
                      max(int(stop.get("min_epochs", 0)), int(memorize_epochs) + patience))]


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


def small_fit(model: L.LightningModule, loader, max_epochs: int, progress: bool = False, device="cpu") -> None:
    """Train `model` on `loader` for `max_epochs` in one process on `device` (the run's,
    `genretr.hardware.run_device`), without logger or checkpoints: the small fits inside a stage (quantizers,
    captioner).  The trainer is detached afterwards, so the model holds neither it nor the loader's data."""
    device = torch.device(device)
    accelerator = {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")
    callbacks = []
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    trainer = L.Trainer(max_epochs=max_epochs, accelerator=accelerator,
                        devices=[device.index or 0] if accelerator == "gpu" else 1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(model, train_dataloaders=loader)
    model.trainer = None


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, cfg, workdir: Path, max_epochs: int,
        logger=None, extra_callbacks=(), **trainer_kwargs) -> L.Trainer:
    """Train `module` for `max_epochs`, resuming from `workdir/last.ckpt` when present; returns the Trainer (under
    a spawning strategy `module` itself is not attached to it).  `trainer_kwargs` may
    hold ``callbacks`` of the caller's own (e.g. `EarlyStop`), appended to the stage's."""
    workdir = Path(workdir)
    # The newest epoch is written whole, then `last.ckpt` is re-pointed at it: a kill never leaves it torn.
    ckpt = ModelCheckpoint(dirpath=workdir, filename="epoch{epoch}", save_last="link", save_top_k=1, monitor=None,
                           every_n_epochs=1, auto_insert_metric_name=False)
    callbacks = [ckpt, EpochSeed(int(cfg.seed)), *extra_callbacks, *trainer_kwargs.pop("callbacks", ())]
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
    # Lightning leaves the trainer attached to the module, and through it the datamodule and its data (the encoder's
    # pairs and MiniLM features: 1.55 GB at the 1M-caption pool): detached, they go with the returned trainer
    module.trainer = None
    return trainer
