"""The swappable contrastive objectives against slow, literal implementations of TCL.md §A.2 (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tcl.losses import ContrastiveObjective, contrastive_loss

OBJECTIVES = ["infonce", "debiased_neg", "debiased_pos"]


def reference_row(s: list[float], p: int, t: float, objective: str, tau_plus: float, include_self: bool = True):
    """One row, written exactly as the formulas read (e_j = exp(s_j / t)); only safe for moderate t."""
    e = [math.exp(x / t) for x in s]
    e_p = e[p]
    negatives = [v for j, v in enumerate(e) if j != p]
    n = len(negatives)
    if objective == "infonce":
        return -math.log(e_p / (e_p + sum(negatives)))
    if objective == "debiased_neg":
        g = max((sum(negatives) - tau_plus * n * e_p) / (1 - tau_plus), n * math.exp(-1 / t))
        return -math.log(e_p / (e_p + g))
    e_self = math.exp(1 / t) if include_self else 0.0
    p_all = (sum(negatives) + e_p + e_self) / (n + 2 if include_self else n + 1)
    p_neg = sum(negatives) / n
    num = max(p_all - (1 - tau_plus) * p_neg, tau_plus * math.exp(-1 / t))
    den = num + n * tau_plus * p_neg
    return -math.log(num / den)


def random_sim(rows, cols, seed=0, dim=16):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(rows, dim, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(cols, dim, generator=g, dtype=torch.float64), dim=1)
    return a @ b.T


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("t", [0.07, 0.2, 0.5])
@pytest.mark.parametrize("tau_plus", [0.05, 0.1, 0.3])
def test_matches_literal_formula(objective, t, tau_plus):
    sim = random_sim(6, 11, seed=int(t * 100) + int(tau_plus * 100))
    sim[:, 3] = 0.9  # make some positives clearly positive so both branches of the floors are exercised
    positive = torch.tensor([0, 3, 5, 3, 10, 1])
    expected = sum(reference_row(sim[i].tolist(), int(positive[i]), t, objective, tau_plus)
                   for i in range(6)) / 6
    got = contrastive_loss(sim, positive, t, ContrastiveObjective(objective, tau_plus))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_debiased_pos_without_self_term():
    sim = random_sim(5, 9, seed=5)
    positive = torch.arange(5)
    expected = sum(reference_row(sim[i].tolist(), i, 0.2, "debiased_pos", 0.1, include_self=False)
                   for i in range(5)) / 5
    got = contrastive_loss(sim, positive, 0.2, ContrastiveObjective("debiased_pos", 0.1, include_self=False))
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_floor_branches_are_both_reached():
    """A confident positive hits the L_Neg floor; a poor one does not (the reference agrees in both cases)."""
    sim = torch.tensor([[0.99, -0.5, -0.4, -0.6], [-0.3, 0.5, 0.6, 0.4]], dtype=torch.float64)
    positive = torch.tensor([0, 0])
    for row in range(2):
        got = contrastive_loss(sim[row:row + 1], positive[row:row + 1], 0.1, ContrastiveObjective("debiased_neg", 0.3))
        assert got.item() == pytest.approx(reference_row(sim[row].tolist(), 0, 0.1, "debiased_neg", 0.3), rel=1e-9)


def test_debiased_neg_with_zero_tau_plus_is_infonce():
    sim = random_sim(8, 20, seed=2)
    positive = torch.randint(20, (8,), generator=torch.Generator().manual_seed(0))
    for t in (0.001, 0.05, 0.5):
        assert torch.allclose(contrastive_loss(sim, positive, t, ContrastiveObjective("debiased_neg", 0.0)),
                              contrastive_loss(sim, positive, t, ContrastiveObjective("infonce")), rtol=1e-12)


def test_infonce_is_cross_entropy():
    sim = random_sim(7, 13, seed=3)
    positive = torch.arange(7)
    assert torch.allclose(contrastive_loss(sim, positive, 0.1), F.cross_entropy(sim / 0.1, positive))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradcheck(objective):
    sim = random_sim(3, 6, seed=4).requires_grad_()
    positive = torch.tensor([0, 2, 5])
    chosen = ContrastiveObjective(objective, 0.1)
    assert torch.autograd.gradcheck(lambda s: contrastive_loss(s, positive, 0.2, chosen), (sim,))


def test_gradcheck_through_temperature():
    sim = random_sim(3, 6, seed=6)
    temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    for name in OBJECTIVES:
        objective = ContrastiveObjective(name, 0.1)
        assert torch.autograd.gradcheck(lambda t: contrastive_loss(sim, torch.arange(3), t, objective),
                                        (temperature,))


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stable_at_smallest_temperature_with_65536_negatives(objective, dtype):
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(4, 32, generator=g), dim=1)
    columns = F.normalize(torch.randn(65536, 32, generator=g), dim=1)
    columns[:4] = anchors + 0.01 * torch.randn(4, 32, generator=g)
    sim = (anchors @ F.normalize(columns, dim=1).T).to(dtype).requires_grad_()
    loss = contrastive_loss(sim, torch.arange(4), 0.001, ContrastiveObjective(objective, 0.1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sim.grad.float()).all()
    # A dissimilar positive at t = 0.001 gives a huge but finite loss instead of inf/NaN.
    bad = (anchors @ F.normalize(columns, dim=1).T).roll(1, dims=1).requires_grad_()
    far = contrastive_loss(bad, torch.arange(4), 0.001, ContrastiveObjective(objective, 0.1))
    far.backward()
    assert torch.isfinite(far) and torch.isfinite(bad.grad).all()


def test_distillation_mixes_soft_targets():
    sim = random_sim(4, 9, seed=7)
    soft = torch.softmax(random_sim(4, 9, seed=8) / 0.1, dim=1)
    for name in OBJECTIVES:
        objective = ContrastiveObjective(name)
        plain = torch.stack([contrastive_loss(sim[i:i + 1], torch.tensor([i]), 0.1, objective) for i in range(4)])
        ce = -(soft * torch.log_softmax(sim / 0.1, dim=1)).sum(1)
        expected = (0.6 * plain + 0.4 * ce).mean()
        got = contrastive_loss(sim, torch.arange(4), 0.1, objective, soft_targets=soft, alpha=0.4)
        assert got.item() == pytest.approx(expected.item(), rel=1e-9)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="at least one negative"):
        contrastive_loss(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match=r"sim must be \[B, M\]"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="unknown contrastive objective"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0.1, ContrastiveObjective("nce"))
    with pytest.raises(TypeError, match=r"pass ContrastiveObjective\('debiased_pos'"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0.1, "debiased_pos")
