"""LoRA (Hu et al., 2021): a frozen linear layer plus a trainable low-rank update.

    y = W x + (alpha / r) * B A dropout(x),   A: (r, d_in) ~ Kaiming-uniform,  B: (d_out, r) = 0,

so training starts from the pretrained function exactly.  `apply_lora` swaps every `nn.Linear` whose
name ends in one of `target_modules` (outside `exclude_prefixes`, e.g. the vision tower) for a
`LoRALinear` and freezes everything else; the adapters stay float32 whatever the base dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from genretr.errors import GenretrError


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise GenretrError(f"lora.rank must be >= 1, got {rank}")
        self.base, self.rank, self.scaling = base, int(rank), float(alpha) / int(rank)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        base.requires_grad_(False)

    # HF code sometimes reads a projection's weight (dtype/device checks): the frozen base answers.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t() @ self.lora_B.t()
        return self.base(x) + (update * self.scaling).to(x.dtype)


def apply_lora(model: nn.Module, rank: int, alpha: float, target_modules, dropout: float = 0.0,
               exclude_prefixes=()) -> list[str]:
    """Freeze `model` and wrap the matching linear layers in place; returns the wrapped names."""
    targets, excluded = tuple(target_modules), tuple(exclude_prefixes)
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.split(".")[-1] in targets and not n.startswith(excluded)]
    if not names:
        raise GenretrError(f"lora.target_modules {list(targets)} matched no linear layer outside {list(excluded)}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]
