"""Logits of a (fine-tuned) backbone for uint8 images, normalised exactly as in training."""

from __future__ import annotations

import numpy as np
import torch

from workers.backbones.network import BackboneModel
from workers.backbones.spec import Preprocessing
from workers.training.augment import batch_transform
from workers.training.device import Precision


@torch.no_grad()
def predict_logits(
    model: BackboneModel, images: np.ndarray | torch.Tensor, prep: Preprocessing, *, batch_size: int = 64
) -> torch.Tensor:
    """``images``: uint8 N×H×W×C numpy (``load_rgb``/``stack_batch`` layout) or N×C×H×W tensor, already at
    the input size. Returns float32 N×classes logits on the CPU, computed on the model's device."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected a uint8 batch of 4 dimensions, got {x.dtype} {tuple(x.shape)}")
    precision = Precision.for_device(next(model.parameters()).device)
    transform = batch_transform(prep, train=False)
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(x), batch_size):
            batch = transform(precision.to_device(x[start : start + batch_size]))
            with precision.autocast():
                out.append(model(batch).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)
    finally:
        model.train(was_training)
