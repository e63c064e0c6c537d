"""Model zoo: ``create_model(name, num_classes, channels=None, **options)``.

Names: ``convnet`` (C^n(F), options ``depth``, ``width``, ``batch_norm``, ``variant`` and the
head's ``hidden``, ``dropout``, ``dropconnect``, ``dropconnect_mode``, ``dropconnect_inference``),
``resnet8|20|32|56|110`` (ResNet-8: one block per stage, for quick checks), ``vgg16`` (option
``variant``: ``paper`` or Li et al.'s ``li`` head), ``lenet300`` and ``lenet5`` (Han et al.'s
MNIST anchors, :mod:`repr_jax.models.lenet`), ``mobilenetv2`` (depthwise convs,
:mod:`repr_jax.models.mobilenet`), ``resnet18|34|50`` (ImageNet-style, projection shortcuts,
:mod:`repr_jax.models.imagenet_resnet`), and the user's own Linen model as
``FILE.py:FACTORY`` or ``package.module:FACTORY`` (:mod:`repr_jax.models.user`). ``channels`` is a per-conv width spec (see
:mod:`repr_jax.models.channels`): every builder makes the smaller dense model an export
describes. An *architecture* — ``{"name", "num_classes", "options", "channels",
"input_shape"}``, the content of a run's ``architecture.json`` — rebuilds the same module
with :func:`from_architecture`; ``input_shape`` is one example's (H, W, C) (read as
32×32×3 from an architecture written before it was recorded, :func:`input_shape_of`).
"""
from __future__ import annotations

from repr_jax.models import user
from repr_jax.shapes import DEFAULT_INPUT_SHAPE
from repr_jax.models.channels import as_spec
from repr_jax.models.convnet import HEAD_OPTIONS, ConvNet
from repr_jax.models.imagenet_resnet import ImageNetResNet
from repr_jax.models.lenet import LeNet5, LeNet300
from repr_jax.models.mobilenet import MobileNetV2
from repr_jax.models.dropconnect import DropConnectDense
from repr_jax.models.resnet import CifarResNet
from repr_jax.models.vgg import VGG, VGG_VARIANTS

MODELS = ("convnet", "resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "vgg16", "lenet300", "lenet5",
          "mobilenetv2", "resnet18", "resnet34", "resnet50")
CONVNET_OPTIONS = ("depth", "width", "batch_norm", "variant", *HEAD_OPTIONS)


def create_model(name: str, num_classes: int = 10, channels=None, **options):
    """Build a Flax module by name — a zoo model, or the user's ``FILE.py:FACTORY`` /
    ``package.module:FACTORY`` (:mod:`repr_jax.models.user`); unknown names or options raise
    ``ValueError``."""
    spec = as_spec(channels)
    if user.is_reference(name):
        if set(options) - {"logits"}:
            raise ValueError(f"model {name!r} is the user's factory: it takes no options but logits, got "
                             f"{', '.join(sorted(options))}")
        return user.build(name, num_classes, dict(spec) if spec else None)
    if name == "convnet":
        unknown = sorted(set(options) - set(CONVNET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown convnet option(s) {', '.join(unknown)}")
        return ConvNet(num_classes=num_classes, channels=spec, **options)
    if name == "vgg16" and set(options) <= {"variant"}:
        if options.get("variant", "paper") not in VGG_VARIANTS:
            raise ValueError(f"unknown vgg16 variant {options['variant']!r}; choose from {', '.join(VGG_VARIANTS)}")
        return VGG(num_classes=num_classes, channels=spec, **options)
    if name == "lenet300" and set(options) <= set(HEAD_OPTIONS) - {"hidden"}:
        return LeNet300(num_classes=num_classes, channels=spec, **options)
    if options:
        raise ValueError(f"model {name!r} takes no options, got {', '.join(sorted(options))}")
    if name == "lenet5":
        return LeNet5(num_classes=num_classes, channels=spec)
    if name == "mobilenetv2":
        return MobileNetV2(num_classes=num_classes, channels=spec)
    if name in ("resnet18", "resnet34", "resnet50"):
        return ImageNetResNet(depth=int(name[len("resnet"):]), num_classes=num_classes, channels=spec)
    if name.startswith("resnet") and name in MODELS:
        return CifarResNet(depth=int(name[len("resnet"):]), num_classes=num_classes, channels=spec)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def architecture(name: str, num_classes: int = 10, channels=None, input_shape=DEFAULT_INPUT_SHAPE,
                 **options) -> dict:
    """The JSON-shaped description :func:`from_architecture` rebuilds."""
    return {"name": name, "num_classes": int(num_classes), "options": dict(options),
            "channels": dict(as_spec(channels)), "input_shape": [int(d) for d in input_shape]}


def input_shape_of(arch: dict) -> tuple[int, int, int]:
    """One example's (H, W, C) an architecture was built for (CIFAR's when not recorded)."""
    return tuple(int(d) for d in arch.get("input_shape") or DEFAULT_INPUT_SHAPE)


def from_architecture(arch: dict):
    """The Flax module an ``architecture.json`` describes; the user's factory's module with
    its output checked (:func:`repr_jax.models.outputs.with_logits`: the logits selected
    when it returns more, one line when they cannot be read)."""
    try:
        module = create_model(arch["name"], arch.get("num_classes", 10), arch.get("channels") or None,
                              **arch.get("options", {}))
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a model architecture: {err}") from None
    if user.is_reference(arch["name"]):
        from repr_jax.models.outputs import with_logits
        try:
            module = with_logits(module, input_shape_of(arch), arch.get("options", {}).get("logits") or None,
                                 int(arch.get("num_classes", 10)))
        except ValueError as err:
            raise ValueError(f"--model {arch['name']}: {err}") from None
    return module


__all__ = ["ConvNet", "DropConnectDense", "HEAD_OPTIONS", "CifarResNet", "LeNet300", "LeNet5", "MobileNetV2",
           "ImageNetResNet", "VGG", "VGG_VARIANTS", "MODELS", "architecture", "create_model",
           "from_architecture", "input_shape_of"]
