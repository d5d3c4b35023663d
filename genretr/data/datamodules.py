"""Lightning DataModules for the two trained stages.

Batches depend only on (seed, epoch) (`EpochShuffle`), and `genretr.training.EpochSeed`
reseeds dropout at every epoch start: a run resumed from an epoch checkpoint replays the
same epochs as an uninterrupted one.
"""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from genretr.data.mapped import read_rows
from genretr.errors import GenretrError


def loader_generator() -> torch.Generator:
    """A DataLoader draws a base seed each time it is iterated; from its own generator, that draw
    leaves the global RNG (dropout) untouched, wherever Lightning happens to call iter()."""
    return torch.Generator().manual_seed(0)


class EpochShuffle(Sampler):
    """A shuffle that depends only on (seed, epoch): a resumed run replays the same batches.

    With `groups` (lists of sample indices), each epoch draws one member of every group — one
    caption per image, so that an image's other captions are not negatives in its own batch.
    Lightning calls `set_epoch` (and wraps the sampler for DDP).
    With ``subset_until=(rows, E)``, epochs before E draw only `rows` (a phased schedule).
    """

    def __init__(self, n: int, seed: int = 0, groups: list[list[int]] | None = None,
                 subset_until: tuple[list[int] | None, int] = (None, 0)):
        self.n, self.seed, self.groups, self.epoch = n, seed, groups, 0
        self.subset, self.subset_epochs = subset_until

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        if self.epoch < self.subset_epochs:
            return len(self.subset)
        return len(self.groups) if self.groups is not None else self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.epoch < self.subset_epochs:
            return iter([self.subset[i] for i in torch.randperm(len(self.subset), generator=g).tolist()])
        if self.groups is None:
            return iter(torch.randperm(self.n, generator=g).tolist())
        picks = [grp[int(torch.randint(len(grp), (), generator=g))] for grp in self.groups]
        return iter([picks[i] for i in torch.randperm(len(picks), generator=g).tolist()])


def image_row(images: np.ndarray, i: int) -> torch.Tensor:
    """Image `i` of the dataset's images, read from their file when memory-mapped (`genretr.data.mapped`): epochs
    over 100k training images leave none of their pages resident."""
    return torch.from_numpy(read_rows(images, i, i + 1)[0])


class CaptionPairs(Dataset):
    """(image, caption) training pairs for the contrastive encoder; `groups` lists each image's pairs."""

    def __init__(self, images: np.ndarray, image_index: np.ndarray, caption_rows: list[list[int]],
                 text_inputs: torch.Tensor):
        self.images, self.text_inputs = images, text_inputs
        self.pairs = [(int(img), row) for img, rows in zip(image_index, caption_rows) for row in rows]
        self.groups, k = [], 0
        for rows in caption_rows:
            self.groups.append(list(range(k, k + len(rows))))
            k += len(rows)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        img, row = self.pairs[i]
        return image_row(self.images, img), self.text_inputs[row]


class QueryTargetPairs(Dataset):
    """(query, target) training pairs of every task for the contrastive encoder (GENIUS Sec. 4.1).

    A side is an image, a text, or both (fused by the encoder); a missing part is a zero row with its
    ``has_*`` flag off.  ``q_id``/``t_id`` let the loss drop in-batch negatives that are really positives
    (one query's other relevant items, one item's other queries).  `sides`: see
    `genretr.stages.encode.query_target_sides`; `row` maps a text to its row of `text_inputs`."""

    groups = None

    def __init__(self, images: np.ndarray, sides: list, text_inputs: torch.Tensor, row: dict[str, int]):
        self.images, self.text_inputs = images, text_inputs
        qids, tids = {}, {}
        image = lambda i: -1 if i is None else int(i)
        text = lambda t: row[t] if t else -1
        self.rows = [(image(qi), text(qt), image(ti), text(tt), qids.setdefault(q, len(qids)),
                      tids.setdefault(t, len(tids))) for (qi, qt), (ti, tt), q, t in sides]

    def __len__(self):
        return len(self.rows)

    def _side(self, image: int, text: int, prefix: str) -> dict:
        return {f"{prefix}_image": image_row(self.images, max(image, 0)), f"{prefix}_has_image": image >= 0,
                f"{prefix}_text": self.text_inputs[max(text, 0)], f"{prefix}_has_text": text >= 0}

    def __getitem__(self, i):
        qi, qt, ti, tt, q, t = self.rows[i]
        return {**self._side(qi, qt, "q"), **self._side(ti, tt, "t"), "q_id": q, "t_id": t}


def worker_context():
    """'fork' where the platform offers it (the workers share the memory-mapped images), else the default."""
    import multiprocessing

    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class ContrastiveDataModule(L.LightningDataModule):
    """`workers` processes read the pairs (images from the memory-mapped artifact); the batches are the same.
    Workers are forked where the platform can (Linux, macOS): they share the parent's pages, where spawned
    ones would pickle the pairs, and the images with them, into every worker."""

    def __init__(self, pairs: CaptionPairs | QueryTargetPairs, batch_size: int = 128, seed: int = 0,
                 workers: int = 0):
        super().__init__()
        self.pairs, self.batch_size, self.seed, self.workers = pairs, batch_size, seed, int(workers)

    def train_dataloader(self):
        sampler = EpochShuffle(len(self.pairs), self.seed, self.pairs.groups)
        return DataLoader(self.pairs, batch_size=self.batch_size, sampler=sampler, generator=loader_generator(),
                          drop_last=len(sampler) > self.batch_size, num_workers=self.workers,
                          persistent_workers=self.workers > 0,
                          multiprocessing_context=worker_context() if self.workers > 0 else None)


