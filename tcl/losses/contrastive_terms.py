"""TCL's contrastive terms (TCL.md Part B §3.1-3.3), each a pure function of features.

All features are L2-normalised; ``*_all`` hold the momentum features of the batch first, then the queue, so
column b of the first B columns is row b's positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tcl.losses.objectives import INFONCE, ContrastiveObjective, contrastive_loss, objective_from_stats


@dataclass(frozen=True)
class MomentumTargets:
    """CMA's momentum distillation: the momentum features that give the soft targets, and their weight α. The
    three belong together (targets without a weight, or a weight without targets, mean nothing), so they travel as
    one value.

    Attributes:
        image_feat, text_feat: [B, d] momentum features of the batch (L2-normalised).
        alpha: weight α of the distillation term (the trainer ramps it; 0 switches distillation off).
    """

    image_feat: torch.Tensor
    text_feat: torch.Tensor
    alpha: float


def cma_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, image_feat_all: torch.Tensor,
             text_feat_all: torch.Tensor, temperature: torch.Tensor | float, objective: ContrastiveObjective = INFONCE,
             distill: MomentumTargets | None = None,
             exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-modal alignment: (L_i2t, L_t2i), momentum-distilled when ``distill`` is given with α > 0.

    Args:
        image_feat, text_feat: [B, d] online features.
        image_feat_all, text_feat_all: [B + Q, d] momentum features of the batch, then the queue.
        temperature: t (tensor or float).
        objective: the contrastive objective of both directions.
        distill: the momentum features that give the soft targets, and their weight α (None: no distillation).
        exclude: optional [B, B + Q] bool: keys that are no negatives of the row (see ``contrastive_loss``), both
            ways.
    """
    positive = torch.arange(image_feat.shape[0], device=image_feat.device)
    sim_i2t, sim_t2i = image_feat @ text_feat_all.T, text_feat @ image_feat_all.T
    soft_i2t = soft_t2i = None
    alpha = 0.0 if distill is None else distill.alpha
    if alpha > 0:
        with torch.no_grad():
            soft_i2t = F.softmax(distill.image_feat @ text_feat_all.T / temperature, dim=1)
            soft_t2i = F.softmax(distill.text_feat @ image_feat_all.T / temperature, dim=1)
    common = dict(temperature=temperature, objective=objective, alpha=alpha)
    return (contrastive_loss(sim_i2t, positive, soft_targets=soft_i2t, exclude=exclude, **common),
            contrastive_loss(sim_t2i, positive, soft_targets=soft_t2i, exclude=exclude, **common))


def imc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, image_feat_all: torch.Tensor,
             text_feat_all: torch.Tensor, temperature: torch.Tensor | float, objective: ContrastiveObjective = INFONCE,
             image_weights: torch.Tensor | None = None,
             text_exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Intra-modal contrast: (L_i2i, L_t2t). The positive of an online image is the momentum feature of its second
    view; the positive of an online text is its momentum feature (same tokens, other dropout and EMA weights).
    ``image_weights`` [B] re-weight the image rows (UOTA, ``tcl.losses.uota``); ``text_exclude``
    [B, B + Q] marks text keys that are no negatives of the row (see ``contrastive_loss``)."""
    positive = torch.arange(image_feat.shape[0], device=image_feat.device)
    common = dict(temperature=temperature, objective=objective)
    return (contrastive_loss(image_feat @ image_feat_all.T, positive, row_weights=image_weights, **common),
            contrastive_loss(text_feat @ text_feat_all.T, positive, exclude=text_exclude, **common))


def lmi_loss(global_feat: torch.Tensor, local_feat: torch.Tensor, local_mask: torch.Tensor | None,
             temperature: torch.Tensor | float, objective: ContrastiveObjective = INFONCE) -> torch.Tensor:
    """Local mutual information between a sample's global feature and its own local features.

    Row (a, j): positive <g_a, l_aj>; negatives <g_a, l_bk> for every other sample b and valid local k (in-batch,
    the same set for every j). Padded locals are neither positives nor negatives; the loss is the mean over
    samples of the mean over their valid locals, and samples without valid locals are left out.

    Args:
        global_feat: [B, d] online global features (carry the gradient).
        local_feat: [B, n, d] momentum local features (image regions or text tokens).
        local_mask: [B, n] 1 for valid locals (None: all valid).
        temperature: t (tensor or float).
        objective: the contrastive objective of every row.
    """
    batch, n = local_feat.shape[:2]
    mask = torch.ones(batch, n, dtype=torch.bool, device=local_feat.device) if local_mask is None else local_mask.bool()
    pos_logit = torch.einsum("bd,bnd->bn", global_feat, local_feat) / temperature
    neg_logit = torch.einsum("ad,bnd->abn", global_feat, local_feat) / temperature
    other = ~torch.eye(batch, dtype=torch.bool, device=local_feat.device)
    valid_neg = other[:, :, None] & mask[None, :, :]
    neg_lse = torch.logsumexp(neg_logit.masked_fill(~valid_neg, float("-inf")).flatten(1), dim=1)
    num_neg = valid_neg.flatten(1).sum(dim=1).to(pos_logit.dtype)
    losses = objective_from_stats(pos_logit, neg_lse[:, None].expand(-1, n), num_neg[:, None].expand(-1, n),
                                  temperature, objective)
    rows = mask & (num_neg > 0)[:, None]  # a lone sample (B = 1) has no negatives and no loss
    per_sample = (losses * rows).sum(dim=1) / rows.sum(dim=1).clamp_min(1)
    has_rows = rows.any(dim=1).float()  # a mask, not boolean indexing: nothing waits for the device
    return (per_sample * has_rows).sum() / has_rows.sum().clamp_min(1.0)


def pool_image_regions(patch_feat: torch.Tensor, regions: int = 4, tcl_pretrain_kernel: bool = False
                       ) -> torch.Tensor:
    """Averages [B, P, d] patch features on their square grid into regions x regions cells: [B, regions², d].

    Adaptive pooling gives 4 x 4 = 16 regions at any resolution. ``tcl_pretrain_kernel`` reproduces TCL's pretraining
    code instead: kernel and stride int(√side) on a side x side grid, which gives 16 regions only at 256 px (2 x 2 at
    a 4 x 4 grid, 6 x 6 at 384 px; TCL.md Part B §3.3).
    """
    batch, num_patches, dim = patch_feat.shape
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid")
    grid = patch_feat.transpose(1, 2).reshape(batch, dim, side, side)
    if tcl_pretrain_kernel:
        kernel = math.isqrt(side)
        return F.avg_pool2d(grid, kernel, stride=kernel).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool2d(grid, regions).flatten(2).transpose(1, 2)
