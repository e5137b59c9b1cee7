"""UOTA view weighting (Wang et al., NeurIPS 2021; TCL.md Part A §A.2), an option for the IMC image positives.

Each sample's views z_ij are compared with the sample's mean view μ_i through the pooled covariance Σ of the
centred views of the batch: w_ij = exp(−(z_ij − μ_i)ᵀ (τΣ)⁻¹ (z_ij − μ_i)). A pair of views that lies unusually far
apart — a crop that missed the object, say — gets a small weight. Two choices the formula leaves open:

* Σ of B·V centred views in d dimensions is singular whenever B·V ≤ d (and with two views, c_i1 = −c_i2), so it is
  shrunk towards its mean eigenvalue: Σ' = (1 − λ)Σ + λ·tr(Σ)/d·I, λ = ``shrinkage``.
* The squared Mahalanobis distance of a view is about d on average, so τ defaults to d (a typical weight of e⁻¹);
  the weights are then scaled to mean 1 over the batch, so they re-weight the rows without changing the loss scale.
The weights are constants (no gradient flows through them), as in UOTA.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def uota_weights(views: torch.Tensor, tau: float | None = None, shrinkage: float = 0.1) -> torch.Tensor:
    """[B, V] weights (mean 1) of V views of B samples, from their [B, V, d] features."""
    if views.dim() != 3 or views.shape[1] < 2:
        raise ValueError(f"views must be [B, V >= 2, d]; got {tuple(views.shape)}")
    batch, num_views, dim = views.shape
    centred = (views - views.mean(dim=1, keepdim=True)).float().reshape(batch * num_views, dim)
    covariance = centred.T @ centred / centred.shape[0]
    ridge = covariance.diagonal().mean().clamp_min(1e-12)
    covariance = (1.0 - shrinkage) * covariance + shrinkage * ridge * torch.eye(dim, device=views.device)
    distance = (centred @ torch.linalg.inv(covariance) * centred).sum(dim=1).reshape(batch, num_views)
    log_weights = -distance / (tau if tau is not None else dim)
    # exp(−m/τ) scaled to mean 1: a softmax over all views times their number, stable for large distances.
    return (torch.softmax(log_weights.flatten(), dim=0) * batch * num_views).reshape(batch, num_views)


def pair_weights(online: torch.Tensor, momentum: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """[B] weights (mean 1) of the IMC image rows: the product of the two views' UOTA weights."""
    weights = uota_weights(torch.stack([online.detach(), momentum.detach()], dim=1), tau)
    product = weights.prod(dim=1)
    return product / product.mean().clamp_min(1e-12)
