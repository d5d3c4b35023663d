"""`ModalityDecoupledQuantizer`: GENIUS's contrastive residual quantizer (Sec. 4.2, Eq. 3-8).

Fusion (Sec. 4.2.1): h(x, y) = λ·x + (1-λ)·y + MLP([x; y]), λ = σ(MLP_λ([x; y])) per sample,
x the image vector and y the text vector of a query or item, zeros for a side it lacks (the
authors' masked Combiner); pair items and composed queries take the encoder's two vectors
unfused.  The fused vector is L2-normalised, z = h / ||h||: the encoders' vectors are unit-norm,
and a fixed scale keeps L_rq and L_mse from being minimised by shrinking z (L_cl is scale-free).
Inputs already fused (precomputed vectors) are fed as h(v, v), where λ cancels.  The MLP's last
layer starts at zero, so h starts as λ·x + (1-λ)·y.

Residual quantization (Sec. 4.2.3) over M levels, level-specific codebooks (or `shared` ones as
Table 11), k-means initialised on the first batch, EMA-updated, dead codes re-seeded
(`ResidualQuantizer`).  The first code and its modality, `modality_code` (Table 8's strategies):
- ``learned`` (the paper's, Sec. 4.2.3): the first codebook has K_1 = 3 entries and is learned like
  every other level; the contrastive loss with instructions is what makes its 3 clusters the
  modalities.  Its code numbers are cluster numbers, so `modality_agreement` matches them to the
  modalities one to one before counting.
- ``given`` (a genretr option): the first level takes the item's modality index as its code (for a
  query, its target's), and its codeword is learned by EMA as that modality's mean fused vector, so
  t_1 == modality for every item by construction.
- ``classifier`` (Table 8 "classifier-based modality encoding"): a linear classifier on z, trained
  with cross-entropy on the target's modality, gives the first code; the M-1 residual levels
  quantize z itself, so modality is not removed from what they encode.
- ``none`` (Table 8 "RQ w/o modality-code" = Table 4 "w/o Modality-decoupled"): no modality code;
  the identifier is the M-1 semantic levels alone (the authors' RQ without its extra first level).

Loss (Eq. 8): L = L_cl + β·L_rq + γ·L_mse (+ the classifier's cross-entropy), each switchable (Table 4):
- L_cl (Eq. 3): InfoNCE from fused query to fused target over the batch's targets, cosine/τ,
  τ = 0.01; columns holding any item relevant to the query (the positive's item again, or another
  of its relevant items, from whichever pair it came) are masked out of the negatives.
- L_rq (Eq. 7): Σ_i ||r_{i-1} - sg(e_i)||² for queries and targets; codebooks move by EMA only,
  and only targets update them (identifiers are for targets).
- L_mse: ||ẑ_q - ẑ_c||² on the quantized vectors with straight-through gradients (ẑ itself is a
  sum of EMA codewords and has no gradient of its own).
Defaults suit a ~2,000-item toy (K = 64, M = 4); the paper's full scale is K = 4096, M = 9.
"""
from __future__ import annotations

from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from genretr.data.schema import IMAGE, PAIR, TEXT
from genretr.errors import GenretrError
from genretr.quantizers.residual import ResidualQuantizer
from genretr.training import small_fit

MODALITIES = (IMAGE, TEXT, PAIR)  # first-level codes 0, 1, 2 (GENIUS Fig. 3)
MODALITY_CODES = ("learned", "given", "classifier", "none")  # Table 8's strategies (+ genretr's `given`)


def modality_index(modalities: Sequence[str]) -> torch.Tensor:
    """Modality names → first-level codes (0 image, 1 text, 2 image-text pair)."""
    index = {m: i for i, m in enumerate(MODALITIES)}
    bad = sorted({m for m in modalities if m not in index})
    if bad:
        raise GenretrError(f"unknown item modality {bad}; expected one of {list(MODALITIES)}")
    return torch.tensor([index[m] for m in modalities], dtype=torch.long)


def modality_accuracy(codes, modalities: Sequence[str]) -> float:
    """Fraction of rows whose first code is their modality's index."""
    first = torch.as_tensor(np.asarray(codes))[:, 0]
    return float((first == modality_index(modalities)).float().mean()) if len(first) else 1.0


