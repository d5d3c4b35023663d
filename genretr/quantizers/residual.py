"""`ResidualQuantizer`: M codebooks applied to successive residuals.

CART Sec. 3.2.2 and GENIUS Sec. 4.2.3 (Eq. 4-6): r_0 = x, t_i = argmin_k ||r_{i-1} - e_i^k||,
r_i = r_{i-1} - e_i^{t_i}, and x̂ = Σ_i e_i^{t_i}.  The output is x̂ with a straight-through
gradient (x + sg(x̂ - x)), so whatever follows trains the input as if quantization were identity.

Codebook updates (`update=`):
- ``"grad"``: CART Eq. 1, the codebook term ||sg[r] - e||² trains the codewords by gradient;
  the commitment term β·||r - sg[e]||² trains the input.  `losses["loss"]` is their sum.
- ``"ema"``: GENIUS Eq. 7, codewords are exponential moving averages of the residuals
  assigned to them (VQ-VAE, van den Oord et al. 2017, App. A.1): N_k ← γN_k + (1-γ)n_k,
  m_k ← γm_k + (1-γ)Σ r, e_k = m_k / Ñ_k with Laplace-smoothed counts Ñ_k = (N_k + ε)/(N + Kε)·N.
  Only the commitment term carries gradient.
Squared norms are averaged over elements (as `F.mse_loss`), which only rescales α, β, γ.

Initialisation: with `kmeans_init` each codebook is set by k-means on the residuals of the
first training batch at its level (GENIUS Sec. 5.2), so codewords start where the data is.

Dead codes: a code that wins no residual for `dead_after` consecutive update steps is
re-seeded from a random residual of the current batch.  Without this, a code that starts
(or drifts) away from the data never wins the argmin again and so never moves — neither the
EMA nor the codebook loss touches it — and every dead code is a lost identifier value:
fewer distinct IDs, more collisions, more weight on the semantics-free unique token.

Fixed levels: a level listed in `fixed_levels` takes its codes from the caller
(`forward(x, fixed={level: codes})`) instead of the argmin; its codewords still learn (EMA or
gradient) as the mean of the residuals given each code.  GENIUS's modality level uses this.
It is never re-seeded, and a code of it is initialised when it is first seen.

`shared=True` makes levels 1..M-1 share one codebook (GENIUS Table 11 shares all but the
first); level 0 joins it when it has the same size and is not fixed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword (squared Euclidean) for each row of x."""
    d = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)
    return d.argmin(1)


