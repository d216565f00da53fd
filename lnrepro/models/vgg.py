"""VGG16 (Simonyan & Zisserman, ICLR 2015), configuration D: 13 3x3 convs with biases in five blocks, each block
closed by a 2x2 max-pool. As in torchvision's `vgg16_bn` and the common CIFAR ports, every conv is followed by
BatchNorm and ReLU (document 003's VGG16 trains from scratch with Adam, which plain VGG16 does not do reliably).
With stem="imagenet" it is torchvision's vgg16_bn, whose files load through `VGG.twin_module_names`.

`conv` (document 003's ghost_vs_dwpw table): every 3x3 conv becomes a standard 3x3 conv (default), a 3x3 depthwise +
1x1 pointwise conv ("dwpw") or a 3x3 depthwise conv + Ghost module ("ghost"); see `layers.conv_slot`.
`width` scales the conv channels (multiples of 8); 1.0 is the paper's network.

stem="imagenet": the paper's classifier, 7x7 adaptive average pooling and three fully connected layers
(4096, 4096, classes) with dropout 0.5 (the paper's value) after the first two.
stem="cifar": the five max-pools already bring a 32x32 image to 1x1, so the rule is the CIFAR ports' classifier
(kuangliu/pytorch-cifar): one linear layer on the 512 pooled features, no dropout by default.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.models.layers import conv_slot, init_weights, scale_channels
from lnrepro.models.registry import DependsOn, register_model

# Configuration D of the paper's Table 1: conv output channels, "M" for a 2x2 max-pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# The paper's 0.5 in the ImageNet head; none before the CIFAR ports' single linear layer.
DROPOUT = DependsOn(lambda stem: 0.0 if stem == "cifar" else 0.5)


class VGG(nn.Module):
    def __init__(self, width: float, num_classes: int, stem: str, conv: str, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_channels = scale_channels(item, width)
                layers.append(conv_slot(conv, in_channels, out_channels, bias=True))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        if stem == "cifar":
            self.pool_size = 1
            self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(in_channels, num_classes))
        else:
            self.pool_size = 7
            self.classifier = nn.Sequential(
                nn.Linear(in_channels * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, num_classes),
            )
        self.classifier_name = f"classifier.{len(self.classifier) - 1}"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, self.pool_size), 1)
        return self.classifier(x)

    def twin_module_names(self) -> dict[str, str]:
        """torchvision's `vgg16_bn` module paths -> ours (`lnrepro.models.pretrained`): torchvision numbers every
        conv, BN, ReLU and max-pool in one `features`; ours holds a conv with its BN and ReLU in one slot."""
        names, theirs = {}, 0
        for ours, item in enumerate(VGG16_CONFIG):
            if item == "M":
                theirs += 1
            else:
                names |= {f"features.{theirs}": f"features.{ours}.0", f"features.{theirs + 1}": f"features.{ours}.1"}
                theirs += 3
        return names


@register_model
def vgg16(
    *,
    width: float,
    num_classes: int,
    stem: str,
    conv: str = "standard",
    dropout: float | DependsOn = DROPOUT,
) -> VGG:
    return VGG(width, num_classes, stem, conv, dropout)
