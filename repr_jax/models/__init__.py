"""Model zoo: ``create_model(name, num_classes, **options)``.

Names: ``convnet`` (C^n(F), options ``depth``, ``width``, ``batch_norm``, ``variant``),
``resnet20|32|56|110``, ``vgg16``.
"""
from __future__ import annotations

from repr_jax.models.convnet import ConvNet
from repr_jax.models.resnet import CifarResNet
from repr_jax.models.vgg import VGG

MODELS = ("convnet", "resnet20", "resnet32", "resnet56", "resnet110", "vgg16")


def create_model(name: str, num_classes: int = 10, **options):
    """Build a Flax module by name; unknown names raise ``ValueError`` listing the valid ones."""
    if name == "convnet":
        return ConvNet(num_classes=num_classes, **options)
    if name.startswith("resnet") and name in MODELS:
        return CifarResNet(depth=int(name[len("resnet"):]), num_classes=num_classes)
    if name == "vgg16":
        return VGG(num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


__all__ = ["ConvNet", "CifarResNet", "VGG", "MODELS", "create_model"]
