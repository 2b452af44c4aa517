"""Run a model exported by ``GET /v1/models/{id}/export?format=onnx`` without tlserve: needs numpy, Pillow
and onnxruntime only (no torch, no scikit-learn).

    python scripts/predict_onnx.py model.onnx photo1.jpg photo2.png

prints one JSON object per image: ``{"file", "label", "score", "probabilities": {label: p}}``. The
preprocessing is read from the graph's metadata (``tlserve.preprocessing``) and done as the service does it:
EXIF orientation, transparent pixels on white, then the rectangle that torchvision's ``Resize(resize_size)``
and ``CenterCrop(input_size)`` keep, resampled to input_size × input_size in one step."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def load(path: Path, prep: dict) -> np.ndarray:
    """uint8 H×W×C, as the service feeds the network."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("L" if prep["grayscale"] else "RGB")
        width, height = img.size
        size, resize = prep["input_size"], prep["resize_size"]
        short, long = min(width, height), max(width, height)
        new_long = int(resize * long / short)
        new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        out = np.array(img.resize((size, size), RESAMPLE[prep["interpolation"]], box=box, reducing_gap=3.0))
    return out[:, :, None] if out.ndim == 2 else out


def predict(model: Path, images: list[Path]) -> list[dict]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["tlserve.classes"])
    prep = json.loads(meta["tlserve.preprocessing"])
    batch = np.stack([load(p, prep) for p in images])
    (probs,) = session.run(["probabilities"], {"images": batch})
    rows = []
    for path, p in zip(images, probs, strict=True):
        best = int(np.argmax(p))
        rows.append(
            {
                "file": str(path),
                "label": classes[best],
                "score": float(p[best]),
                "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    for row in predict(args.model, args.images):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