def kmeans(x: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """Greedy k-means++ seeding then Lloyd iterations on x (n, d); returns (k, d) centers.

    With n <= k every point is a center and the rest are jittered copies of random points
    (they will be re-seeded as dead codes if nothing claims them).
    """
    n = len(x)
    if n <= k:
        extra = x[torch.randint(n, (k - n,))]
        jitter = 1e-3 * x.std().clamp_min(1e-6) * torch.randn_like(extra)
        return torch.cat([x, extra + jitter])
    trials = 2 + int(math.log(k))  # greedy k-means++ (as scikit-learn): best of a few candidates per center
    chosen = [int(torch.randint(n, ()))]
    d2 = (x - x[chosen[0]]).pow(2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        candidates = torch.multinomial(probs, trials, replacement=True)
        options = torch.minimum(d2[None], torch.cdist(x[candidates], x).pow(2))
        best = int(options.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d2 = options[best]
    centers = x[chosen].clone()
    for _ in range(iters):
        assign = nearest(x, centers)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        full = counts > 0
        centers[full] = sums[full] / counts[full, None].to(x.dtype)
    return centers


class ResidualQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_sizes: Sequence[int], shared: bool = False, update: str = "ema",
                 decay: float = 0.99, eps: float = 1e-5, beta: float = 0.25, kmeans_init: bool = True,
                 kmeans_iters: int = 10, dead_after: int = 50, fixed_levels: Sequence[int] = ()):
        super().__init__()
        sizes = [int(s) for s in codebook_sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"codebook_sizes must be a non-empty list of positive sizes, got {codebook_sizes}")
        if update not in ("ema", "grad"):
            raise ValueError(f"update must be 'ema' or 'grad', got {update!r}")
        if any(not 0 <= m < len(sizes) for m in fixed_levels):
            raise ValueError(f"fixed_levels {list(fixed_levels)} out of range for {len(sizes)} levels")
        self.dim, self.sizes, self.update, self.decay, self.eps, self.beta = dim, sizes, update, decay, eps, beta
        self.kmeans_init, self.kmeans_iters, self.dead_after = kmeans_init, kmeans_iters, dead_after
        self.fixed_levels = tuple(sorted(set(int(m) for m in fixed_levels)))
        self.level_book = self._assign_books(sizes, shared, self.fixed_levels)
        book_sizes = [sizes[self.level_book.index(b)] for b in range(max(self.level_book) + 1)]
        self.book_fixed = [any(self.level_book[m] == b for m in self.fixed_levels) for b in range(len(book_sizes))]
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(k, dim) / dim ** 0.5, requires_grad=update == "grad") for k in book_sizes])
        for b, k in enumerate(book_sizes):
            if self.book_fixed[b]:  # a fixed code never seen in training keeps a zero codeword
                self.codebooks[b].data.zero_()
            self.register_buffer(f"ema_size_{b}", torch.ones(k))
            self.register_buffer(f"ema_sum_{b}", self.codebooks[b].detach().clone())
            self.register_buffer(f"unused_{b}", torch.zeros(k, dtype=torch.long))
            # Fixed books are initialised code by code (when first seen); learned books all at once.
            self.register_buffer(f"ready_{b}", torch.full((k,), not (kmeans_init or self.book_fixed[b])))

    @staticmethod
    def _assign_books(sizes, shared, fixed) -> list[int]:
        if not shared:
            return list(range(len(sizes)))
        rest = sizes[1:]
        if len(set(rest)) > 1:
            raise ValueError(f"shared=True needs levels 1.. of one size, got {sizes}")
        if any(m > 0 for m in fixed):
            raise ValueError("shared=True allows only level 0 to be fixed")
        joins = bool(rest) and sizes[0] == rest[0] and 0 not in fixed
        return [0] * len(sizes) if joins else [0] + [1] * len(rest)

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def _buf(self, name: str, b: int) -> torch.Tensor:
        return getattr(self, f"{name}_{b}")

    def forward(self, x: torch.Tensor, fixed: dict[int, torch.Tensor] | None = None, update: bool | None = None):
        """x (n, dim) → (x̂ with straight-through gradient, codes (n, M) long, losses dict).

        `update` (default: `self.training`) runs k-means init, EMA and dead-code steps on this batch.
        losses: "codebook" Σ||sg[r] - e||² (zero under EMA), "commitment" Σ||r - sg[e]||², and
        "loss" = codebook + β·commitment (CART Eq. 1).
        """
        update = self.training if update is None else update
        fixed = self._check_fixed(fixed, len(x))
        r, quantized, codes, seen = x, torch.zeros_like(x), [], {}
        codebook_loss = commitment = x.new_zeros(())
        for m, b in enumerate(self.level_book):
            rd = r.detach()
            if update:
                self._initialise(b, rd, fixed.get(m))
            codebook = self.codebooks[b]
            idx = fixed[m] if m in fixed else nearest(rd, codebook.detach())
            e = codebook[idx]
            if self.update == "grad":
                codebook_loss = codebook_loss + F.mse_loss(e, rd)
            commitment = commitment + F.mse_loss(r, e.detach())
            quantized = quantized + e.detach()
            r = r - e.detach()
            codes.append(idx)
            seen.setdefault(b, []).append((rd, idx))
        if update:
            for b, batches in seen.items():
                self._update_book(b, torch.cat([s for s, _ in batches]), torch.cat([i for _, i in batches]))
        losses = {"codebook": codebook_loss, "commitment": commitment,
                  "loss": codebook_loss + self.beta * commitment}
        return x + (quantized - x).detach(), torch.stack(codes, 1), losses

    @torch.no_grad()
    def encode(self, x: torch.Tensor, fixed: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward(x, fixed, update=False)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Σ_i e_i^{t_i} for codes (n, M)."""
        return sum(self.codebooks[b][codes[:, m]] for m, b in enumerate(self.level_book))

    def usage(self, codes: torch.Tensor) -> list[float]:
        """Per level, the fraction of its codebook used by `codes`."""
        return [len(torch.unique(codes[:, m])) / k for m, k in enumerate(self.sizes)]

    def _check_fixed(self, fixed, n: int) -> dict[int, torch.Tensor]:
        fixed = dict(fixed or {})
        if set(fixed) != set(self.fixed_levels):
            raise ValueError(f"codes for fixed levels {list(self.fixed_levels)} are required, got {sorted(fixed)}")
        for m, c in fixed.items():
            c = torch.as_tensor(c, dtype=torch.long, device=self.codebooks[0].device)
            if c.shape != (n,) or (n and (c.min() < 0 or c.max() >= self.sizes[m])):
                raise ValueError(f"fixed codes of level {m} must be {n} values in [0, {self.sizes[m]})")
            fixed[m] = c
        return fixed

    @torch.no_grad()
    def _initialise(self, b: int, r: torch.Tensor, idx: torch.Tensor | None) -> None:
        ready, codebook = self._buf("ready", b), self.codebooks[b]
        if bool(ready.all()):
            return
        if idx is None:  # a learned book: k-means on this level's residuals of the first batch
            new = torch.ones_like(ready)
            centers = kmeans(r, len(ready), self.kmeans_iters)
        else:  # a fixed book: each code starts at the mean of the residuals given it
            counts = torch.bincount(idx, minlength=len(ready))
            new = (counts > 0) & ~ready
            centers = torch.zeros_like(codebook).index_add_(0, idx, r) / counts.clamp_min(1)[:, None]
        codebook.data[new] = centers[new]
        self._buf("ema_sum", b)[new] = centers[new]
        self._buf("ema_size", b)[new] = 1.0
        ready |= new

    @torch.no_grad()
    def _update_book(self, b: int, r: torch.Tensor, idx: torch.Tensor) -> None:
        codebook = self.codebooks[b]
        k = len(codebook)
        counts = torch.bincount(idx, minlength=k).to(r.dtype)
        if self.update == "ema":
            size, total = self._buf("ema_size", b), self._buf("ema_sum", b)
            size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            total.mul_(self.decay).add_(torch.zeros_like(total).index_add_(0, idx, r), alpha=1 - self.decay)
            n = size.sum()
            smoothed = (size + self.eps) / (n + k * self.eps) * n
            codebook.data.copy_(total / smoothed[:, None])
        if self.dead_after <= 0 or self.book_fixed[b]:
            return
        unused = self._buf("unused", b)
        unused.add_(1).masked_fill_(counts > 0, 0)
        dead = unused >= self.dead_after
        if dead.any():
            seeds = r[torch.randint(len(r), (int(dead.sum()),), device=r.device)]
            codebook.data[dead] = seeds
            self._buf("ema_sum", b)[dead] = seeds
            self._buf("ema_size", b)[dead] = 1.0
            unused[dead] = 0
