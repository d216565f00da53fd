"""ShuffleNet V1 (Zhang et al., CVPR 2018), "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices".

Construction: the paper's Table 1 and the official megvii-model ShuffleNet-Series code. A 3x3 stride-2 stem and
a max-pool, three stages of 4/8/4 ShuffleNet units, global pooling and a bias-free classifier (official code).
A unit is a grouped 1x1 conv to a bottleneck of a quarter of the stage's output channels, a channel shuffle,
a 3x3 depthwise conv and a grouped 1x1 conv (Fig. 2b); the residual is added, except in the first unit of a
stage (stride 2), where the output of the grouped conv is concatenated with a 3x3 average-pooled shortcut
(Fig. 2c) and therefore only makes the channels the shortcut lacks. The first 1x1 conv of stage 2 is not grouped
(its input, the stem, has too few channels), as the paper says.

Channel rule (`stage_channels`):
- g=3 and g=8 at widths 0.5, 1.0, 1.5, 2.0: the official ShuffleNet-Series tables, verbatim.
- otherwise: the paper's Table 1 stage channels for g (144/288/576 for g=1, 200/400/800 for g=2, 240/480/960
  for g=3, 272/544/1088 for g=4, 384/768/1536 for g=8) times the width, rounded to a multiple of 4 x g so that
  the bottleneck (a quarter) splits into g groups, and a stem of 24 x width rounded to a multiple of
  lcm(4, g), so that the channels the first unit adds (stage - stem) split into g groups too. At width 1.0
  this is Table 1 exactly (stem 24); the rule also reproduces every official table entry except the 1.5x
  stem (official 24, rule 36), which is why the official tables are kept as they are.

stem="cifar": the stem conv at stride 1 and no max-pool (total stride 8).

``shuffle=False``: the paper's Table 3 ablation (sec. 4.1.2; `experiment=shufflenet_v1_table3`): the channel
shuffle is left out of every unit and nothing else changes (same layers, parameters and multiply-adds), so each
grouped 1x1 conv sees only the channels of its own group's path.

Table 3's networks against the complexities the paper prints for them (multiply-adds at 224, 1000 classes;
lnrepro/reference/shufflenet_v1_table3.csv). Table 3 prints none itself; Table 1 gives each 1x network's (137M at
g=3 and g=8: ours 137.5M and 138.4M) and Table 2 one figure per width for all five group counts (140, 38, 13).
Table 1's five figures (143/140/137/133/137M) are all the body without the 1000-way classifier, to the printed
digit (ours without it: 142.5/140.0/136.5/133.3/136.8M). Where a count differs:
- 1x: Table 2's 140 is the shared budget of the column ("roughly unchanged (~140 MFLOPs)", sec. 3.3), not the
  count of a network; Table 1's 137 is.
- 0.5x g=3 (official table, stem 12): 37.6M against 38.
- 0.5x g=8 (official table, stem 16): 40.5M against 38. The paper's figure fits Table 1's g=8 network scaled by
  exactly 0.5 (stem 12, stages 192/384/768): counts are linear in the stem width and give 38.5M (37.8M without
  the classifier) for it. That network cannot be built as Table 1 describes it, since its first unit would make
  192 - 12 = 180 channels in 8 groups; the official code uses stem 16 instead (its README prints 40M), and so do
  we.
- 0.25x g=3 (rule: stem 12): 13.3M against 13.
- 0.25x g=8 (rule: stem 8): 12.4M against 13. Table 1 scaled by 0.25 (stem 6) cannot be built (96 - 6 = 90
  channels in 8 groups); the buildable stems 8 and 16 give 12.4M and 15.7M, so Table 2's 13 is the column's
  budget, as for 1x (the same column holds 13 for the g=3 network, whose stem-12 count fits it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import ConvBnAct, channel_shuffle, init_megvii_weights, scale_channels
from lnrepro.models.registry import register_model

GROUP_CHOICES = (1, 2, 3, 4, 8)
STAGE_REPEATS = (4, 8, 4)
# Paper Table 1, output channels of stages 2-4 at width 1.0.
PAPER_STAGE_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
# Official megvii-model ShuffleNet-Series tables (ShuffleNetV1/network.py): (stem, stage2, stage3, stage4).
OFFICIAL_CHANNELS = {
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}


def stage_channels(groups: int, width: float) -> tuple[int, int, int, int]:
    """(stem, stage2, stage3, stage4) output channels: the official table, else the rule of the module docstring."""
    if (groups, width) in OFFICIAL_CHANNELS:
        return OFFICIAL_CHANNELS[(groups, width)]
    stages = tuple(scale_channels(c, width, 4 * groups) for c in PAPER_STAGE_CHANNELS[groups])
    stem = scale_channels(24, width, math.lcm(4, groups))
    return (stem, *stages)  # type: ignore[return-value]


class ShuffleUnit(nn.Module):
    """ShuffleNet unit: grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1 (paper Fig. 2b/2c)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        stride: int,
        group_first_conv: bool,
        shuffle: bool,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.groups = groups
        self.shuffle = shuffle
        bottleneck = out_channels // 4
        # A stride-2 unit concatenates its input (average-pooled), so it makes only the missing channels.
        made_channels = out_channels - in_channels if stride == 2 else out_channels
        self.compress = ConvBnAct(in_channels, bottleneck, 1, groups=groups if group_first_conv else 1)
        self.depthwise = ConvBnAct(bottleneck, bottleneck, 3, stride, groups=bottleneck, act_layer=None)
        self.expand = ConvBnAct(bottleneck, made_channels, 1, groups=groups, act_layer=None)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compress(x)
        if self.shuffle and self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.expand(self.depthwise(out))
        if self.shortcut is None:
            return self.relu(out + x)
        return torch.cat((self.shortcut(x), self.relu(out)), dim=1)


