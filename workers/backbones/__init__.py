"""Backbones: the registry (torch-free, for listings) and model loading (imports torch when called)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.backbones.registry import describe_backbone, get_backbone, list_backbones, register_backbone
from workers.backbones.spec import BackboneSpec, Preprocessing, WeightsSource
from workers.backbones.weights import WeightsInfo, weights_available, weights_info

if TYPE_CHECKING:
    from workers.backbones.load import load_model
    from workers.backbones.network import BackboneModel

__all__ = [
    "BackboneModel",
    "BackboneSpec",
    "Preprocessing",
    "WeightsInfo",
    "WeightsSource",
    "describe_backbone",
    "get_backbone",
    "list_backbones",
    "load_model",
    "register_backbone",
    "weights_available",
    "weights_info",
]


def __getattr__(name: str) -> Any:
    """``load_model`` and ``BackboneModel`` pull in torch, so they are imported on first use only."""
    if name == "load_model":
        from workers.backbones.load import load_model

        return load_model
    if name == "BackboneModel":
        from workers.backbones.network import BackboneModel

        return BackboneModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
