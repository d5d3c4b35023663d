"""`T5PrefixDecoder`'s training step: GENIUS's query augmentation (Sec. 4.3.2, Eq. 11)."""
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.identifiers.base import EOS


def decoder(alpha: float) -> T5PrefixDecoder:
    torch.manual_seed(0)
    return T5PrefixDecoder(vocab_size=8, input_dim=6, d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0,
                           prefix_len=2, prefix_hidden=16, query_mix_alpha=alpha)


def trained_on(m: T5PrefixDecoder, batch: dict) -> torch.Tensor:
    """The query vectors one training step feeds the decoder."""
    seen = []
    m.forward = lambda z, labels: seen.append(z) or torch.zeros(())
    m.log = lambda *args, **kwargs: None
    m.training_step(batch, 0)
    return seen[0]


def test_query_augmentation_mixes_each_query_toward_its_target():
    """z' = mu z_q + (1 - mu) z_c with one mu ~ Beta(alpha, alpha) per sample; alpha 0 trains on z_q itself."""
    g = torch.Generator().manual_seed(1)
    zq, zc = torch.randn(256, 6, generator=g), torch.randn(256, 6, generator=g)
    batch = {"z": zq, "target_z": zc, "labels": torch.tensor([[2, EOS]] * 256)}
    assert torch.equal(trained_on(decoder(0.0), batch), zq)
    z = trained_on(decoder(2.0), batch)
    mu = ((z - zc) * (zq - zc)).sum(1) / (zq - zc).pow(2).sum(1)  # where z' lies on the segment from z_c to z_q
    assert torch.allclose(z, mu[:, None] * zq + (1 - mu[:, None]) * zc, atol=1e-5)  # on it: one mu per row
    assert (mu > 0).all() and (mu < 1).all()
    assert abs(float(mu.mean()) - 0.5) < 0.05 and abs(float(mu.std()) - 0.2236) < 0.05  # Beta(2, 2): 0.5, 1/sqrt(20)
