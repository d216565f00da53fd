"""ShuffleNet V2 (Ma et al., ECCV 2018), "Practical Guidelines for Efficient CNN Architecture Design".

Construction: torchvision's (its parameter names too, so torchvision files load name for name), with the
paper's Table 5 channels for widths 0.5, 1.0, 1.5 and 2.0 (see "Widths" below for the others). It differs from
the official megvii code in the downsampling unit: torchvision's left branch projects the input to half the
output channels, the official code keeps the input width there and gives the right branch the rest. Both give
the paper's figures within 2%: torchvision's construction has 41/146/299/583M multiply-adds (paper
41/146/299/591M) and 1.37/2.28/3.50/7.39M parameters (paper 1.4/2.3/3.5/7.4M).

Widths: any width > 0, by one rule (`stage_channels`). The stages keep the paper's 1 : 2 : 4 channel ratio,
so one number sets them: c, the output channels of stage 2. c(width) is the piecewise-linear interpolation of
Table 5 through (0, 0), (0.5, 48), (1.0, 116), (1.5, 176), (2.0, 244), continued beyond 2.0 along the line
through the origin and (2.0, 244) (c = 122 x width); it is rounded to an even number (`make_divisible(c, 2)`,
the shared rounding of layers.py, floor 2) because each unit splits its channels into two equal halves.
Stages 3 and 4 have 2c and 4c channels. conv1 keeps 24 channels at every width (as in Table 5); conv5 has 1024
channels for width <= 1.5 and 2048 above (the paper gives 2048 to 2.0x only). The rule passes exactly through
the table, so 0.5/1.0/1.5/2.0 give the paper's 48/96/192, 116/232/464, 176/352/704, 244/488/976 (and
torchvision's exact parameter counts), and the channels grow monotonically with the width: a sweep such as
0.5, 0.75, 1.0 (c = 48, 82, 116) has no jump at the table widths. Simply scaling the 1.0x table (116 x width)
would not reproduce it (58, 174, 232 at 0.5, 1.5, 2.0). Examples: 0.25 -> 24/48/96, 0.75 -> 82/164/328,
1.25 -> 146/292/584, 1.75 -> 210/420/840 (conv5 2048), 3.0 -> 366/732/1464.

Dropout: the paper's 2.0x model is the only one with dropout (0.2 before the classifier, official code); it is
the default there and, by the same threshold as conv5, for every width above 1.5 (0 otherwise).

stem="cifar": conv1 at stride 1 and no max-pool, as in chenyaofo/pytorch-cifar-models, whose CIFAR-10 figures
(cifar10_published.csv) this reproduces; total stride 8.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import ConvBnAct, channel_shuffle, init_megvii_weights, make_divisible
from lnrepro.models.registry import DependsOn, register_model

# Paper Table 5: output channels of conv1, stages 2-4 and conv5 per width. `stage_channels` interpolates it for
# the other widths and reproduces it exactly at these four (tests/test_models.py checks that).
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)
# Widths above this get the 2048-wide conv5 and dropout 0.2 (the paper's 2.0x model has both, 1.5x neither).
WIDE_HEAD_ABOVE = 1.5
DROPOUT = DependsOn(lambda width: 0.2 if width > WIDE_HEAD_ABOVE else 0.0)


def stage_channels(width: float) -> tuple[int, int, int, int, int]:
    """Output channels of conv1, stages 2-4 and conv5 at `width` (any width > 0; the rule is in the module
    docstring): Table 5 exactly at 0.5/1.0/1.5/2.0, piecewise-linear between, even stage channels elsewhere."""
    if not width > 0:
        raise UserInputError(f"width must be > 0 (got {width!r})")
    # Stage 2's channels through (0, 0) and the table, continued proportionally past its last width.
    points = [(0.0, 0)] + [(w, channels[1]) for w, channels in sorted(STAGE_OUT_CHANNELS.items())]
    (w_last, c_last) = points[-1]
    c = c_last * width / w_last
    for (w0, c0), (w1, c1) in zip(points, points[1:]):
        if width <= w1:
            c = c0 + (c1 - c0) * (width - w0) / (w1 - w0)
            break
    stage2 = make_divisible(c, 2)  # even: every unit splits its channels in two halves
    conv5 = 2048 if width > WIDE_HEAD_ABOVE else 1024
    return (24, stage2, 2 * stage2, 4 * stage2, conv5)


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

    def __init__(self, width: float, num_classes: int, stem: str, dropout: float) -> None:
        super().__init__()
        channels = stage_channels(width)
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
        init_megvii_weights(self, stem=self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        x = x.mean((2, 3))
        return self.fc(self.dropout(x))


@register_model
def shufflenet_v2(
    *,
    width: float,
    num_classes: int,
    stem: str,
    dropout: float | DependsOn = DROPOUT,
) -> ShuffleNetV2:
    return ShuffleNetV2(width, num_classes, stem, dropout)
