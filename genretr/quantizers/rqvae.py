"""`RQVAE`: CART's fine-token quantizer (Sec. 3.2.2, Eq. 1; Appendix C).

An MLP encoder E (input → 512 → 256 → 128 → latent 64, ELU) maps x to z = E(x); a
`ResidualQuantizer` of M codebooks of N entries (default 2 × 128, level-specific: "all codebooks
do not share parameters") gives codes v_1..v_M and Q(z) = Σ e_i^{v_i}; a symmetric decoder D
reconstructs x.  Loss L = ||x - D(Q(E(x)))||² + α·L_commit with
L_commit = Σ_i ||sg[r_i] - e_i||² + β·||r_i - sg[e_i]||².

Optimiser (App. C): Adam, learning rate warmed up linearly from `init_lr` to `lr`, then the
inverse-square-root decay of fairseq (lr · sqrt(warmup / step)).
"""
from __future__ import annotations

import math
from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genretr.quantizers.residual import ResidualQuantizer
from genretr.training import small_fit


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def warmup_inverse_sqrt(step: int, warmup_steps: int, init_ratio: float) -> float:
    """Learning-rate factor: linear from init_ratio to 1 over warmup_steps, then sqrt(warmup / step)."""
    warmup_steps = max(1, warmup_steps)
    if step < warmup_steps:
        return init_ratio + (1.0 - init_ratio) * step / warmup_steps
    return math.sqrt(warmup_steps / step)


class RQVAE(L.LightningModule):
    def __init__(self, input_dim: int, hidden: Sequence[int] = (512, 256, 128), latent_dim: int = 64,
                 num_codebooks: int = 2, codebook_size: int = 128, shared: bool = False, alpha: float = 1.0,
                 beta: float = 0.25, lr: float = 1e-3, init_lr: float = 1e-6, warmup_steps: int = 100,
                 update: str = "grad", decay: float = 0.99, kmeans_init: bool = True, dead_after: int = 50):
        super().__init__()
        self.save_hyperparameters()
        hidden = list(hidden)
        self.encoder = mlp([input_dim, *hidden, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), input_dim])
        self.quantizer = ResidualQuantizer(latent_dim, [codebook_size] * num_codebooks, shared=shared, update=update,
                                           decay=decay, beta=beta, kmeans_init=kmeans_init, dead_after=dead_after)

    def forward(self, x: torch.Tensor):
        """x → (reconstruction, codes (n, M), quantizer losses)."""
        zq, codes, losses = self.quantizer(self.encoder(x))
        return self.decoder(zq), codes, losses

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, _, q = self(x)
        rec = F.mse_loss(recon, x)
        return {"recon": rec, "commit": q["loss"], "loss": rec + self.hparams.alpha * q["loss"]}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        out = self.losses(x)
        for name, value in out.items():
            self.log(f"rqvae/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", batch_size=len(x))
        return out["loss"]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=hp.lr)
        ratio = min(1.0, hp.init_lr / hp.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_inverse_sqrt(s, hp.warmup_steps, ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Codes (n, M) of x on the CPU, in eval mode, each batch on the model's device."""
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self.quantizer.encode(self.encoder(x[s:s + batch_size].to(device))).cpu()
                          for s in range(0, len(x), batch_size)])

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, batch_size: int = 4096) -> dict:
        """Reconstruction MSE and relative error ||x - x̂||² / ||x - mean(x)||² (None for constant x),
        relative latent quantization error ||z - Q(z)||² / ||z||², and codebook usage per level; summed a block
        at a time on the model's device."""
        self.eval()
        device = next(self.parameters()).device
        # the mean summed a block at a time: x.mean(0, dtype=torch.float64) casts all of x to float64 first
        # (2 GB at CART's 1M-caption pool, the identify stage's peak)
        mean = sum((x[s:s + batch_size].sum(0, dtype=torch.float64) for s in range(0, len(x), batch_size)),
                   torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)) / max(len(x), 1)
        sums = dict(recon=0.0, spread=0.0, latent=0.0, norm=0.0)
        codes = []
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(device)
            z = self.encoder(xb)
            c = self.quantizer.encode(z)
            zq = self.quantizer.decode(c)
            sums["recon"] += float((xb - self.decoder(zq)).double().pow(2).sum())
            sums["spread"] += float((xb.double() - mean.to(device)).pow(2).sum())  # zero when every x is the same
            sums["latent"] += float((z - zq).double().pow(2).sum())
            sums["norm"] += float(z.double().pow(2).sum())
            codes.append(c.cpu())
        return {"recon_mse": sums["recon"] / max(x.numel(), 1),
                "recon_rel_error": sums["recon"] / sums["spread"] if sums["spread"] > 0 else None,
                "latent_rel_error": sums["latent"] / max(sums["norm"], 1e-12),
                "usage": self.quantizer.usage(torch.cat(codes))}


def fit_rqvae(vectors: np.ndarray, *, seed: int = 0, max_epochs: int = 100, batch_size: int = 256,
              warmup_epochs: float = 60, progress: bool = False, device="cpu",
              **model_kwargs) -> tuple[RQVAE, np.ndarray]:
    """Train an `RQVAE` on `vectors` (n, d) with a Lightning Trainer on `device`; return it (on the CPU) and the
    codes (n, M).

    Deterministic given `seed` (single-process CPU; the Trainer's `deterministic` flag is left off
    because it switches torch's global deterministic mode on for the rest of the process); the
    caller's RNG state is left untouched.  `warmup_epochs` is
    converted to optimiser steps (App. C warms up for 300 of 500 epochs).
    """
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    steps_per_epoch = math.ceil(len(x) / batch_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RQVAE(input_dim=x.shape[1], warmup_steps=int(warmup_epochs * steps_per_epoch), **model_kwargs)
        loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        small_fit(model, loader, max_epochs, progress, device=device)
    codes = model.to(device).encode(x)
    return model.cpu(), codes.numpy()