def modality_agreement(codes, modalities: Sequence[str]) -> float:
    """Fraction of rows whose first code is their modality once codes are matched to modalities one to one
    (the matching that agrees most; Hungarian on the code x modality counts).  For a first level whose codes are
    cluster numbers (``learned``); with named codes (``given``, ``classifier``) it is at least
    `modality_accuracy`."""
    from scipy.optimize import linear_sum_assignment

    first = np.asarray(torch.as_tensor(np.asarray(codes))[:, 0])
    if not len(first):
        return 1.0
    truth = modality_index(modalities).numpy()
    counts = np.zeros((int(first.max()) + 1, len(MODALITIES)), dtype=np.int64)
    np.add.at(counts, (first, truth), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(first))


class Fusion(nn.Module):
    """h(x, y) = λ·x + (1-λ)·y + MLP([x; y]), λ = σ(MLP_λ([x; y])) (Sec. 4.2.1)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.mix = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gate = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xy = torch.cat([x, y], dim=-1)
        lam = torch.sigmoid(self.gate(xy))
        return lam * x + (1 - lam) * y + self.mix(xy)


def info_nce(zq: torch.Tensor, zc: torch.Tensor, tau: float, relevant: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3 over the batch: query i's positive is target i; `relevant[i, j]` (b, b) marks the other targets j that
    are also relevant to query i (another copy of its item, another of its relevant items), which are not negatives."""
    logits = zq @ zc.t() / tau
    if relevant is not None:
        mask = relevant.clone()
        mask.fill_diagonal_(False)
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(zq), device=zq.device))


