"""Lightning DataModules for the two trained stages.

Shuffling draws from torch's global RNG, which `genretr.training.EpochSeed` reseeds at
every epoch start from (seed, epoch): a run resumed from an epoch checkpoint sees the
same batches as an uninterrupted one.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class CaptionPairs(Dataset):
    """One (image, caption) pair per training image per epoch; the caption is drawn at random.

    Drawing one caption per image keeps an image's other captions out of its own batch,
    where InfoNCE would count them as negatives.
    """

    def __init__(self, images: np.ndarray, image_index: np.ndarray, caption_rows: list[list[int]],
                 text_inputs: torch.Tensor):
        self.images, self.image_index = torch.from_numpy(images), torch.as_tensor(image_index)
        self.caption_rows, self.text_inputs = caption_rows, text_inputs

    def __len__(self):
        return len(self.image_index)

    def __getitem__(self, i):
        rows = self.caption_rows[i]
        row = rows[int(torch.randint(len(rows), ()))]
        return self.images[self.image_index[i]], self.text_inputs[row]


class ContrastiveDataModule(L.LightningDataModule):
    def __init__(self, pairs: CaptionPairs, batch_size: int = 128):
        super().__init__()
        self.pairs, self.batch_size = pairs, batch_size

    def train_dataloader(self):
        return DataLoader(self.pairs, batch_size=self.batch_size, shuffle=True, drop_last=len(self.pairs) > self.batch_size)


class IdentifierDataModule(L.LightningDataModule):
    """(input vector, target item vector, identifier tokens) samples: memorize (item → ID, where
    input and target vector coincide) and retrieve (query → ID)."""

    def __init__(self, inputs: torch.Tensor, target_vecs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256):
        super().__init__()
        self.data = TensorDataset(inputs.float(), target_vecs.float(), targets.long())
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)
