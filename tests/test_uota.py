"""UOTA weighting of the IMC image positives (tcl.losses.uota): the formula, its invariances, and its use in the
pretraining loss."""

import math
from pathlib import Path

import pytest
import torch

from tcl.config import ConfigError, load_config
from tcl.losses.objectives import contrastive_loss
from tcl.losses.uota import pair_weights, uota_weights

# The tiny configs add the region classification and grounding terms, which need boxes in every batch; these tests
# exercise the TCL terms (or sources without instances files) on their own.
NO_REGIONS = ("loss.region_class_weight=0", "loss.grounding_weight=0")

REPO = Path(__file__).resolve().parents[1]


def test_weights_follow_the_formula_with_the_shrunk_covariance():
    torch.manual_seed(0)
    views = torch.randn(6, 3, 4)
    tau, shrinkage = 2.5, 0.1
    centred = (views - views.mean(dim=1, keepdim=True)).reshape(18, 4)
    sigma = centred.T @ centred / 18
    sigma = (1 - shrinkage) * sigma + shrinkage * sigma.trace() / 4 * torch.eye(4)
    raw = torch.tensor([math.exp(-float(c @ torch.linalg.inv(tau * sigma) @ c)) for c in centred]).reshape(6, 3)
    expected = raw / raw.mean()
    torch.testing.assert_close(uota_weights(views, tau, shrinkage), expected, rtol=1e-4, atol=1e-6)


def test_an_outlying_pair_of_views_is_down_weighted():
    torch.manual_seed(1)
    anchor = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    other = torch.nn.functional.normalize(anchor + 0.05 * torch.randn(16, 8), dim=1)
    other[3] = -anchor[3]  # the second view of sample 3 shows something else
    weights = pair_weights(anchor, other)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert weights.argmin().item() == 3 and weights[3] < 0.1 * weights.median()


def test_weights_do_not_depend_on_the_sample_order_and_carry_no_gradient():
    torch.manual_seed(2)
    a, b = torch.randn(10, 5, requires_grad=True), torch.randn(10, 5)
    order = torch.randperm(10)
    weights = pair_weights(a, b)
    torch.testing.assert_close(pair_weights(a[order], b[order]), weights[order])
    assert not weights.requires_grad


def test_row_weights_make_a_weighted_mean_and_ones_change_nothing():
    torch.manual_seed(3)
    sim, positive = torch.randn(5, 9).tanh(), torch.arange(5)
    plain = contrastive_loss(sim, positive, 0.1)
    torch.testing.assert_close(contrastive_loss(sim, positive, 0.1, row_weights=torch.ones(5)), plain)
    only_first = torch.tensor([1.0, 0, 0, 0, 0])
    torch.testing.assert_close(contrastive_loss(sim, positive, 0.1, row_weights=only_first),
                               contrastive_loss(sim[:1], positive[:1], 0.1))


def test_pretraining_with_uota_changes_only_the_image_imc_term(shapes_root):
    from tcl.data.builders import build_tokenizer
    from tcl.models import TCLPretrainModel

    losses = {}
    for uota in (False, True):
        config = load_config(REPO / "configs/pretrain_tiny.yaml", [f"data.root={shapes_root}", f"loss.uota={uota}",
                                                           "model.queue_size=32", "loss.alpha=0", *NO_REGIONS])
        torch.manual_seed(0)
        model = TCLPretrainModel(config.model, config.loss, len(build_tokenizer(config))).eval()
        torch.manual_seed(1)
        image = torch.randn(4, 3, 64, 64)
        ids, mask = torch.randint(5, 50, (4, 7)), torch.ones(4, 7, dtype=torch.long)
        torch.manual_seed(2)
        losses[uota] = model(image, image + 0.1 * torch.randn_like(image), ids, mask).losses
    assert not torch.equal(losses[True]["i2i"], losses[False]["i2i"])
    for name in ("i2t", "t2i", "t2t", "lmi_image", "lmi_text", "itm"):
        torch.testing.assert_close(losses[True][name], losses[False][name])


def test_uota_tau_must_be_positive():
    with pytest.raises(ConfigError, match="loss.uota_tau"):
        load_config(None, ["loss.uota_tau=0"])
