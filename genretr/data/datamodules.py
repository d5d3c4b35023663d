"""Lightning DataModules for the two trained stages.

Batches depend only on (seed, epoch) (`EpochShuffle`), and `genretr.training.EpochSeed`
reseeds dropout at every epoch start: a run resumed from an epoch checkpoint replays the
same epochs as an uninterrupted one.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset


def _private_generator() -> torch.Generator:
    """A DataLoader draws a base seed each time it is iterated; from its own generator, that draw
    leaves the global RNG (dropout) untouched, wherever Lightning happens to call iter()."""
    return torch.Generator().manual_seed(0)


class EpochShuffle(Sampler):
    """A shuffle that depends only on (seed, epoch): a resumed run replays the same batches.

    With `groups` (lists of sample indices), each epoch draws one member of every group — one
    caption per image, so that an image's other captions are not negatives in its own batch.
    Lightning calls `set_epoch` (and wraps the sampler for DDP).
    """

    def __init__(self, n: int, seed: int = 0, groups: list[list[int]] | None = None):
        self.n, self.seed, self.groups, self.epoch = n, seed, groups, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.groups) if self.groups is not None else self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.groups is None:
            return iter(torch.randperm(self.n, generator=g).tolist())
        picks = [grp[int(torch.randint(len(grp), (), generator=g))] for grp in self.groups]
        return iter([picks[i] for i in torch.randperm(len(picks), generator=g).tolist()])


class CaptionPairs(Dataset):
    """(image, caption) training pairs for the contrastive encoder; `groups` lists each image's pairs."""

    def __init__(self, images: np.ndarray, image_index: np.ndarray, caption_rows: list[list[int]],
                 text_inputs: torch.Tensor):
        self.images, self.text_inputs = torch.from_numpy(images), text_inputs
        self.pairs = [(int(img), row) for img, rows in zip(image_index, caption_rows) for row in rows]
        self.groups, k = [], 0
        for rows in caption_rows:
            self.groups.append(list(range(k, k + len(rows))))
            k += len(rows)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        img, row = self.pairs[i]
        return self.images[img], self.text_inputs[row]


class ContrastiveDataModule(L.LightningDataModule):
    def __init__(self, pairs: CaptionPairs, batch_size: int = 128, seed: int = 0):
        super().__init__()
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed

    def train_dataloader(self):
        sampler = EpochShuffle(len(self.pairs), self.seed, self.pairs.groups)
        return DataLoader(self.pairs, batch_size=self.batch_size, sampler=sampler, generator=_private_generator(),
                          drop_last=len(sampler) > self.batch_size)


class IdentifierDataModule(L.LightningDataModule):
    """(input vector, target item vector, identifier tokens) samples: memorize (item → ID, where
    input and target vector coincide) and retrieve (query → ID)."""

    def __init__(self, inputs: torch.Tensor, target_vecs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256,
                 seed: int = 0):
        super().__init__()
        self.data = TensorDataset(inputs.float(), target_vecs.float(), targets.long())
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, sampler=EpochShuffle(len(self.data), self.seed),
                          generator=_private_generator())
