"""Per-process compute set-up: thread counts from settings so that workers never oversubscribe cores."""

from __future__ import annotations

import os
import sys

from core.settings import get_settings


def configure_threads() -> None:
    settings = get_settings()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(settings.torch_threads))
    torch = sys.modules.get("torch")  # set only when already loaded: this never imports torch
    if torch is not None:
        torch.set_num_threads(settings.torch_threads)