class TensorDict(Dataset):
    """Rows of several tensors sharing dim 0; a batch is a dict of the same keys."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        n = {len(v) for v in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


class PhasedDataModule(L.LightningDataModule):
    """Samples (`data`, a Dataset) shuffled by `EpochShuffle`; with ``schedule="phased"`` the first
    `memorize_epochs` epochs draw only `memorize_rows` (GRACE: learning to memorize, then to retrieve)."""

    def __init__(self, data, batch_size: int, seed: int, memorize_rows: list[int], schedule: str = "interleaved",
                 memorize_epochs: int = 0, **loader_kwargs):
        super().__init__()
        if schedule not in ("interleaved", "phased"):
            raise ValueError(f"train.schedule={schedule} is not one of interleaved, phased")
        self.data, self.batch_size, self.seed, self.memorize_rows = data, batch_size, seed, memorize_rows
        self.memorize_epochs = memorize_epochs if schedule == "phased" and memorize_rows else 0
        self.loader_kwargs = loader_kwargs

    def train_dataloader(self):
        """The epoch's loader, its sampler already at the trainer's epoch: Lightning takes an epoch's length before
        it calls ``set_epoch``, so a sampler made at epoch 0 would cut every later epoch to the memorize rows."""
        sampler = EpochShuffle(len(self.data), self.seed, subset_until=(self.memorize_rows, self.memorize_epochs))
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return DataLoader(self.data, batch_size=self.batch_size, sampler=sampler, generator=loader_generator(),
                          **self.loader_kwargs)

    def stepping_batches(self, max_epochs: int, world_size: int = 1) -> int:
        """Batches per process of the whole fit (the memorize-only epochs are shorter): the length a cosine
        schedule spans (Lightning's estimate assumes every epoch is the first's)."""
        def batches(rows: int) -> int:
            return math.ceil(math.ceil(rows / world_size) / self.batch_size)

        short = min(self.memorize_epochs, max_epochs)
        return short * batches(len(self.memorize_rows)) + (max_epochs - short) * batches(len(self.data))


class IdentifierDataModule(PhasedDataModule):
    """Decoder samples, a dict of tensors: ``z`` input vector, ``target_z`` the target item's vector,
    ``labels`` identifier tokens, and ``src`` query tokens for token-input backbones.  Memorize
    samples (item → ID) have z == target_z; retrieve samples (query → ID) do not.

    With ``schedule="phased"`` (GRACE: learning to memorize, then to retrieve) the first
    `memorize_epochs` epochs draw only memorize samples (``phase == 0``), the later ones all samples;
    ``"interleaved"`` draws all samples every epoch.

    ``holdout`` > 0 sets that share of the training queries (``query`` >= 0, drawn by `seed`) apart, every
    sample of each: the validation set `genretr.training.EarlyStop` watches.  0: no validation."""

    def __init__(self, samples: dict[str, torch.Tensor], batch_size: int = 256, seed: int = 0,
                 schedule: str = "interleaved", memorize_epochs: int = 0, holdout: float = 0.0):
        samples = dict(samples)
        phase, query = samples.pop("phase", None), samples.pop("query", None)
        held = heldout_rows(query, holdout, seed)
        if held is not None:
            if not held.any() or held.all():
                left = "none to validate on" if not held.any() else "nothing to train on"
                raise GenretrError(f"backbone.fit.early_stop.holdout={holdout}: holding out that share of the "
                                   f"training queries leaves {left}")
            self.val = TensorDict({k: v[held] for k, v in as_batch_dtypes(samples).items()})
            samples = {k: v[~held] for k, v in samples.items()}
            phase = phase[~held] if phase is not None else None
        else:
            self.val = None
        data = TensorDict(as_batch_dtypes(samples))
        memorize_rows = (phase == 0).nonzero().flatten().tolist() if phase is not None else []
        super().__init__(data, batch_size, seed, memorize_rows, schedule, memorize_epochs)

    def val_dataloader(self):
        return [] if self.val is None else DataLoader(self.val, batch_size=self.batch_size)


def as_batch_dtypes(samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v.long() for k, v in samples.items()}


def heldout_rows(query: torch.Tensor | None, share: float, seed: int) -> torch.Tensor | None:
    """Rows of the `share` of distinct training queries (``query`` >= 0) drawn by `seed` (a bool mask), or
    None when nothing is held out."""
    if not share:
        return None
    if not 0 < share < 1:
        raise GenretrError(f"backbone.fit.early_stop.holdout={share} must lie in (0, 1)")
    if query is None:
        raise GenretrError("backbone.fit.early_stop: these decoder samples do not say which training query each "
                           "comes from")
    queries = query[query >= 0].unique()
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    chosen = queries[torch.randperm(len(queries), generator=g)[: max(1, round(share * len(queries)))]]
    return torch.isin(query, chosen)