class ModalityDecoupledQuantizer(L.LightningModule):
    def __init__(self, dim: int, num_levels: int = 4, codebook_size: int = 64, first_level_size: int = 3,
                 shared: bool = False, modality_code: str = "learned", fusion_hidden: int = 256,
                 tau: float = 0.01, beta: float = 100.0, gamma: float = 100.0, use_cl: bool = True,
                 use_rq: bool = True, use_mse: bool = True, decay: float = 0.99, kmeans_init: bool = True,
                 dead_after: int = 20, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        if not (use_cl or use_rq or use_mse):
            raise GenretrError("GENIUS quantizer: at least one of use_cl, use_rq, use_mse must be on")
        if modality_code not in MODALITY_CODES:
            raise GenretrError(f"GENIUS quantizer: modality_code={modality_code!r} is not one of "
                               f"{', '.join(MODALITY_CODES)}")
        if num_levels < 2:
            raise GenretrError(f"GENIUS quantizer: num_levels must be >= 2 (modality + semantics), got {num_levels}")
        if modality_code != "none" and first_level_size != len(MODALITIES):
            raise GenretrError(f"GENIUS quantizer: the modality code has {len(MODALITIES)} values (image, text, "
                               f"image-text pair), got first_level_size={first_level_size}")
        self.save_hyperparameters()
        self.fusion = Fusion(dim, fusion_hidden)
        semantic = [codebook_size] * (num_levels - 1)
        in_quantizer = modality_code in ("learned", "given")  # the modality level is the quantizer's first
        self.quantizer = ResidualQuantizer(dim, ([first_level_size] if in_quantizer else []) + semantic,
                                           shared=shared, update="ema", decay=decay, kmeans_init=kmeans_init,
                                           dead_after=dead_after, fixed_levels=(0,) if modality_code == "given" else ())
        self.classifier = nn.Linear(dim, len(MODALITIES)) if modality_code == "classifier" else None

    @property
    def level_sizes(self) -> list[int]:
        """Codes per level of an identifier: the modality level (unless ``none``), then the semantic levels."""
        hp = self.hparams
        return ([] if hp.modality_code == "none" else [hp.first_level_size]) + [hp.codebook_size] * (hp.num_levels - 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """z = h(x, y) / ||h(x, y)|| of inputs (n, 2, d), x the image part and y the text part (zeros where the
        input has none: `genretr.identifiers.genius.fusion_inputs`); of inputs (n, d), already fused by the
        encoder (precomputed vectors, or callers without the parts), h(v, v), where λ cancels."""
        if x.dim() == 3:
            return F.normalize(self.fusion(x[:, 0], x[:, 1]), dim=-1)
        return F.normalize(self.fusion(x, x), dim=-1)

    def quantize(self, z: torch.Tensor, modality: torch.Tensor, update: bool = False):
        """(ẑ with straight-through gradient, codes (n, len(level_sizes)), losses) of fused vectors z; `modality`
        (the targets' modality index) is read by ``given`` only."""
        fixed = {0: modality} if self.hparams.modality_code == "given" else None
        z_hat, codes, losses = self.quantizer(z, fixed, update=update)
        if self.classifier is not None:
            codes = torch.cat([self.classifier(z.detach()).argmax(1, keepdim=True), codes], 1)
        return z_hat, codes, losses

    def losses(self, query: torch.Tensor, target: torch.Tensor, modality: torch.Tensor,
               relevant: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eq. 8 on a batch of (query vectors, target vectors, target modalities, which targets each query has
        as relevant (b, b); see `info_nce`)."""
        hp = self.hparams
        zq, zc = self.embed(query), self.embed(target)
        zq_hat, _, lq = self.quantize(zq, modality, update=False)
        zc_hat, _, lc = self.quantize(zc, modality, update=self.training)
        out = {"cl": info_nce(zq, zc, hp.tau, relevant), "rq": lq["commitment"] + lc["commitment"],
               "mse": F.mse_loss(zq_hat, zc_hat)}
        out["loss"] = sum(w * out[name] for name, w, on in
                          (("cl", 1.0, hp.use_cl), ("rq", hp.beta, hp.use_rq), ("mse", hp.gamma, hp.use_mse)) if on)
        if self.classifier is not None:  # Table 8: the target's modality from the query and from the target
            out["modality_ce"] = (F.cross_entropy(self.classifier(zq), modality)
                                  + F.cross_entropy(self.classifier(zc), modality))
            out["loss"] = out["loss"] + out["modality_ce"]
        return out

    def training_step(self, batch, batch_idx):
        out = self.losses(*batch)
        for name, value in out.items():
            self.log(f"genius_rq/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss",
                     batch_size=len(batch[0]))
        return out["loss"]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def encode_items(self, vectors: torch.Tensor, modalities: Sequence[str], batch_size: int = 4096) -> torch.Tensor:
        """Codes (n, M) of items on the CPU given their vectors and modality names, each batch on the model's
        device."""
        self.eval()
        mod, device = modality_index(modalities), next(self.parameters()).device
        return torch.cat([self.quantize(self.embed(vectors[s:s + batch_size].to(device)),
                                        mod[s:s + batch_size].to(device))[1].cpu()
                          for s in range(0, len(vectors), batch_size)])

    @torch.no_grad()
    def metrics(self, vectors: torch.Tensor, modalities: Sequence[str], codes: torch.Tensor | None = None,
                batch_size: int = 4096) -> dict:
        """Relative quantization error ||z - ẑ||² / ||z||² of items, usage per level, modality accuracy;
        `codes`: the items' `encode_items` codes when already computed.  Summed a block at a time."""
        self.eval()
        codes = self.encode_items(vectors, modalities, batch_size) if codes is None else codes
        device, err, norm = next(self.parameters()).device, 0.0, 0.0
        for s in range(0, len(vectors), batch_size):
            z = self.embed(vectors[s:s + batch_size].to(device))
            rq = codes[s:s + batch_size, 1:] if self.classifier is not None else codes[s:s + batch_size]
            err += float((z - self.quantizer.decode(rq.to(device))).double().pow(2).sum())
            norm += float(z.double().pow(2).sum())
        usage = [len(torch.unique(codes[:, m])) / k for m, k in enumerate(self.level_sizes)]
        none = self.hparams.modality_code == "none"
        return {"rel_error": err / max(norm, 1e-12), "usage": usage,
                "modality_accuracy": None if none else modality_accuracy(codes, modalities),
                "modality_agreement": None if none else modality_agreement(codes, modalities)}


def fit_modality_decoupled(query_vecs, target_rows: np.ndarray, item_vecs,
                           item_modalities: Sequence[str], *, query_groups: np.ndarray | None = None, seed: int = 0,
                           max_epochs: int = 20, batch_size: int = 256, progress: bool = False, device="cpu",
                           **model_kwargs) -> ModalityDecoupledQuantizer:
    """Train on (query, target item) pairs: `target_rows[j]` is the row in `item_vecs` of pair j's target,
    `query_groups[j]` the index of its query (pairs of one query share it: its other targets are not negatives;
    default: every pair its own query).  `query_vecs` and `item_vecs`: vectors (n, d) or image and text parts
    (n, 2, d) (`ModalityDecoupledQuantizer.embed`), as arrays or as any sized object whose `[index list]` is those
    rows' tensor, read a batch at a time (`genretr.identifiers.genius.FusionRows`).

    Lightning Trainer on `device` (the model comes back on the CPU), no logger or checkpoints; deterministic given
    `seed` on a CPU, caller's RNG untouched.
    """
    items, queries = rows_source(item_vecs), rows_source(query_vecs)
    rows = torch.as_tensor(np.asarray(target_rows, dtype=np.int64))
    if len(queries) != len(rows) or len(queries) == 0:
        raise GenretrError(f"GENIUS quantizer needs query-target pairs: {len(queries)} queries, {len(rows)} targets")
    groups = torch.arange(len(rows)) if query_groups is None else torch.as_tensor(np.asarray(query_groups, np.int64))
    if len(groups) != len(rows):
        raise GenretrError(f"GENIUS quantizer: {len(groups)} query groups for {len(rows)} pairs")
    modality = modality_index(item_modalities)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ModalityDecoupledQuantizer(dim=items[[0]].shape[-1], **model_kwargs)
        # Batches gathered from the item rows (no per-pair copy of the targets); the same order as
        # DataLoader(shuffle=True, generator=...) over a TensorDataset of the pairs.
        shuffle = torch.Generator().manual_seed(seed)  # the loader's and the sampler's, as DataLoader shares it
        batches = BatchSampler(RandomSampler(range(len(rows)), generator=shuffle), batch_size, drop_last=False)
        loader = DataLoader(PairBatches(queries, items, modality, rows, groups), sampler=batches, batch_size=None,
                            generator=shuffle)
        small_fit(model, loader, max_epochs, progress, device=device)
    return model.cpu().eval()


def rows_source(vectors):
    """An array's float32 tensor (no copy when it is one); any other object as it is, its rows asked for a batch at
    a time."""
    if isinstance(vectors, (np.ndarray, torch.Tensor, list, tuple)):
        return torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    return vectors


class PairBatches(Dataset):
    """(query vectors, target item vectors, target modalities, relevance (b, b)) of a list of pair indices:
    relevance[i, j] says whether pair j's target is a relevant item of pair i's query (any pair of that query
    has it), so that `info_nce` does not count it as a negative."""

    def __init__(self, queries, items, modality: torch.Tensor, rows: torch.Tensor,
                 groups: torch.Tensor):
        self.queries, self.items, self.modality, self.rows, self.groups = queries, items, modality, rows, groups
        self.n_items = len(items)
        self.known = torch.unique(groups * self.n_items + rows)  # sorted (query group, item) keys of every pair

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, pairs: list[int]):
        rows, groups = self.rows[pairs], self.groups[pairs]
        keys = groups[:, None] * self.n_items + rows[None, :]  # (b, b): (query group of i, target of j)
        known = self.batch_known(torch.unique(groups))
        found = torch.searchsorted(known, keys).clamp_(max=len(known) - 1)
        return self.queries[pairs], self.items[rows], self.modality[rows], known[found] == keys

    def batch_known(self, groups: torch.Tensor) -> torch.Tensor:
        """The sorted known keys of the query groups `groups` (sorted, distinct): their segments
        [g * n_items, (g + 1) * n_items) of `known`, so that a batch searches its own queries' pairs and not every
        pair (which made an epoch grow as pairs²)."""
        lo = torch.searchsorted(self.known, groups * self.n_items)
        counts = torch.searchsorted(self.known, (groups + 1) * self.n_items) - lo
        starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        return self.known[starts + torch.arange(int(counts.sum()))]
