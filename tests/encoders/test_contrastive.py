"""ContrastiveEncoder's learning-rate schedule (cosine after a linear warm-up)."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genretr.encoders.contrastive import ContrastiveEncoder


class _Linear(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.lin = nn.Linear(d_in, 8)

    def forward(self, x):
        return self.lin(x.float().flatten(1))


class _LrLog(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _rates(schedule: str, warmup: float, steps: int = 20) -> list[float]:
    torch.manual_seed(0)
    enc = ContrastiveEncoder(_Linear(12), _Linear(6), lr=1e-2, schedule=schedule, warmup=warmup)
    data = TensorDataset(torch.randint(0, 255, (steps * 4, 2, 2, 3), dtype=torch.uint8), torch.randn(steps * 4, 6))
    log = _LrLog()
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[log]).fit(enc, DataLoader(data, batch_size=4))
    return log.lrs


def test_cosine_warms_up_then_decays_to_zero():
    lrs = _rates("cosine", warmup=0.25)  # 20 steps: 5 of warm-up
    assert lrs[:5] == pytest.approx([1e-2 * (s + 1) / 5 for s in range(5)])
    assert lrs[5] == pytest.approx(1e-2)
    assert lrs[12] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] < 1e-3


def test_constant_keeps_the_rate():
    assert set(_rates("constant", warmup=0.0)) == {1e-2}


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="schedule=linear"):
        _rates("linear", 0.0)


def test_lr_factor_by_hand():
    from genretr.training import lr_factor

    cos = lr_factor("cosine", warmup_steps=2, total_steps=6)   # warm-up 0.5, 1.0; then 4 decay steps
    assert [cos(s) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                        0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])
    const = lr_factor("constant", warmup_steps=2, total_steps=6)
    assert [const(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
