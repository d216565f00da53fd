"""ResNet34 (He et al., CVPR 2016): BasicBlocks (two 3x3 convs) in four stages of [3, 4, 6, 3] blocks with
64/128/256/512 channels, 1x1 projection shortcuts (with BN) where the shape changes (option B of the paper).

stem="imagenet": torchvision's resnet34, a 7x7 stride-2 conv and a 3x3 stride-2 max-pool; torchvision's resnet34
files load through `ResNet.twin_module_names`.
stem="cifar": the CIFAR ResNet34 of the ghost_vs_dwpw table (kuangliu/pytorch-cifar): a 3x3 stride-1 conv and no
max-pool (total stride 8).

`conv` (document 003's ghost_vs_dwpw table): every non-1x1 conv becomes a standard 3x3 conv (default), a 3x3
depthwise + 1x1 pointwise conv ("dwpw"), the reverse order ("pwdw"), a 3x3 depthwise conv + Ghost module ("ghost")
or one Ghost module with a 3x3 primary conv ("ghost_module", the GhostNet paper's CIFAR-10 replacement); see
`layers.conv_slot`; `ghost_ratio`, `ghost_kernel` and `ghost_cheap` tune the Ghost modules. That includes the 3x3
stem conv of the CIFAR network (the table's parameter and FLOP counts need it); the 7x7 ImageNet stem and the 1x1
shortcuts stay standard convs. `width` scales the channels (multiples of 8).
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.models.layers import CONV_KINDS, ConvBnAct, conv_slot, ghost_options, init_weights, scale_channels
from lnrepro.models.registry import register_model

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_CHANNELS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, conv: str, ghost: dict | None = None) -> None:
        super().__init__()
        ghost = ghost or {}
        self.conv1 = conv_slot(conv, in_channels, out_channels, stride, act_layer=nn.ReLU, **ghost)
        self.conv2 = conv_slot(conv, out_channels, out_channels, 1, act_layer=None, **ghost)
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvBnAct(in_channels, out_channels, 1, stride, act_layer=None)
        else:
            self.downsample = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNet(nn.Module):
    classifier_name = "fc"

    def __init__(
        self, width: float, num_classes: int, stem: str, conv: str, dropout: float, ghost: dict | None = None
    ) -> None:
        super().__init__()
        ghost = ghost or {}
        in_channels = scale_channels(STAGE_CHANNELS[0], width)
        if stem == "cifar":
            self.stem = conv_slot(conv, 3, in_channels, 1, act_layer=nn.ReLU, **ghost)
        else:
            self.stem = nn.Sequential(ConvBnAct(3, in_channels, 7, 2), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        for index, (blocks, channels) in enumerate(zip(STAGE_BLOCKS, STAGE_CHANNELS)):
            out_channels = scale_channels(channels, width)
            stride = 1 if index == 0 else 2
            layer = [BasicBlock(in_channels, out_channels, stride, conv, ghost)]
            layer += [BasicBlock(out_channels, out_channels, 1, conv, ghost) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
            in_channels = out_channels
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))

    def twin_module_names(self) -> dict[str, str]:
        """torchvision's `resnet34` module paths -> ours (`lnrepro.models.pretrained`): where torchvision has a conv
        and its BN side by side (`conv1`, `bn1`), ours is one conv-kind slot holding both (`conv1.0`, `conv1.1`)."""
        names = {"conv1": "stem.0.0", "bn1": "stem.0.1"}
        for path, module in self.named_modules():
            if isinstance(module, BasicBlock):
                for n in (1, 2):
                    names |= {f"{path}.conv{n}": f"{path}.conv{n}.0", f"{path}.bn{n}": f"{path}.conv{n}.1"}
        return names


@register_model(conv_choices=CONV_KINDS)  # every kind conv_slot builds
def resnet34(
    *,
    width: float,
    num_classes: int,
    stem: str,
    conv: str = "standard",
    dropout: float = 0.0,
    ghost_ratio: int = 2,
    ghost_kernel: int = 3,
    ghost_cheap: str = "learned",
) -> ResNet:
    """The paper uses no dropout."""
    ghost = ghost_options("resnet34", ghost_ratio, ghost_kernel, ghost_cheap)
    return ResNet(width, num_classes, stem, conv, dropout, ghost)