class ShuffleNetV1(nn.Module):
    classifier_name = "classifier"

    def __init__(self, width: float, num_classes: int, stem: str, groups: int, dropout: float, shuffle: bool) -> None:
        super().__init__()
        cifar = stem == "cifar"
        stem_channels, *stage_outs = stage_channels(groups, width)
        self.channels = (stem_channels, *stage_outs)
        self.conv1 = ConvBnAct(3, stem_channels, 3, 1 if cifar else 2)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        units: list[nn.Module] = []
        in_channels = stem_channels
        for stage, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, stage_outs)):
            for i in range(repeats):
                first = i == 0
                units.append(
                    ShuffleUnit(
                        in_channels,
                        out_channels,
                        groups,
                        stride=2 if first else 1,
                        group_first_conv=not (stage == 0 and first),
                        shuffle=shuffle,
                    )
                )
                in_channels = out_channels
        self.features = nn.Sequential(*units)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)  # bias-free, as the official code
        init_megvii_weights(self, stem=self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.maxpool(self.conv1(x)))
        x = x.mean((2, 3))
        return self.classifier(self.dropout(x))


@register_model(group_choices=GROUP_CHOICES)
def shufflenet_v1(
    *, width: float, num_classes: int, stem: str, groups: int = 3, dropout: float = 0.0, shuffle: bool = True
) -> ShuffleNetV1:
    """Groups 3: the paper's main model. No dropout: neither the paper nor the official code uses one.
    `shuffle`: False removes the channel shuffle (the paper's Table 3 ablation)."""
    if not isinstance(shuffle, bool):
        raise UserInputError(f"shufflenet_v1: shuffle must be true or false (got {shuffle!r})")
    stem_channels, stage2_channels = stage_channels(groups, width)[:2]
    if stage2_channels <= stem_channels:  # only for absurdly small widths
        raise UserInputError(f"shufflenet_v1: width={width:g} is too small for groups={groups}; use a width >= 0.1")
    return ShuffleNetV1(width, num_classes, stem, groups, dropout, shuffle)
