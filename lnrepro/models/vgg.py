"""VGG16 (Simonyan & Zisserman, ICLR 2015), configuration D: 13 3x3 convs with biases in five blocks, each block
closed by a 2x2 max-pool. As in torchvision's `vgg16_bn` and the common CIFAR ports, every conv is followed by
BatchNorm and ReLU (document 003's VGG16 trains from scratch with Adam, which plain VGG16 does not do reliably).
With stem="imagenet" it is torchvision's vgg16_bn, whose files load through `VGG.twin_module_names`.

`conv` (document 003's ghost_vs_dwpw table): every 3x3 conv becomes a standard 3x3 conv (default), a 3x3 depthwise +
1x1 pointwise conv ("dwpw"), the reverse order ("pwdw"), a 3x3 depthwise conv + Ghost module ("ghost") or, as in
the GhostNet paper's CIFAR-10 experiments (Tables 2-4), one Ghost module with a 3x3 primary conv
("ghost_module"); see `layers.conv_slot`. `ghost_ratio` (s), `ghost_kernel` (d) and `ghost_cheap` tune the
Ghost modules of "ghost" and "ghost_module". `width` scales the conv channels (multiples of 8); 1.0 is the paper's
network.

stem="imagenet": the paper's classifier, 7x7 adaptive average pooling and three fully connected layers
(4096, 4096, classes) with dropout 0.5 (the paper's value) after the first two.
stem="cifar": the five max-pools already bring a 32x32 image to 1x1, so the rule is the CIFAR ports' classifier
(kuangliu/pytorch-cifar): one linear layer on the 512 pooled features, no dropout by default
(`cifar_classifier="linear"`). `cifar_classifier="fc512"` is the CIFAR VGG-16 of Li et al. 2017 ("Pruning Filters
for Efficient ConvNets", after Zagoruyko's cifar.torch, BN after the first linear layer, no dropout), which the
GhostNet paper's CIFAR-10 tables use: a 512-unit linear layer with BN and ReLU before the classifier (+263,680
parameters), 15.0M parameters and 313M multiply-adds in all, the figures those tables print for VGG-16.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import CONV_KINDS, conv_slot, ghost_options, init_weights, scale_channels
from lnrepro.models.registry import DependsOn, register_model

# Configuration D of the paper's Table 1: conv output channels, "M" for a 2x2 max-pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# The paper's 0.5 in the ImageNet head; none before the CIFAR ports' single linear layer.
DROPOUT = DependsOn(lambda stem: 0.0 if stem == "cifar" else 0.5)
#: `cifar_classifier` values (module docstring).
CIFAR_CLASSIFIERS = ("linear", "fc512")


class VGG(nn.Module):
    def __init__(
        self,
        width: float,
        num_classes: int,
        stem: str,
        conv: str,
        dropout: float,
        ghost: dict | None = None,
        cifar_classifier: str = "linear",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_channels = scale_channels(item, width)
                layers.append(conv_slot(conv, in_channels, out_channels, bias=True, **(ghost or {})))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        if stem == "cifar" and cifar_classifier == "fc512":
            self.pool_size = 1
            self.classifier = nn.Sequential(
                nn.Linear(in_channels, 512),
                nn.BatchNorm1d(512),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(512, num_classes),
            )
        elif stem == "cifar":
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


@register_model(conv_choices=CONV_KINDS)  # every kind conv_slot builds
def vgg16(
    *,
    width: float,
    num_classes: int,
    stem: str,
    conv: str = "standard",
    dropout: float | DependsOn = DROPOUT,
    ghost_ratio: int = 2,
    ghost_kernel: int = 3,
    ghost_cheap: str = "learned",
    cifar_classifier: str = "linear",
) -> VGG:
    ghost = ghost_options("vgg16", ghost_ratio, ghost_kernel, ghost_cheap)
    if cifar_classifier not in CIFAR_CLASSIFIERS:
        raise UserInputError(
            f"vgg16: cifar_classifier={cifar_classifier!r} is not supported; choose one of: "
            f"{', '.join(CIFAR_CLASSIFIERS)}"
        )
    if stem != "cifar" and cifar_classifier != "linear":
        raise UserInputError(
            f"vgg16: cifar_classifier={cifar_classifier!r} is a stem=cifar head; stem={stem!r} has the paper's "
            "4096-4096 head"
        )
    return VGG(width, num_classes, stem, conv, dropout, ghost, cifar_classifier)
