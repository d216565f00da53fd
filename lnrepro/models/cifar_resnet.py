"""The CIFAR ResNets of He et al. (CVPR 2016, sec. 4.2): resnet20, resnet32, resnet44, resnet56, resnet110.

Construction: the paper's CIFAR-10 networks, 6n+2 layers. A 3x3 conv with 16 filters, then three stages of n
BasicBlocks (two 3x3 convs each, BN and ReLU) on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 channels (the first
conv of stages 2 and 3 has stride 2), global average pooling and one linear layer; n = 3, 5, 7, 9, 18. Shortcuts are
identities everywhere, option A: where a block halves the map and doubles the channels, the shortcut takes every
other pixel and pads the new channels with zeros, adding no parameter ("we use identity shortcuts in all cases
(i.e., option A), so our residual models have exactly the same depth, width, and number of parameters as the plain
counterparts"). This is also akamaster/pytorch_resnet_cifar10's construction, and the count the GhostNet paper
prints for ResNet-56 (0.85M parameters, 125M multiply-adds: ours 853,018 and 125.5M) fits it (option B's 1x1
projections would add 2,752 parameters, within the same rounding, so the paper's figure alone does not decide; He
et al.'s text does).

These are CIFAR networks: `stem="cifar"` only (`stem="imagenet"` is refused; their 32x32-to-8x8 layout has no
ImageNet form in the paper). `width` scales the 16/32/64 channels (`scale_channels`, multiples of 8; 1.0 is the
paper's network). He et al. train with SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr /10 at 32k
and 48k iterations, 64k in all.

`conv`: every conv (the stem conv included; the shortcuts have none) becomes a 3x3 conv ("standard", default), a 3x3
depthwise + 1x1 pointwise conv ("dwpw"), the reverse order ("pwdw"), a 3x3 depthwise conv + Ghost module ("ghost")
or one Ghost module with a 3x3 primary conv ("ghost_module": the GhostNet paper's Ghost-ResNet-56, Table 4); see
`layers.conv_slot`. `ghost_ratio`, `ghost_kernel` and `ghost_cheap` tune the Ghost modules.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import CONV_KINDS, conv_slot, ghost_options, init_weights, scale_channels
from lnrepro.models.registry import register_model

STAGE_CHANNELS = (16, 32, 64)
#: Blocks per stage (n) of each registered depth 6n + 2.
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class PadShortcut(nn.Module):
    """Option A: every other pixel, and the extra channels as zeros split evenly before and after."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, *self.pad))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, conv: str, ghost: dict) -> None:
        super().__init__()
        self.conv1 = conv_slot(conv, in_channels, out_channels, stride, act_layer=nn.ReLU, **ghost)
        self.conv2 = conv_slot(conv, out_channels, out_channels, 1, act_layer=None, **ghost)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(nn.Module):
    classifier_name = "fc"

    def __init__(self, blocks: int, width: float, num_classes: int, conv: str, dropout: float, ghost: dict) -> None:
        super().__init__()
        channels = [scale_channels(c, width) for c in STAGE_CHANNELS]
        in_channels = channels[0]
        self.stem = conv_slot(conv, 3, in_channels, 1, act_layer=nn.ReLU, **ghost)
        for index, out_channels in enumerate(channels):
            stride = 1 if index == 0 else 2
            layer = [CifarBasicBlock(in_channels, out_channels, stride, conv, ghost)]
            layer += [CifarBasicBlock(out_channels, out_channels, 1, conv, ghost) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
            in_channels = out_channels
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


def _register(depth: int) -> None:
    blocks = DEPTHS[depth]
    name = f"resnet{depth}"

    def builder(
        *,
        width: float,
        num_classes: int,
        stem: str,
        conv: str = "standard",
        dropout: float = 0.0,
        ghost_ratio: int = 2,
        ghost_kernel: int = 3,
        ghost_cheap: str = "learned",
    ) -> CifarResNet:
        """He et al.'s CIFAR ResNet (no dropout in the paper)."""
        if stem != "cifar":
            raise UserInputError(f"{name} is a CIFAR network: stem={stem!r} is not offered; use stem=cifar")
        ghost = ghost_options(name, ghost_ratio, ghost_kernel, ghost_cheap)
        return CifarResNet(blocks, width, num_classes, conv, dropout, ghost)

    builder.__name__ = builder.__qualname__ = name
    register_model(builder, name=name, conv_choices=CONV_KINDS)


for _depth in DEPTHS:
    _register(_depth)
