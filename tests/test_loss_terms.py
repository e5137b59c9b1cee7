"""CMA, IMC, LMI, ITM sampling, MLM and diagnostics against slow loop implementations and edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from tcl.losses.contrastive_terms import MomentumTargets, cma_loss, imc_loss, lmi_loss, pool_image_regions
from tcl.losses.diagnostics import alignment, uniformity
from tcl.losses.itm import hard_negative_weights, itm_loss, sample_hard_negatives
from tcl.losses.mlm import IGNORE, mask_tokens, mlm_loss
from tcl.losses.objectives import ContrastiveObjective

from test_objectives import reference_row


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_cma_against_loop_with_distillation():
    B, Q, t, alpha = 4, 6, 0.1, 0.4
    image, text = unit(B, 8, seed=1), unit(B, 8, seed=2)
    image_m, text_m = unit(B, 8, seed=3), unit(B, 8, seed=4)
    image_all, text_all = torch.cat([image_m, unit(Q, 8, seed=5)]), torch.cat([text_m, unit(Q, 8, seed=6)])
    i2t, t2i = cma_loss(image, text, image_all, text_all, t, distill=MomentumTargets(image_m, text_m, alpha))

    def loop(anchor, anchor_m, columns):
        total = 0.0
        for b in range(B):
            logits = [float(anchor[b] @ c) / t for c in columns]
            logits_m = [float(anchor_m[b] @ c) / t for c in columns]
            z = math.log(sum(math.exp(x) for x in logits))
            zm = math.log(sum(math.exp(x) for x in logits_m))
            soft = [math.exp(x - zm) for x in logits_m]
            targets = [alpha * soft[j] + (1 - alpha) * (j == b) for j in range(len(columns))]
            total += -sum(targets[j] * (logits[j] - z) for j in range(len(columns)))
        return total / B

    assert i2t.item() == pytest.approx(loop(image, image_m, text_all), rel=1e-9)
    assert t2i.item() == pytest.approx(loop(text, text_m, image_all), rel=1e-9)


def test_cma_distills_only_with_positive_alpha():
    """The trainer passes MomentumTargets at α = 0 (ramp start, loss.distill off): that must be no distillation."""
    image, text, image_m, text_m = (unit(3, 8, seed=seed) for seed in range(1, 5))
    image_all, text_all = torch.cat([image_m, unit(2, 8, seed=5)]), torch.cat([text_m, unit(2, 8, seed=6)])
    plain = cma_loss(image, text, image_all, text_all, 0.1)
    off = cma_loss(image, text, image_all, text_all, 0.1, distill=MomentumTargets(image_m, text_m, 0.0))
    on = cma_loss(image, text, image_all, text_all, 0.1, distill=MomentumTargets(image_m, text_m, 0.4))
    assert all(torch.equal(a, b) for a, b in zip(plain, off)) and not torch.equal(plain[0], on[0])


@pytest.mark.parametrize("objective", ["infonce", "debiased_neg", "debiased_pos"])
def test_imc_rows_use_momentum_batch_and_queue(objective):
    B, t = 3, 0.2
    image, text = unit(B, 8, seed=1), unit(B, 8, seed=2)
    image_all, text_all = unit(B + 5, 8, seed=3), unit(B + 5, 8, seed=4)
    i2i, t2t = imc_loss(image, text, image_all, text_all, t, ContrastiveObjective(objective, 0.1))
    expected_i = sum(reference_row((image_all @ image[b]).tolist(), b, t, objective, 0.1) for b in range(B)) / B
    expected_t = sum(reference_row((text_all @ text[b]).tolist(), b, t, objective, 0.1) for b in range(B)) / B
    assert i2i.item() == pytest.approx(expected_i, rel=1e-9)
    assert t2t.item() == pytest.approx(expected_t, rel=1e-9)


def lmi_loop(g, local, mask, t, objective, tau_plus):
    """TCL.md §3.3 written out: one row per (sample a, valid local j)."""
    B, n, _ = local.shape
    per_sample = []
    for a in range(B):
        negatives = [float(g[a] @ local[b, k]) for b in range(B) for k in range(n) if b != a and mask[b, k]]
        if not negatives:
            continue
        rows = [reference_row([float(g[a] @ local[a, j])] + negatives, 0, t, objective, tau_plus)
                for j in range(n) if mask[a, j]]
        if rows:
            per_sample.append(sum(rows) / len(rows))
    return sum(per_sample) / len(per_sample)


@pytest.mark.parametrize("objective", ["infonce", "debiased_neg", "debiased_pos"])
def test_lmi_against_loop_with_padding(objective):
    B, n, t = 4, 5, 0.2
    g, local = unit(B, 8, seed=1), unit(B, n, 8, seed=2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    got = lmi_loss(g, local, mask, t, ContrastiveObjective(objective, 0.1))
    assert got.item() == pytest.approx(lmi_loop(g, local, mask, t, objective, 0.1), rel=1e-9)


def test_lmi_ignores_padded_locals_and_empty_samples():
    B, n, t = 3, 4, 0.1
    g, local = unit(B, 8, seed=1), unit(B, n, 8, seed=2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    base = lmi_loss(g, local, mask, t)
    changed = local.clone()
    changed[0, 2:] = unit(2, 8, seed=9)  # padded: must not matter
    changed[2] = unit(n, 8, seed=10)     # a sample without valid locals: must not matter either
    assert torch.allclose(lmi_loss(g, changed, mask, t), base)
    assert base.item() == pytest.approx(lmi_loop(g, local, mask, t, "infonce", 0.1), rel=1e-9)


def test_lmi_single_sample_is_zero_and_differentiable():
    g = unit(1, 8, seed=1).requires_grad_()
    for objective in ("infonce", "debiased_neg", "debiased_pos"):
        loss = lmi_loss(g, unit(1, 3, 8, seed=2), None, 0.1, ContrastiveObjective(objective))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(g.grad).all()


def test_lmi_gradcheck():
    g = unit(3, 6, seed=1).requires_grad_()
    local = unit(3, 4, 6, seed=2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]])
    for name in ("infonce", "debiased_neg", "debiased_pos"):
        objective = ContrastiveObjective(name, 0.1)
        assert torch.autograd.gradcheck(lambda x: lmi_loss(x, local, mask, 0.2, objective), (g,))


@pytest.mark.parametrize("size", [64, 256, 384])
def test_image_regions_are_4x4_at_any_resolution(size):
    side = size // 16
    patches = torch.arange(side * side, dtype=torch.float64).reshape(1, side * side, 1)
    regions = pool_image_regions(patches)
    assert regions.shape == (1, 16, 1)
    grid = patches.reshape(side, side)
    k = side // 4
    assert regions[0, 5, 0].item() == pytest.approx(grid[k:2 * k, k:2 * k].mean().item())


def test_hard_negatives_never_pick_the_positive():
    torch.manual_seed(0)
    sim = torch.randn(6, 6) * 5
    for _ in range(50):
        picks = sample_hard_negatives(hard_negative_weights(sim))
        assert (picks != torch.arange(6)).all()


@pytest.mark.parametrize("bad", ["nan", "zeros", "inf"])
def test_hard_negatives_fall_back_to_uniform(bad):
    weights = torch.rand(4, 4)
    weights[1] = {"nan": float("nan"), "zeros": 0.0, "inf": float("inf")}[bad]
    counts = torch.zeros(4)
    for seed in range(200):
        picks = sample_hard_negatives(weights, torch.Generator().manual_seed(seed))
        assert (picks != torch.arange(4)).all()
        counts[picks[1]] += 1
    assert counts[1] == 0 and (counts[[0, 2, 3]] > 30).all()  # uniform over the other samples


def test_hard_negatives_single_sample():
    assert sample_hard_negatives(hard_negative_weights(torch.zeros(1, 1))).tolist() == [0]


def test_hard_negative_weights_follow_similarity():
    sim = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    weights = hard_negative_weights(sim)
    assert weights.diagonal().eq(0).all() and weights[0, 1] > 0.9


def test_itm_loss_labels():
    logits = torch.tensor([[0.0, 10.0], [10.0, 0.0], [10.0, 0.0]])
    assert itm_loss(logits, 1).item() < 1e-3
    assert itm_loss(logits.flip(1), 1).item() > 5


def test_masking_rules():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 40), generator=g)
    ids[:, 0] = 2
    ids[:, 30:] = 0
    masked, labels = mask_tokens(ids, 1000, mask_id=4, pad_id=0, cls_id=2, probability=0.15, generator=g)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 30:].any()
    assert (labels[chosen] == ids[chosen]).all()
    rate = chosen.float().sum() / (64 * 29)
    assert 0.12 < rate < 0.18
    to_mask = (masked == 4) & chosen
    unchanged = (masked == ids) & chosen
    assert 0.75 < to_mask.sum() / chosen.sum() < 0.85
    assert 0.05 < unchanged.sum() / chosen.sum() < 0.15
    assert (masked[~chosen] == ids[~chosen]).all()


def test_content_word_masking_rates_and_default_draws():
    """Content positions are chosen with p + (1 - p) * p_content, the others with p; no content = BERT's draws."""
    ids = torch.randint(5, 1000, (256, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    ids[:, 30:] = 0
    content = torch.zeros_like(ids, dtype=torch.bool)
    content[:, 1:11] = True
    content[:, 35:] = True  # padding stays unchosen even when marked
    masked, labels = mask_tokens(ids, 1000, mask_id=4, pad_id=0, cls_id=2, probability=0.15,
                                 generator=torch.Generator().manual_seed(1), content=content,
                                 content_probability=0.5)
    chosen = labels != IGNORE
    assert not chosen[:, 30:].any() and not chosen[:, 0].any()
    content_rate = chosen[:, 1:11].float().mean().item()
    other_rate = chosen[:, 11:30].float().mean().item()
    assert abs(content_rate - (0.15 + 0.85 * 0.5)) < 0.03, content_rate
    assert abs(other_rate - 0.15) < 0.02, other_rate
    plain = mask_tokens(ids, 1000, 4, 0, 2, 0.15, generator=torch.Generator().manual_seed(1))
    unused = mask_tokens(ids, 1000, 4, 0, 2, 0.15, generator=torch.Generator().manual_seed(1), content=content,
                         content_probability=0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, unused))


def test_mlm_loss_against_loop_with_distillation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.full((2, 5), IGNORE)
    labels[0, 1], labels[1, 3], labels[1, 4] = 3, 0, 6
    ce = kd = 0.0
    positions = [(0, 1), (1, 3), (1, 4)]
    for b, i in positions:
        log_p = torch.log_softmax(logits[b, i], dim=0)
        ce -= log_p[labels[b, i]].item()
        kd -= (torch.softmax(teacher[b, i], dim=0) * log_p).sum().item()
    expected = 0.6 * ce / 3 + 0.4 * kd / 3
    assert mlm_loss(logits, labels, teacher, alpha=0.4).item() == pytest.approx(expected, rel=1e-6)


def test_mlm_loss_without_masked_tokens_is_zero():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.eq(0).all()


def test_alignment_and_uniformity_against_loops():
    x, y = unit(5, 4, seed=1), unit(5, 4, seed=2)
    assert alignment(x, y).item() == pytest.approx(sum(float((x[i] - y[i]).pow(2).sum()) for i in range(5)) / 5)
    pairs = [math.exp(-2 * float((x[i] - x[j]).pow(2).sum())) for i in range(5) for j in range(i + 1, 5)]
    assert uniformity(x).item() == pytest.approx(math.log(sum(pairs) / len(pairs)))
    assert uniformity(x[:1]).item() == 0.0


def test_lmi_pooling_reproduces_tcl_pretraining_kernel_or_pools_4x4_everywhere():
    side, dim = 4, 3
    patches = torch.arange(side * side * dim, dtype=torch.float32).reshape(1, side * side, dim)
    assert pool_image_regions(patches).shape == (1, 16, dim)  # ours: 4 x 4 regions at any grid
    assert torch.equal(pool_image_regions(patches), patches)  # a 4 x 4 grid is its own 4 x 4 regions
    tcl = pool_image_regions(patches, tcl_pretrain_kernel=True)  # kernel int(sqrt(4)) = 2: 2 x 2 regions
    grid = patches[0].reshape(side, side, dim)
    assert tcl.shape == (1, 4, dim) and torch.allclose(tcl[0, 0], grid[:2, :2].mean(dim=(0, 1)))
    assert pool_image_regions(torch.zeros(1, 256, dim), tcl_pretrain_kernel=True).shape == (1, 16, dim)  # 256 px
    assert pool_image_regions(torch.zeros(1, 576, dim), tcl_pretrain_kernel=True).shape == (1, 36, dim)  # 384 px
