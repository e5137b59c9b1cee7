"""The number format answering runs in: bf16 autocast on a GPU that has bf16, fp32 everywhere else.

Training resolves its own precision in the engine (``tcl.engine.runtime.resolve_precision``); the library may not
import the engine, and inference has fewer choices (no fp16, no launcher), so it has this small resolver of its own.
Weights stay fp32 in both formats: bf16 is autocast (matmuls and convolutions in bf16), and scores leave in fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from tcl.errors import TclError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_inference_precision(setting: str, device: str | torch.device, cuda_bf16: bool | None = None) -> str:
    """``"fp32"`` or ``"bf16"`` for answering on ``device``.

    Args:
        setting: ``auto`` (bf16 on a CUDA device that supports it, else fp32), ``fp32`` or ``bf16`` (also on the
            CPU, where torch autocasts to bf16 too; slow on CPUs without bf16 instructions).
        device: where the model runs.
        cuda_bf16: whether the CUDA device has bf16 (default: ask torch).
    """
    if setting not in PRECISIONS:
        raise TclError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}.")
    device = torch.device(device)
    if device.type != "cuda":
        return "bf16" if setting == "bf16" else "fp32"
    if cuda_bf16 is None:
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if setting == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if setting == "bf16" and not cuda_bf16:
        raise TclError(f"precision bf16 needs a GPU with bf16 support; {device} has none (use auto or fp32).")
    return setting


def inference_autocast(precision: str, device: str | torch.device) -> AbstractContextManager:
    """The autocast context of a resolved ``precision`` on ``device``. For fp32 it is a no-op rather than a disabled
    autocast, which would switch off an autocast the caller (e.g. the evaluation in the engine) has entered."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
