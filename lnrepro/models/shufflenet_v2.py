"""ShuffleNet V2 (Ma et al., ECCV 2018), "Practical Guidelines for Efficient CNN Architecture Design".

Construction: torchvision's (its parameter names too, so torchvision files load name for name), with the
paper's Table 5 channels for widths 0.5, 1.0, 1.5 and 2.0. It differs from the official megvii code in the
downsampling unit: torchvision's left branch projects the input to half the output channels, the official
code keeps the input width there and gives the right branch the rest. Both give the paper's figures within 2%:
torchvision's construction has 41/146/299/583M multiply-adds (paper 41/146/299/591M) and 1.37/2.28/3.50/7.39M
parameters (paper 1.4/2.3/3.5/7.4M).

The paper's 2.0x model is the only one with dropout (0.2 before the classifier, official code); it is the
default there.

stem="cifar": conv1 at stride 1 and no max-pool, as in chenyaofo/pytorch-cifar-models, whose CIFAR-10 figures
(cifar10_published.csv) this reproduces; total stride 8.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import ConvBnAct, channel_shuffle, init_weights, resolve_dropout
from lnrepro.models.registry import register_model

# Paper Table 5: output channels of conv1, stages 2-4 and conv5 per width.
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    """The ShuffleNet V2 unit (paper Fig. 3c/d).

    Stride 1: split the channels in two halves, keep one, transform the other (1x1, 3x3 depthwise, 1x1),
    concatenate and shuffle. Stride 2: both branches see the whole input and downsample it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_channels, stride),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
            _depthwise(branch_channels, stride),
            nn.BatchNorm2d(branch_channels),
            nn.Conv2d(branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    classifier_name = "fc"

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        stem: str = "imagenet",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = STAGE_OUT_CHANNELS[width]
        cifar = stem == "cifar"
        self.conv1 = ConvBnAct(3, channels[0], 3, 1 if cifar else 2)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = channels[0]
        for stage, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, channels[1:4]), start=2):
            units = [InvertedResidual(in_channels, out_channels, 2)]
            units += [InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = ConvBnAct(in_channels, channels[-1], 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        x = x.mean((2, 3))
        return self.fc(self.dropout(x))


@register_model("shufflenet_v2")
def shufflenet_v2(*, width: float, num_classes: int, stem: str, dropout: Optional[float]) -> ShuffleNetV2:
    if width not in STAGE_OUT_CHANNELS:
        raise UserInputError(
            f"shufflenet_v2: width={width:g} is not supported; choose one of "
            f"{', '.join(f'{w:g}' for w in STAGE_OUT_CHANNELS)} (the paper's Table 5)"
        )
    return ShuffleNetV2(width, num_classes, stem, resolve_dropout(dropout, 0.2 if width == 2.0 else 0.0))
