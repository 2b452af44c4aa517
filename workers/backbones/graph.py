"""The inference graph both engines run: uint8 N×H×W×C in, (features, logits) out, with the backbone's
normalisation inside, so that callers pass raw pixels and ONNX exports carry their own preprocessing."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from workers.backbones.network import BackboneModel
from workers.backbones.spec import Preprocessing

ONNX_OPSET = 17


class InferenceGraph(nn.Module):
    def __init__(self, model: BackboneModel, prep: Preprocessing) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float()  # NHWC → NCHW view: already channels_last in memory
        x = x * self.scale + self.shift
        return self.model.forward_all(x)


def export_onnx(model: BackboneModel, prep: Preprocessing, sample: np.ndarray) -> bytes:
    """ONNX bytes of the inference graph: input ``images`` (uint8 NHWC, dynamic batch), outputs
    ``features`` and ``logits``. TorchScript-based exporter (``dynamo=False``): fast and dependable here."""
    graph = InferenceGraph(model, prep).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # TF-"same" padding sizes become constants
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose
        torch.onnx.export(
            graph,
            (torch.from_numpy(np.ascontiguousarray(sample)),),
            buf,
            dynamo=False,
            input_names=["images"],
            output_names=["features", "logits"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    return buf.getvalue()
