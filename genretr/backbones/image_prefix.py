"""`ImagePrefixDecoder`: a `T5PrefixDecoder` that reads the image itself, for captioners that see pixels.

The GRACE captioner reads an item's embedding (one vector, `genretr.captioner`); SSID's MLLM looks at the
image (SSID Sec. III-E).  This decoder is the offline vision stand-in: `SmallCNN`'s conv trunk, pooled to a
`grid` x `grid` map of `cell_dim`-channel cells (a few visual tokens that keep where things are), flattened
and L2-normalised into the prefix MLP (GENIUS Eq. 9), trained end to end with the caption loss.  Queries are
(N, H, W, 3) uint8 images (prefix input only: a captioner reads no query tokens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.encoders.towers import SmallCNN


class ImagePrefixDecoder(T5PrefixDecoder):
    def __init__(self, vocab_size: int, cnn_width: int = 16, grid: int = 4, cell_dim: int = 16, **decoder):
        decoder.pop("input_dim", None)
        super().__init__(vocab_size=vocab_size, input_dim=grid * grid * cell_dim, **decoder)
        self.save_hyperparameters()
        self.trunk = SmallCNN(width=cnn_width).features
        self.cells = nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Conv2d(cnn_width * 8, cell_dim, 1))

    def image_vector(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, grid * grid * cell_dim) unit vectors."""
        x = images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.25)
        return F.normalize(self.cells(self.trunk(x)).flatten(1), dim=-1)

    def encode(self, queries):
        images = queries["z"] if isinstance(queries, dict) else queries
        return super().encode(self.image_vector(images) if images.ndim == 4 else images)
