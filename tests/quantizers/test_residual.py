"""genretr.quantizers.residual: ResidualQuantizer and kmeans."""
import pytest
import torch

from genretr.quantizers.residual import ResidualQuantizer, kmeans, nearest


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def set_codebook(rq, b, values):
    values = torch.as_tensor(values, dtype=torch.float32)
    rq.codebooks[b].data.copy_(values)
    getattr(rq, f"ema_sum_{b}").copy_(values)
    getattr(rq, f"ema_size_{b}").fill_(1.0)
    getattr(rq, f"ready_{b}").fill_(True)


def grid_data():
    """x = A[i] + B[j]: four far centers A plus three small zero-mean offsets B (all 12 combinations, 5 times)."""
    A = torch.tensor([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
    B = torch.tensor([[1.0, 0.5], [-1, 0.5], [0, -1]])
    x = (A[:, None] + B[None]).reshape(-1, 2).repeat(5, 1)
    return A, B, x


def test_shapes_codes_and_decode():
    rq = ResidualQuantizer(8, [4, 6, 5]).eval()
    x = torch.randn(20, 8)
    q, codes, losses = rq(x)
    assert q.shape == x.shape and codes.shape == (20, 3) and codes.dtype == torch.long
    for m, k in enumerate([4, 6, 5]):
        assert 0 <= codes[:, m].min() and codes[:, m].max() < k
    assert torch.allclose(q, rq.decode(codes), atol=1e-5)
    assert torch.equal(rq.encode(x), codes)
    assert set(losses) == {"codebook", "commitment", "loss"}


def test_levels_quantize_successive_residuals_greedily():
    rq = ResidualQuantizer(6, [5, 5, 5]).eval()
    x = torch.randn(30, 6)
    codes = rq.encode(x)
    r = x.clone()
    for m in range(3):
        expect = ((r[:, None] - rq.codebooks[m][None]) ** 2).sum(-1).argmin(1)
        assert torch.equal(codes[:, m], expect)
        r = r - rq.codebooks[m][expect]


def test_straight_through_gradient():
    rq = ResidualQuantizer(8, [4, 4]).eval()
    x = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(10, 8)
    q, _, _ = rq(x)
    (q * w).sum().backward()
    assert torch.allclose(x.grad, w)


def test_grad_update_trains_codebook_ema_does_not():
    x = torch.randn(32, 4, requires_grad=True)
    grad_rq = ResidualQuantizer(4, [4, 4], update="grad", beta=0.25).train()
    _, _, losses = grad_rq(x)
    assert torch.allclose(losses["loss"], losses["codebook"] + 0.25 * losses["commitment"])
    losses["loss"].backward()
    assert all(cb.grad is not None and cb.grad.abs().sum() > 0 for cb in grad_rq.codebooks)
    assert x.grad.abs().sum() > 0  # the commitment term trains the input
    ema_rq = ResidualQuantizer(4, [4, 4], update="ema").train()
    _, _, losses = ema_rq(x)
    assert float(losses["codebook"]) == 0.0
    assert not any(cb.requires_grad for cb in ema_rq.codebooks)


def test_kmeans_init_on_first_batch_per_level_residuals():
    A, B, x = grid_data()
    rq = ResidualQuantizer(2, [4, 3], update="ema", dead_after=0).train()
    rq(x)  # first batch: level 1 k-means on x, level 2 k-means on x - e_1
    for book, centers in ((0, A), (1, B)):
        d = torch.cdist(centers, rq.codebooks[book].detach()).min(1).values
        assert d.max() < 1e-3, (book, rq.codebooks[book])
    rq.eval()
    assert torch.allclose(rq.decode(rq.encode(x)), x, atol=1e-3)
    assert all(bool(getattr(rq, f"ready_{b}").all()) for b in range(2))


def test_kmeans_function():
    _, _, x = grid_data()
    c = kmeans(x, 12)
    assert c.shape == (12, 2) and (x - c[nearest(x, c)]).abs().max() < 1e-4
    few = torch.randn(3, 5)
    c = kmeans(few, 7)  # fewer points than centers: every point is a center
    assert c.shape == (7, 5) and torch.equal(c[:3], few)


def test_ema_moves_codewords_toward_assigned_means():
    rq = ResidualQuantizer(2, [2], update="ema", decay=0.9, kmeans_init=False, dead_after=0).train()
    set_codebook(rq, 0, [[0.0, 0.0], [10.0, 10.0]])
    x = torch.tensor([1.0, 2.0]) + 0.1 * torch.randn(64, 2)
    mean = x.mean(0)
    before = (rq.codebooks[0][0] - mean).norm()
    rq(x)
    after = (rq.codebooks[0][0] - mean).norm()
    assert after < before
    for _ in range(60):
        rq(x)
    assert torch.allclose(rq.codebooks[0][0], mean, atol=1e-3)
    assert (rq.codebooks[0][1] - torch.tensor([10.0, 10.0])).norm() < 1.0  # unassigned: not pulled to the data
    rq.eval()
    frozen = rq.codebooks[0].detach().clone()
    rq(x)  # eval mode: no updates
    assert torch.equal(rq.codebooks[0], frozen)


def test_dead_codes_are_reseeded_from_batch_residuals():
    x = 0.1 * torch.randn(40, 2)
    rq = ResidualQuantizer(2, [4], update="ema", kmeans_init=False, dead_after=3).train()
    set_codebook(rq, 0, [[0.0, 0.0], [100, 100], [-100, 100], [100, -100]])
    rq(x)
    rq(x)
    assert (rq.codebooks[0][1:].abs() >= 99).all()  # unused for 2 steps: still where they were
    rq(x)  # third unused step: re-seeded
    seeded = rq.codebooks[0][1:].detach()
    assert all(((x - s).abs().sum(1) < 1e-6).any() for s in seeded)
    assert (getattr(rq, "unused_0")[1:] == 0).all()
    never = ResidualQuantizer(2, [4], update="ema", kmeans_init=False, dead_after=0).train()
    set_codebook(never, 0, [[0.0, 0.0], [100, 100], [-100, 100], [100, -100]])
    for _ in range(5):
        never(x)
    assert (never.codebooks[0][1:].abs() >= 99).all()


def test_shared_codebooks():
    rq = ResidualQuantizer(4, [3, 5, 5, 5], shared=True)
    assert rq.level_book == [0, 1, 1, 1] and len(rq.codebooks) == 2
    same = ResidualQuantizer(4, [5, 5, 5], shared=True)
    assert same.level_book == [0, 0, 0] and len(same.codebooks) == 1
    fixed_first = ResidualQuantizer(4, [5, 5, 5], shared=True, fixed_levels=(0,))
    assert fixed_first.level_book == [0, 1, 1]
    assert ResidualQuantizer(4, [5, 5, 5]).level_book == [0, 1, 2]
    with pytest.raises(ValueError):
        ResidualQuantizer(4, [3, 5, 6], shared=True)
    x = torch.randn(16, 4)
    codes = same.eval().encode(x)
    assert torch.allclose(same.decode(codes), sum(same.codebooks[0][codes[:, m]] for m in range(3)))


def test_fixed_level_takes_codes_from_outside_and_learns_their_means():
    rq = ResidualQuantizer(4, [3, 8], update="ema", fixed_levels=(0,)).train()
    labels = torch.arange(60) % 3
    x = torch.randn(60, 4) + 5 * torch.eye(4)[labels]
    _, codes, _ = rq(x, fixed={0: labels})
    assert torch.equal(codes[:, 0], labels)
    for c in range(3):  # initialised at the mean of the residuals given each code, kept there by EMA
        assert torch.allclose(rq.codebooks[0][c], x[labels == c].mean(0), atol=1e-3)
    assert torch.equal(rq.eval().encode(-x, fixed={0: labels})[:, 0], labels)  # not the nearest: the given code
    with pytest.raises(ValueError, match="fixed levels"):
        rq(x)
    with pytest.raises(ValueError, match="level 0"):
        rq(x, fixed={0: labels + 1})
    with pytest.raises(ValueError):
        ResidualQuantizer(4, [3, 8], fixed_levels=(2,))


def test_fixed_codes_seen_late_are_initialised_when_first_seen():
    rq = ResidualQuantizer(2, [3, 4], update="ema", fixed_levels=(0,), dead_after=1).train()
    x = torch.randn(10, 2) + 3
    rq(x, fixed={0: torch.zeros(10, dtype=torch.long)})
    assert (rq.codebooks[0][1:] == 0).all() and not getattr(rq, "ready_0")[1:].any()
    rq(x - 6, fixed={0: torch.ones(10, dtype=torch.long)})  # dead_after=1 never re-seeds a fixed level
    assert torch.allclose(rq.codebooks[0][1], (x - 6).mean(0), atol=1e-3)
    assert (rq.codebooks[0][2] == 0).all()
