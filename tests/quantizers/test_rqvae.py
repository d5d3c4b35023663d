"""genretr.quantizers.rqvae: CART's RQ-VAE (Sec. 3.2.2, Eq. 1; App. C)."""
import numpy as np
import pytest
import torch
from torch import nn

from genretr.quantizers.rqvae import RQVAE, fit_rqvae, warmup_inverse_sqrt

SMALL = dict(hidden=[32, 16], latent_dim=8, num_codebooks=2, codebook_size=8)


def toy(n=96, d=12, seed=0):
    g = np.random.default_rng(seed)
    centers = g.normal(size=(6, d))
    return (centers[g.integers(6, size=n)] + 0.1 * g.normal(size=(n, d))).astype(np.float32)


def test_architecture_is_cart_appendix_c():
    m = RQVAE(input_dim=100)
    linear = lambda seq: [(l.in_features, l.out_features) for l in seq if isinstance(l, nn.Linear)]
    assert linear(m.encoder) == [(100, 512), (512, 256), (256, 128), (128, 64)]
    assert linear(m.decoder) == [(64, 128), (128, 256), (256, 512), (512, 100)]
    assert sum(isinstance(l, nn.ELU) for l in m.encoder) == 3 and not isinstance(m.encoder[-1], nn.ELU)
    assert m.quantizer.sizes == [128, 128] and m.quantizer.level_book == [0, 1]  # 2 x 128, not shared
    assert m.quantizer.update == "grad"


def test_loss_is_recon_plus_alpha_commitment():
    torch.manual_seed(0)
    m = RQVAE(input_dim=12, alpha=0.7, beta=0.3, **SMALL).eval()
    x = torch.from_numpy(toy())
    out = m.losses(x)
    recon, _, q = m(x)
    assert torch.allclose(out["recon"], ((recon - x) ** 2).mean())
    assert torch.allclose(q["loss"], q["codebook"] + 0.3 * q["commitment"])
    assert torch.allclose(out["loss"], out["recon"] + 0.7 * out["commit"])


def test_learning_rate_warms_up_then_decays_as_inverse_sqrt():
    f = lambda s: warmup_inverse_sqrt(s, 10, 0.01)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.505) and f(10) == pytest.approx(1.0)
    assert f(40) == pytest.approx(0.5) and f(1000) == pytest.approx(0.1)
    m = RQVAE(input_dim=12, lr=1e-3, init_lr=1e-6, warmup_steps=4, **SMALL)
    conf = m.configure_optimizers()
    sched, opt = conf["lr_scheduler"]["scheduler"], conf["optimizer"]
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6) and lrs[4] == pytest.approx(1e-3) and lrs[7] < lrs[4]


def test_loss_decreases_on_a_toy():
    torch.manual_seed(0)
    m = RQVAE(input_dim=12, lr=3e-3, warmup_steps=1, **SMALL).train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    x = torch.from_numpy(toy())
    losses = []
    for _ in range(150):
        loss = m.losses(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10]), (losses[:3], losses[-3:])


def test_fit_rqvae_returns_codes_and_is_deterministic():
    x = toy()
    kw = dict(max_epochs=3, batch_size=32, warmup_epochs=1, **SMALL)
    rng_before = torch.get_rng_state()
    model, codes = fit_rqvae(x, seed=3, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    with pytest.raises(RuntimeError, match="not attached"):  # no trainer, so not its loader's copy of x either
        model.trainer
    assert codes.shape == (len(x), 2) and codes.min() >= 0 and codes.max() < 8
    assert np.array_equal(codes, model.encode(torch.from_numpy(x)).numpy())
    again_model, again = fit_rqvae(x, seed=3, **kw)
    assert np.array_equal(codes, again)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again_model.state_dict().values()))
    other_model, _ = fit_rqvae(x, seed=4, **kw)
    assert not torch.equal(model.encoder[0].weight, other_model.encoder[0].weight)
    metrics = model.metrics(torch.from_numpy(x))
    assert set(metrics) == {"recon_mse", "recon_rel_error", "latent_rel_error", "usage"}
    assert len(metrics["usage"]) == 2 and all(0 < u <= 1 for u in metrics["usage"])


def test_metrics_summed_in_blocks_equal_one_block():
    x = torch.from_numpy(toy())
    model, _ = fit_rqvae(x.numpy(), seed=0, max_epochs=1, batch_size=32, warmup_epochs=1, **SMALL)
    one, blocks = model.metrics(x, batch_size=len(x)), model.metrics(x, batch_size=7)
    assert blocks["usage"] == one["usage"]
    for k in ("recon_mse", "recon_rel_error", "latent_rel_error"):
        assert blocks[k] == pytest.approx(one[k], rel=1e-6) and one[k] > 0
    with torch.no_grad():  # the relative error against the spread around the mean of all of x, computed whole
        recon = model.eval()(x)[0].double()
    spread = (x.double() - x.double().mean(0)).pow(2).sum()
    assert blocks["recon_rel_error"] == pytest.approx(float((x.double() - recon).pow(2).sum() / spread), rel=1e-6)
    constant = torch.ones(20, x.shape[1])
    assert model.metrics(constant, batch_size=7)["recon_rel_error"] is None  # no spread to compare with
