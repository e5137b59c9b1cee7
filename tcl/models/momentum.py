"""Momentum (EMA) encoders and feature queues (TCL.md Part A §A.1 (5, 6), Part B §1.5, §2).

The momentum copy is a separate fp32 module whose parameters never require gradients, so an optimizer built from
trainable parameters never sees it. It is updated in place, once per optimizer step, before the teacher features
are computed. Queues live in buffers, so ``state_dict`` holds everything needed to resume.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def identity_gather(tensor: torch.Tensor) -> torch.Tensor:
    """The gather of a single process."""
    return tensor


class MomentumEncoders(nn.Module):
    """An EMA copy of a set of online modules (tied weights stay tied in the copy)."""

    def __init__(self, online: nn.ModuleDict, momentum: float, dropout: bool = True):
        super().__init__()
        self.momentum = momentum
        self.models = copy.deepcopy(online).float()
        for parameter in self.models.parameters():
            parameter.requires_grad_(False)
        if not dropout:  # a deterministic teacher (TCL keeps dropout on in its momentum encoders)
            for module in self.models.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0

    def __getitem__(self, name: str) -> nn.Module:
        return self.models[name]

    @torch.no_grad()
    def update(self, online: nn.ModuleDict) -> None:
        """θ_m ← m·θ_m + (1 − m)·θ, over parameters (not buffers), in one fused foreach call."""
        targets = list(self.models.parameters())
        sources = [p.detach().to(t.dtype) for p, t in zip(online.parameters(), targets)]
        torch._foreach_lerp_(targets, sources, 1.0 - self.momentum)

    @torch.no_grad()
    def copy_from(self, online: nn.ModuleDict) -> None:
        for target, source in zip(self.models.parameters(), online.parameters()):
            target.copy_(source)


class FeatureQueue(nn.Module):
    """A ring buffer of [dim, size] unit vectors (random at start) with a pointer; enqueue is gathered."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("queue", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[1]

    def features(self) -> torch.Tensor:
        """[size, dim] (a copy, so enqueueing later does not alter features already used in a loss)."""
        return self.queue.T.clone()

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        """Writes [n, dim] features at the pointer; ``size`` must be a multiple of n (checked by the config)."""
        count = features.shape[0]
        if self.size % count:
            raise ValueError(f"queue size {self.size} is not a multiple of the gathered batch {count}")
        self.queue.index_copy_(1, ring_positions(self.ptr, count, self.size), features.T.to(self.queue.dtype))
        self.ptr.add_(count).remainder_(self.size)


class KeyQueue(nn.Module):
    """A ring buffer of [size] integer keys (−1 = empty) kept in step with a ``FeatureQueue``: the caption key of each
    queued feature, so that copies of a caption are known as such."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("keys", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        count, size = keys.shape[0], self.keys.shape[0]
        self.keys.index_copy_(0, ring_positions(self.ptr, count, size), keys.to(self.keys.dtype))
        self.ptr.add_(count).remainder_(size)


def ring_positions(pointer: torch.Tensor, count: int, size: int) -> torch.Tensor:
    """The ``count`` slots from ``pointer`` on, computed on the pointer's device: the pointer is never read by the
    host, so enqueueing does not wait for the device."""
    return (pointer + torch.arange(count, device=pointer.device)) % size
