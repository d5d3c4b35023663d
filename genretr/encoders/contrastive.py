"""`ContrastiveEncoder`: a CLIP-style dual encoder trained with symmetric InfoNCE.

The temperature is learnable (CLIP, Radford et al. 2021, Sec. 2.5), initialised to
`temperature` and clamped so that 1/τ ≤ 100.  Image–text inputs (pair items, composed
queries) are embedded by score-level fusion — the sum of the two normalised tower
outputs, renormalised — as UniIR's CLIP-SF, which GENIUS builds on (Sec. 4.1).
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class ContrastiveEncoder(L.LightningModule):
    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01,
                 temperature: float = 0.07, learn_temperature: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["image_tower", "text_tower"])
        self.image_tower, self.text_tower = image_tower, text_tower
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    def prepare_texts(self, texts: list[str], fit_texts: list[str] | None = None) -> torch.Tensor:
        return self.text_tower.prepare(texts, fit_texts)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def embed_texts(self, prepared: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_tower(prepared), dim=-1)

    @staticmethod
    def fuse(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_emb + text_emb, dim=-1)

    def training_step(self, batch, batch_idx):
        images, texts = batch
        img, txt = self.embed_images(images), self.embed_texts(texts)
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * img @ txt.t()
        target = torch.arange(len(img), device=img.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        self.log("encoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(img))
        self.log("encoder/temperature", 1.0 / scale, on_step=False, on_epoch=True, batch_size=len(img))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
