"""`ContrastiveEncoder`: a CLIP-style dual encoder trained with symmetric InfoNCE.

The temperature is learnable (CLIP, Radford et al. 2021, Sec. 2.5), initialised to
`temperature` and clamped so that 1/τ ≤ 100.  Image–text inputs (pair items, composed
queries) are embedded by score-level fusion — the sum of the two normalised tower
outputs, renormalised — as UniIR's CLIP-SF, which GENIUS builds on (Sec. 4.1).
Batches are (image, caption) pairs, or (query, target) pairs of every task whose sides
may be images, texts or both (`genretr.stages.encode`, GENIUS Sec. 4.1).
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from genretr.training import lr_factor


class ContrastiveEncoder(L.LightningModule):
    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01,
                 temperature: float = 0.07, learn_temperature: bool = True, schedule: str = "constant",
                 warmup: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["image_tower", "text_tower"])
        self.image_tower, self.text_tower = image_tower, text_tower
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    def prepare_texts(self, texts: list[str], fit_texts: list[str] | None = None) -> torch.Tensor:
        return self.text_tower.prepare(texts, fit_texts)

    def trains_embeddings(self) -> bool:
        """Whether training can change an embedding: some tower parameter is trainable.  The temperature alone
        rescales every score and leaves every ranking as it is."""
        towers = (self.image_tower, self.text_tower)
        return any(p.requires_grad for tower in towers for p in tower.parameters())

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def embed_texts(self, prepared: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_tower(prepared), dim=-1)

    @staticmethod
    def fuse(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_emb + text_emb, dim=-1)

    def embed_sides(self, images, has_image, texts, has_text) -> torch.Tensor:
        """Rows that are an image, a text, or both (score-level fusion); each tower runs on its rows only."""
        out = None
        if has_image.any():
            img = self.embed_images(images[has_image])
            out = img.new_zeros(len(images), img.shape[1])
            out[has_image] = img
        if has_text.any():
            txt = self.embed_texts(texts[has_text])
            out = txt.new_zeros(len(texts), txt.shape[1]) if out is None else out
            out[has_text] = out[has_text] + txt
        return F.normalize(out, dim=-1)

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # (query, target) pairs of every task (genretr.stages.encode, fit.tasks=all)
            q = self.embed_sides(batch["q_image"], batch["q_has_image"], batch["q_text"], batch["q_has_text"])
            t = self.embed_sides(batch["t_image"], batch["t_has_image"], batch["t_text"], batch["t_has_text"])
            # another pair's target that shares this pair's query or target is a positive, not a negative
            qid, tid = batch["q_id"], batch["t_id"]
            false_neg = (qid[:, None] == qid[None, :]) | (tid[:, None] == tid[None, :])
            false_neg.fill_diagonal_(False)
        else:  # (image, caption) pairs
            images, texts = batch
            q, t, false_neg = self.embed_images(images), self.embed_texts(texts), None
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * q @ t.t()
        if false_neg is not None:
            logits = logits.masked_fill(false_neg, float("-inf"))
        target = torch.arange(len(q), device=q.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        self.log("encoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(q))
        self.log("encoder/temperature", 1.0 / scale, on_step=False, on_epoch=True, batch_size=len(q))
        return loss

    def configure_optimizers(self):
        """AdamW; the rate warms up linearly over the first `warmup` fraction of the steps, then stays
        (``schedule=constant``) or decays to zero along a cosine (``cosine``; `genretr.training.lr_factor`)."""
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.schedule == "constant" and not self.hparams.warmup:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        factor = lr_factor(self.hparams.schedule, int(self.hparams.warmup * total), total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
