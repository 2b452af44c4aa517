"""ImageNet-1k class names, from a data file shipped with the package (no torch needed to read it).

``imagenet_classes.txt`` is generated from torchvision's weights metadata by ``python -m
workers.runtime.imagenet`` and checked against it by the tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).with_name("imagenet_classes.txt")


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1,000 class names in class-index order."""
    names = tuple(DATA_FILE.read_text(encoding="utf-8").splitlines())
    if len(names) != 1000:
        raise RuntimeError(f"{DATA_FILE} holds {len(names)} class names, expected 1000")
    return names


def from_torchvision() -> list[str]:
    """The names as torchvision's pretrained weights describe them (imports torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


if __name__ == "__main__":
    DATA_FILE.write_text("\n".join(from_torchvision()) + "\n", encoding="utf-8")
    print(f"wrote {DATA_FILE}")
