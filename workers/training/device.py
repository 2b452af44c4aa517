"""Where training runs and how: the device (cuda, mps, cpu), mixed precision on CUDA only (bf16 where the
GPU has it, else fp16 with a GradScaler), channels_last and pinned host memory on CUDA. On a CPU plain fp32:
bf16 there is a slow fallback (48× slower on the build machines' Zen 3)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls(device, None)
        return cls(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Enabled only for fp16, whose small gradients underflow without loss scaling."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A host batch onto the device; asynchronous from pinned memory, channels_last for 4-D on CUDA."""
        x = x.to(self.device, non_blocking=self.cuda)
        if self.cuda and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the duration (warn only: some CUDA kernels have no
    deterministic version), the previous setting restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS asks for
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = cudnn_benchmark
