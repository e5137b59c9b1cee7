"""Skipping the optimizer steps whose loss or gradient is not finite, the same steps on every process.

The guarantee (docs/GUARANTEES.md): no update from a step with a NaN/Inf loss or gradient norm, every process
skipping it. Two ways to keep it:

- ``DeviceGuard`` (one process or DDP, fp32 or bf16) decides on the device and the host never waits for it. A
  non-finite loss multiplies its backward by NaN, so the gradient every process receives from the all-reduce is NaN;
  the gradient norm, computed from those reduced gradients, is then the same on every process, and a non-finite norm
  marks one gradient NaN (also when the sum of squares alone overflowed). torch's ``GradScaler``, its scale held at
  1, skips the update on the device when a gradient is not finite: fused AdamW (``train.fused_adamw``) takes the flag
  as a tensor; other optimizers make the scaler read it.
- ``HostGuard`` (DeepSpeed, or fp16 with accelerate's loss scaler, which read their own flags every step) all-reduces
  the finiteness of each micro-batch's loss and of the gradient norm and reads it.

Both count skipped steps in ``counts()`` (in a row, in total), which the trainer reads with its log line.
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType

NAN = float("nan")


def build_step_guard(accelerator, grad_clip: float) -> DeviceGuard | HostGuard:
    if accelerator.distributed_type == DistributedType.DEEPSPEED or accelerator.scaler is not None:
        return HostGuard(accelerator, grad_clip)
    return DeviceGuard(accelerator, grad_clip)


class DeviceGuard:
    """Non-finite steps skipped on the device (module docstring)."""

    def __init__(self, accelerator, grad_clip: float):
        self.accelerator, self.grad_clip = accelerator, grad_clip
        device = accelerator.device
        # Held at 1 (``update(1.0)`` every step): the scaler is used for its skip, not for scaling.
        self.scaler = torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2 ** 30)
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.total = torch.zeros((), dtype=torch.long, device=device)

    def backward(self, loss: torch.Tensor) -> None:
        poison = torch.where(torch.isfinite(loss.detach()), 1.0, NAN)
        self.accelerator.backward(self.scaler.scale(loss * poison))

    def step(self, model, optimizer) -> None:
        """Clips (``train.grad_clip``) and updates unless a gradient or the norm is not finite."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if self.grad_clip:
            norm = self.accelerator.clip_grad_norm_(model.parameters(), self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        bad = ~torch.isfinite(norm)
        if grads:
            grads[0].add_(torch.where(bad, NAN, 0.0))
        self.scaler.step(getattr(optimizer, "optimizer", optimizer))  # the torch optimizer inside accelerate's
        self.scaler.update(1.0)
        bad = bad.long()
        self.in_a_row = (self.in_a_row + 1) * bad
        self.total = self.total + bad

    def counts(self) -> torch.Tensor:
        return torch.stack([self.in_a_row, self.total])


class HostGuard:
    """Non-finite steps found by reading an all-reduced flag (module docstring)."""

    def __init__(self, accelerator, grad_clip: float):
        self.accelerator, self.grad_clip = accelerator, grad_clip
        self.window_bad, self.in_a_row, self.total = False, 0, 0

    def backward(self, loss: torch.Tensor) -> None:
        if self._finite_everywhere(loss):
            self.accelerator.backward(loss)
        else:  # every process leaves out the same backward, so no collective is left waiting
            self.window_bad = True

    def step(self, model, optimizer) -> None:
        bad = self.window_bad
        if not bad and self.grad_clip:
            norm = self.accelerator.clip_grad_norm_(model.parameters(), self.grad_clip)
            bad = norm is not None and not self._finite_everywhere(norm)
        self.window_bad = False
        self.in_a_row = self.in_a_row + 1 if bad else 0
        self.total += bad
        if bad:
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()

    def counts(self) -> torch.Tensor:
        return torch.tensor([self.in_a_row, self.total], device=self.accelerator.device)

    def _finite_everywhere(self, value) -> bool:
        flag = (~torch.isfinite(torch.as_tensor(value))).any().float().reshape(1).to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return flag.item() == 0
