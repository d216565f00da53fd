"""GhostNet (Han et al., CVPR 2020), "GhostNet: More Features from Cheap Operations".

Construction: the official code (huawei-noah, also timm's `ghostnet_*`), paper Table 1. A 3x3 stride-2 stem,
16 Ghost bottlenecks, a 1x1 conv to 960 x width channels, global pooling, a 1x1 conv to 1280 channels (with
bias, ReLU; not scaled by width), dropout 0.2 and the classifier. Ghost modules use ratio 2 and a 3x3 cheap
depthwise conv; squeeze-and-excitation uses a hard-sigmoid gate and squeezes to a quarter rounded to a multiple
of 4. Channels are scaled by width and rounded to multiples of 4 (`scale_channels(c, width, 4)`), so any
width > 0 builds; 0.5, 1.0 and 1.3 are the paper's.

`conv` (document 003's ghost_vs_dwpw table): every Ghost module becomes a standard 3x3 conv ("standard"), a 3x3
depthwise + 1x1 pointwise conv ("dwpw"), the same two in the reverse order ("pwdw", document 003's discussion) or
stays itself ("ghost", the default). The stem, the depthwise convs of the bottlenecks, the shortcuts, SE and the
head are unchanged. "ghost_module" (a Ghost module in place of each conv, the other families' switch) is refused:
GhostNet's slots already are Ghost modules. Under conv="ghost", `ghost_ratio` (s, default 2), `ghost_kernel` (d,
the cheap depthwise kernel, default 3) and `ghost_cheap` ("learned", "zeros", "fixed": `layers.GhostModule`) tune
all 32 of them; the paper's ImageNet GhostNet is s=2, d=3, learned.

stem="cifar": the stem conv and the first stride-2 bottleneck run at stride 1, the MobileNet V2 CIFAR rule
(total stride 8). Note that the ghost_vs_dwpw table's GhostNet rows are the unmodified network (stem="imagenet")
fed 32x32 images; the CIFAR stem gives a different, larger (in multiply-adds) network.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.models.layers import (
    ConvBnAct,
    SqueezeExcite,
    cifar_strides,
    conv_slot,
    ghost_options,
    init_weights,
    scale_channels,
)
from lnrepro.models.registry import register_model

# Paper Table 1 / official code, one row per bottleneck, grouped in the official code's stages:
# depthwise kernel, expansion (mid) channels, output channels, SE ratio, stride.
STAGES = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2),),
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),
    ((3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1)),
)
HEAD_CHANNELS = 1280


class GhostBottleneck(nn.Module):
    """Ghost module (ReLU) -> [kxk depthwise at stride 2] -> [SE] -> linear Ghost module, plus a shortcut
    (identity, or depthwise kxk + 1x1 conv when the shape changes). Paper Fig. 3; names follow timm."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        se_ratio: float,
        conv: str,
        ghost: dict | None = None,
    ) -> None:
        super().__init__()
        ghost = ghost or {}
        self.ghost1 = conv_slot(
            conv, in_channels, mid_channels, act_layer=nn.ReLU, ghost_after_depthwise=False, **ghost
        )
        if stride > 1:
            self.conv_dw = nn.Conv2d(
                mid_channels, mid_channels, kernel, stride, (kernel - 1) // 2, groups=mid_channels, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_channels)
        else:
            self.conv_dw = self.bn_dw = None
        self.se = SqueezeExcite(mid_channels, scale_channels(mid_channels, se_ratio, 4)) if se_ratio > 0 else None
        self.ghost2 = conv_slot(conv, mid_channels, out_channels, act_layer=None, ghost_after_depthwise=False, **ghost)
        if in_channels == out_channels and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, kernel, stride, (kernel - 1) // 2, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.conv_dw is not None:
            out = self.bn_dw(self.conv_dw(out))
        if self.se is not None:
            out = self.se(out)
        out = self.ghost2(out)
        return out + self.shortcut(x)


class GhostNet(nn.Module):
    classifier_name = "classifier"

    def __init__(
        self, width: float, num_classes: int, stem: str, conv: str, dropout: float, ghost: dict | None = None
    ) -> None:
        super().__init__()
        cifar = stem == "cifar"
        stem_channels = scale_channels(16, width, 4)
        self.conv_stem = nn.Conv2d(3, stem_channels, 3, 1 if cifar else 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.act1 = nn.ReLU(inplace=True)

        in_channels = stem_channels
        strides = iter(cifar_strides((block[-1] for stage in STAGES for block in stage), cifar))
        stages: list[nn.Module] = []
        for stage in STAGES:
            blocks = []
            for kernel, expansion, channels, se_ratio, _ in stage:
                stride = next(strides)
                out_channels = scale_channels(channels, width, 4)
                mid_channels = scale_channels(expansion, width, 4)
                blocks.append(
                    GhostBottleneck(in_channels, mid_channels, out_channels, kernel, stride, se_ratio, conv, ghost)
                )
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        last_conv_channels = scale_channels(STAGES[-1][-1][1], width, 4)  # 960 x width
        stages.append(nn.Sequential(ConvBnAct(in_channels, last_conv_channels, 1)))
        self.blocks = nn.Sequential(*stages)

        self.conv_head = nn.Conv2d(last_conv_channels, HEAD_CHANNELS, 1, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(self.act2(self.conv_head(x)), 1)
        return self.classifier(self.dropout(x))

    def twin_module_names(self) -> dict[str, str]:
        """timm's `ghostnet_*` module paths -> ours (`lnrepro.models.pretrained`): timm's SE names its convs
        conv_reduce/conv_expand (ours fc1/fc2, as torchvision's), and its last stage is a ConvBnAct of `conv` and
        `bn1` where ours numbers them."""
        last_stage = f"blocks.{len(STAGES)}.0"
        names = {f"{last_stage}.conv": f"{last_stage}.0", f"{last_stage}.bn1": f"{last_stage}.1"}
        for path, module in self.named_modules():
            if isinstance(module, SqueezeExcite):
                names |= {f"{path}.conv_reduce": f"{path}.fc1", f"{path}.conv_expand": f"{path}.fc2"}
        return names


@register_model(
    conv_choices=("ghost", "standard", "dwpw", "pwdw"),
    conv_refusals={
        "ghost_module": "its slots already are Ghost modules (conv=ghost), which model.ghost_ratio, "
        "model.ghost_kernel and model.ghost_cheap tune"
    },
)
def ghostnet(
    *,
    width: float,
    num_classes: int,
    stem: str,
    conv: str = "ghost",
    dropout: float = 0.2,
    ghost_ratio: int = 2,
    ghost_kernel: int = 3,
    ghost_cheap: str = "learned",
) -> GhostNet:
    """Dropout 0.2 before the classifier: the official code. Ghost modules: ratio 2, 3x3 cheap convs (paper)."""
    ghost = ghost_options("ghostnet", ghost_ratio, ghost_kernel, ghost_cheap)
    return GhostNet(width, num_classes, stem, conv, dropout, ghost)
