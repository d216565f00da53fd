"""MobileNet V3 Large and Small (Howard et al., ICCV 2019), "Searching for MobileNetV3".

Construction: the paper's Tables 1 and 2; hard-swish in the later layers, squeeze-and-excitation with a
hard-sigmoid gate on the expansion width (squeeze to a quarter, rounded to a multiple of 8), a 1x1 conv to
960 (Large) / 576 (Small) channels, global pooling, then a 1280 (Large) / 1024 (Small) wide linear layer with
hard-swish before the classifier. The parameter names are torchvision's, so torchvision files load name for
name; timm's `mobilenetv3_*` files load through `MobileNetV3.twin_module_names`.

Width rounding: timm's, which reproduces the paper's 0.75 models (Table 3: Large 4.0M / 155M, Small 2.0M / 44M).
Each block's expansion width is the *rounded* input width times the paper's expansion ratio, rounded to 8; the
stem stays 16 below width 0.75; the 1280/1024 head is not scaled. torchvision instead rounds the unscaled
expansion width times the multiplier and scales the head, which gives other networks at 0.75. Both agree at
width 1.0.

BatchNorm uses eps 1e-3 and momentum 0.01 (the paper's TensorFlow values, also torchvision's). timm trains
with PyTorch's defaults (1e-5 / 0.1); a timm file switches the model to those (`adapt_to_pretrained`).

stem="cifar": the stem conv and the first stride-2 block run at stride 1, the MobileNet V2 CIFAR rule
(total stride 8).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from lnrepro.models.layers import ConvBnAct, SqueezeExcite, cifar_strides, init_weights, make_divisible, scale_channels
from lnrepro.models.pretrained import conv_bn, timm_block_names, timm_conv_bn_names
from lnrepro.models.registry import register_model

log = logging.getLogger(__name__)


class BlockConfig(NamedTuple):
    kernel: int
    expand_ratio: float  # expansion width / input width; timm's ratios (3.67 = 88/24 in the paper's table)
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hard-swish), the paper's notation
    stride: int


# Paper Table 1 (Large): kernel, exp size / input, #out, SE, NL, s.
LARGE = (
    BlockConfig(3, 1, 16, False, "RE", 1),
    BlockConfig(3, 4, 24, False, "RE", 2),
    BlockConfig(3, 3, 24, False, "RE", 1),
    BlockConfig(5, 3, 40, True, "RE", 2),
    BlockConfig(5, 3, 40, True, "RE", 1),
    BlockConfig(5, 3, 40, True, "RE", 1),
    BlockConfig(3, 6, 80, False, "HS", 2),
    BlockConfig(3, 2.5, 80, False, "HS", 1),
    BlockConfig(3, 2.3, 80, False, "HS", 1),
    BlockConfig(3, 2.3, 80, False, "HS", 1),
    BlockConfig(3, 6, 112, True, "HS", 1),
    BlockConfig(3, 6, 112, True, "HS", 1),
    BlockConfig(5, 6, 160, True, "HS", 2),
    BlockConfig(5, 6, 160, True, "HS", 1),
    BlockConfig(5, 6, 160, True, "HS", 1),
)
# Paper Table 2 (Small).
SMALL = (
    BlockConfig(3, 1, 16, True, "RE", 2),
    BlockConfig(3, 4.5, 24, False, "RE", 2),
    BlockConfig(3, 3.67, 24, False, "RE", 1),
    BlockConfig(5, 4, 40, True, "HS", 2),
    BlockConfig(5, 6, 40, True, "HS", 1),
    BlockConfig(5, 6, 40, True, "HS", 1),
    BlockConfig(5, 3, 48, True, "HS", 1),
    BlockConfig(5, 3, 48, True, "HS", 1),
    BlockConfig(5, 6, 96, True, "HS", 2),
    BlockConfig(5, 6, 96, True, "HS", 1),
    BlockConfig(5, 6, 96, True, "HS", 1),
)
# (blocks, last conv channels, head linear channels) per variant.
VARIANTS = {"large": (LARGE, 960, 1280), "small": (SMALL, 576, 1024)}
# Before the classifier, both variants: torchvision's; the paper's TF code uses the same keep_prob 0.8.
DROPOUT = 0.2

TF_BN = dict(bn_eps=1e-3, bn_momentum=0.01)
ACTS = {"RE": nn.ReLU, "HS": nn.Hardswish}


class InvertedResidual(nn.Module):
    """1x1 expansion -> kxk depthwise -> (SE) -> 1x1 linear projection, residual when the shape is kept."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, cfg: BlockConfig, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        act = ACTS[cfg.activation]
        conv = partial(ConvBnAct, **TF_BN)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(conv(in_channels, expanded, 1, act_layer=act))
        layers.append(conv(expanded, expanded, cfg.kernel, stride, groups=expanded, act_layer=act))
        if cfg.use_se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded / 4, 8)))
        layers.append(conv(expanded, out_channels, 1, act_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


class MobileNetV3(nn.Module):
    classifier_name = "classifier.3"

    def __init__(self, variant: str, width: float, num_classes: int, stem: str, dropout: float) -> None:
        super().__init__()
        self.variant = variant
        blocks, last_conv_channels, head_channels = VARIANTS[variant]
        cifar = stem == "cifar"
        # timm keeps the 16-channel stem for widths below 0.75 (`fix_stem`).
        in_channels = 16 if width < 0.75 else scale_channels(16, width)
        layers: list[nn.Module] = [ConvBnAct(3, in_channels, 3, 1 if cifar else 2, act_layer=nn.Hardswish, **TF_BN)]
        for cfg, stride in zip(blocks, cifar_strides((cfg.stride for cfg in blocks), cifar)):
            out_channels = scale_channels(cfg.out_channels, width)
            expanded = in_channels if cfg.expand_ratio == 1 else make_divisible(in_channels * cfg.expand_ratio, 8)
            layers.append(InvertedResidual(in_channels, expanded, out_channels, cfg, stride))
            in_channels = out_channels
        last_conv_channels = scale_channels(last_conv_channels, width)
        layers.append(ConvBnAct(in_channels, last_conv_channels, 1, act_layer=nn.Hardswish, **TF_BN))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv_channels, head_channels),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(head_channels, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)

    def adapt_to_pretrained(self, keys: list[str]) -> None:
        """Use the BN eps/momentum the file's weights were trained with: timm 1e-5/0.1, torchvision 1e-3/0.01."""
        eps, momentum = (1e-5, 0.1) if "conv_stem.weight" in keys else (1e-3, 0.01)
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        if bns and bns[0].eps != eps:
            log.info("mobilenet_v3: BatchNorm eps=%g, momentum=%g, as in the pretrained file's source", eps, momentum)
        for bn in bns:
            bn.eps, bn.momentum = eps, momentum

    def twin_module_names(self) -> dict[str, str]:
        """timm's `mobilenetv3_*` module paths -> ours (`lnrepro.models.pretrained`). timm's blocks are
        DepthwiseSeparableConv where a block does not expand (conv_dw, bn1, se, conv_pw, bn2), else
        InvertedResidual (conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3); its last conv is a stage of its own
        (`conv`, `bn1`), and its head a 1x1 conv `conv_head` where ours, torchvision's, is a linear layer."""
        configs = VARIANTS[self.variant][0]
        blocks = timm_block_names(cfg.out_channels for cfg in configs)
        stages = len({block.rpartition(".")[0] for block in blocks})
        last_stage, last_conv = f"blocks.{stages}.0", f"features.{len(configs) + 1}"  # the stage after the blocks
        names = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": "classifier.0"}
        names |= {f"{last_stage}.conv": f"{last_conv}.0", f"{last_stage}.bn1": f"{last_conv}.1"}
        names["classifier"] = "classifier.3"
        for index, block in enumerate(blocks, start=1):
            layers = self.features[index].block
            own = [
                conv_bn(f"features.{index}.block.{i}") for i, layer in enumerate(layers) if isinstance(layer, ConvBnAct)
            ]
            se = [f"features.{index}.block.{i}" for i, layer in enumerate(layers) if isinstance(layer, SqueezeExcite)]
            convs = ("conv_pw", "conv_dw", "conv_pwl") if len(own) == 3 else ("conv_dw", "conv_pw")
            names |= timm_conv_bn_names(block, convs, own, se[0] if se else None)
        return names


@register_model
def mobilenet_v3_large(*, width: float, num_classes: int, stem: str, dropout: float = DROPOUT) -> MobileNetV3:
    return MobileNetV3("large", width, num_classes, stem, dropout)


@register_model
def mobilenet_v3_small(*, width: float, num_classes: int, stem: str, dropout: float = DROPOUT) -> MobileNetV3:
    return MobileNetV3("small", width, num_classes, stem, dropout)
