"""Per-process compute set-up: thread counts from settings so that workers never oversubscribe cores."""

from __future__ import annotations

import os


def configure_threads() -> None:
    from core.settings import get_settings

    settings = get_settings()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(settings.torch_threads))
    import sys

    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(settings.torch_threads)
