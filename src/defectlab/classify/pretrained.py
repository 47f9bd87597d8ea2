"""Torchvision (and EfficientNet-Lite) classifiers with offline pretrained weights.

Each body keeps the original module names, so a pretrained state dict loads into it directly (its old
classifier head is left out). ``stages`` group the body from input to output for ``model.freeze``:
stem, then four resolution stages (ViT: patch embedding, then four groups of three encoder layers).
Only mobilenet_v2 and efficientnet_lite0/1/2 have ImageNet weights on this machine; the others train from
random init unless a weights file is given (``weights: auto`` falls back to random init with a warning).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from defectlab.classify.models import CLASSIFIERS, Classifier, load_pretrained, pretrained_state
from defectlab.errors import ConfigError

# The input normalisation each family's weights expect (efficientnet_lite0: Google's TF weights, [-1, 1]).
_HALF = (0.5, 0.5, 0.5)


def _resnet(arch: str):  # noqa: ANN202 - a builder factory
    def build(*, num_classes: int, image_size: int, weights: str = "auto", dropout: float = 0.0) -> Classifier:
        import torchvision

        net = torchvision.models.get_model(arch, weights=None)
        state, tag = pretrained_state(arch, weights)
        load_pretrained(net, state, arch)
        body = nn.Sequential(OrderedDict(
            conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool, layer1=net.layer1,
            layer2=net.layer2, layer3=net.layer3, layer4=net.layer4, avgpool=net.avgpool, flatten=nn.Flatten()))
        stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
        return Classifier(body, net.fc.in_features, num_classes, dropout=dropout, stages=stages, weights_tag=tag)

    build.__name__ = arch
    build.__doc__ = f"torchvision {arch}; stages: stem, layer1..layer4."
    return build


for _arch in ("resnet18", "resnet34", "resnet50", "wide_resnet50_2"):
    CLASSIFIERS.register(_arch)(_resnet(_arch))


@CLASSIFIERS.register("mobilenet_v2")
def mobilenet_v2(*, num_classes: int, image_size: int, weights: str = "auto", dropout: float = 0.0) -> Classifier:
    """torchvision MobileNetV2; stages end at strides 2, 4, 8, 16, 32 (features 0-1, 2-3, 4-6, 7-13, 14-18)."""
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None)
    state, tag = pretrained_state("mobilenet_v2", weights)
    load_pretrained(net, state, "mobilenet_v2")
    body = nn.Sequential(OrderedDict(features=net.features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    groups = [(0, 2), (2, 4), (4, 7), (7, 14), (14, 19)]
    stages = [tuple(f"features.{i}" for i in range(a, b)) for a, b in groups]
    return Classifier(body, net.last_channel, num_classes, dropout=dropout, stages=stages, weights_tag=tag)


class _EfficientNetBody(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)


# The TF port keeps TensorFlow's BatchNorm decay 0.99 as torch momentum 0.01: the running statistics then
# move 1% towards each batch, so after the few dozen steps of a small fine-tuning run they still describe
# the ImageNet network, not the fine-tuned one, and eval mode (running statistics) collapses to one class
# while training accuracy (batch statistics) is high. Fine-tuning here uses torch's default 0.1.
FINE_TUNE_BN_MOMENTUM = 0.1


def _efficientnet_lite(variant: int):  # noqa: ANN202 - a builder factory
    arch = f"efficientnet_lite{variant}"

    def build(*, num_classes: int, image_size: int, weights: str = "auto", dropout: float = 0.0,
              bn_momentum: float = FINE_TUNE_BN_MOMENTUM) -> Classifier:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ConfigError(f"{arch} needs the package efficientnet-lite-pytorch") from None
        net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=image_size)
        state, tag = pretrained_state(arch, weights)
        load_pretrained(net, state, arch)
        del net._fc
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        # stages end at strides 4, 8, 16, 32 (a block with stride 2 opens the next stage)
        starts = [i for i, b in enumerate(net._blocks) if _stride(b) == 2] + [len(net._blocks)]
        stages = [("net._conv_stem", "net._bn0")]
        stages += [tuple(f"net._blocks.{i}" for i in range(a, b)) for a, b in zip([0] + starts[1:-1], starts[1:],
                                                                                   strict=True)]
        stages[-1] += ("net._conv_head", "net._bn1")
        return Classifier(_EfficientNetBody(net), net._bn1.num_features, num_classes, dropout=dropout,
                          stages=stages, weights_tag=tag, mean=_HALF, std=_HALF)

    build.__name__ = arch
    build.__doc__ = (f"EfficientNet-Lite{variant} (package efficientnet_lite_pytorch, Google's TF weights, inputs "
                     "in [-1, 1]); stages: stem, then blocks up to strides 4, 8, 16, 32 (+ head). BatchNorm "
                     "momentum ``bn_momentum`` (torch's 0.1; the port's 0.01 collapses small fine-tuning runs).")
    return build


def _stride(block: nn.Module) -> int:
    s = block._block_args.stride
    return int(s[0] if isinstance(s, (list, tuple)) else s)


for _variant in (0, 1, 2):
    CLASSIFIERS.register(f"efficientnet_lite{_variant}")(_efficientnet_lite(_variant))


@CLASSIFIERS.register("vit_b_16")
def vit_b_16(*, num_classes: int, image_size: int, weights: str = "auto", dropout: float = 0.0) -> Classifier:
    """torchvision ViT-B/16 at ``image_size`` (a multiple of 16; pretrained position embeddings are
    interpolated when it is not 224). Stages: patch embedding, then encoder layers 0-2, 3-5, 6-8, 9-11."""
    import torchvision
    from torchvision.models.vision_transformer import interpolate_embeddings

    if image_size % 16:
        raise ConfigError(f"vit_b_16 needs an image size that is a multiple of 16, got {image_size}")
    net = torchvision.models.vit_b_16(weights=None, image_size=image_size)
    state, tag = pretrained_state("vit_b_16", weights)
    if state is not None and image_size != 224:
        state = interpolate_embeddings(image_size, 16, state)
    load_pretrained(net, state, "vit_b_16")
    net.heads = nn.Identity()  # forward now returns the class token's features
    stages = [("conv_proj", "class_token", "encoder.pos_embedding")]
    stages += [tuple(f"encoder.layers.encoder_layer_{i}" for i in range(a, a + 3)) for a in (0, 3, 6, 9)]
    stages[-1] += ("encoder.ln",)
    return Classifier(net, net.hidden_dim, num_classes, dropout=dropout, stages=stages, weights_tag=tag)
