"""`T5PrefixDecoder`'s training step: GENIUS's query augmentation (Sec. 4.3.2, Eq. 11)."""
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.identifiers.base import EOS


def decoder(alpha: float, query_mix: str = "paper") -> T5PrefixDecoder:
    torch.manual_seed(0)
    return T5PrefixDecoder(vocab_size=8, input_dim=6, d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0,
                           prefix_len=2, prefix_hidden=16, query_mix_alpha=alpha, query_mix=query_mix)


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


def test_the_authors_code_mixes_each_dimension_with_square_root_weights():
    """query_mix=authors_code: z' = sqrt(mu) z_q + sqrt(1 - mu) z_c with mu ~ Beta(2, 2) drawn per dimension."""
    g = torch.Generator().manual_seed(2)
    zq, zc = torch.randn(256, 6, generator=g), torch.randn(256, 6, generator=g)
    batch = {"z": zq, "target_z": zc, "labels": torch.tensor([[2, EOS]] * 256)}
    z = trained_on(decoder(2.0, "authors_code"), batch)
    # per entry, z = sqrt(mu) q + sqrt(1 - mu) c: solve for mu on a grid and check a solution exists in (0, 1)
    grid = torch.linspace(0.001, 0.999, 999)
    fit = (grid.sqrt()[:, None, None] * zq + (1 - grid).sqrt()[:, None, None] * zc - z).abs().min(0)
    assert float(fit.values.max()) < 0.02
    mu = grid[fit.indices]
    assert float(mu.std(1).mean()) > 0.1  # mu differs between the dimensions of one row
    assert abs(float(mu.mean()) - 0.5) < 0.05
    assert not torch.allclose(z, trained_on(decoder(2.0), batch))
