"""MobileNet V2 (Sandler et al., CVPR 2018), "Inverted Residuals and Linear Bottlenecks".

Construction: the paper's Table 2, channels scaled by the width multiplier and rounded to multiples of 8
(`scale_channels`), the last 1x1 conv 1280 x max(1, width) wide (the paper keeps 1280 for widths below 1).
It is torchvision's `mobilenet_v2` layer for layer, with its parameter names, so torchvision files load name
for name; timm's `mobilenetv2_*` (same construction) load through `MobileNetV2.twin_module_names`.

stem="cifar": the stem conv and the first stride-2 stage (24 channels) run at stride 1, as in
chenyaofo/pytorch-cifar-models, whose CIFAR-10 figures (cifar10_published.csv) this reproduces. The network's
total stride drops from 32 to 8: a 32x32 image ends as a 4x4 feature map.

The paper's two design ablations (Figure 6, sec. 6.4; `experiment=mobilenet_v2_figure6`), each leaving every
layer, parameter and multiply-add as it is:

- ``linear_bottleneck=False`` (Fig. 6a, a non-linearity in the bottleneck layer): a ReLU6 after each block's
  projection BN, before the residual addition, so the thin layers are no longer linear.
- ``shortcut`` (Fig. 6b): where the residual connections go. "bottleneck" (the paper's network): between the thin
  bottleneck layers, x + F(x) in every block that keeps its shape. "expansion": between the expanded layers, as a
  classical residual does (Fig. 3a: "classical residuals connect the layers with high number of channels"). The
  chain ... -> expansion_i -> depthwise_i -> projection_i -> expansion_(i+1) -> ... is regrouped so that the
  shortcut skips depthwise_i, projection_i and the next block's expansion: where block i keeps its shape, the
  next block's expansion output (after its ReLU6) gets block i's expansion output added. Both are t x c channels
  at the same resolution (t = 6 in both blocks), so the shortcuts of "bottleneck" (ten with Table 2's channels)
  all exist, moved to the wide tensors, with no projection and no parameter added. A shape-keeping block whose
  successor's expansion has another shape has none (only at tiny widths, where rounding makes the t = 1 block
  or the last one keep its shape). "none": no residual connection at all.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import ConvBnAct, cifar_strides, init_weights, scale_channels
from lnrepro.models.pretrained import conv_bn, timm_block_names, timm_conv_bn_names
from lnrepro.models.registry import register_model

#: `shortcut` values (paper Figure 6b): the residual between the bottlenecks (the paper's network), between the
#: expansions, or none.
SHORTCUTS = ("bottleneck", "expansion", "none")

# Paper Table 2: expansion factor t, output channels c, repeats n, stride s of the first repeat.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, with a residual connection
    between the bottlenecks when the block keeps the shape. The projection has no activation: the paper's "linear
    bottleneck" (``linear_bottleneck=False`` appends a ReLU6 to it; ``residual=False`` drops the addition, which
    the "expansion" and "none" shortcuts need).

    `keeps_shape`: stride 1 and as many channels out as in, where a shortcut can go (the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        linear_bottleneck: bool,
        residual: bool,
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.hidden_channels = hidden
        self.keeps_shape = stride == 1 and in_channels == out_channels
        self.use_res_connect = residual and self.keeps_shape
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBnAct(in_channels, hidden, 1, act_layer=nn.ReLU6))
        # the expansion is conv[0] when there is one; the layers from here on make the bottleneck from it
        self.expansion_layers = len(layers)
        layers += [
            ConvBnAct(hidden, hidden, 3, stride, groups=hidden, act_layer=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if not linear_bottleneck:  # after the BN, the parameters keep their torchvision names
            layers.append(nn.ReLU6(inplace=True))
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The expanded tensor (t x c channels; the input itself for t = 1)."""
        for layer in self.conv[: self.expansion_layers]:
            x = layer(x)
        return x

    def project(self, expanded: torch.Tensor) -> torch.Tensor:
        """The block's output made from its expanded tensor: depthwise conv and projection."""
        for layer in self.conv[self.expansion_layers :]:
            expanded = layer(expanded)
        return expanded


class MobileNetV2(nn.Module):
    classifier_name = "classifier.1"

    def __init__(
        self,
        width: float,
        num_classes: int,
        stem: str,
        dropout: float,
        linear_bottleneck: bool,
        shortcut: str,
    ) -> None:
        super().__init__()
        cifar = stem == "cifar"
        self.shortcut = shortcut
        in_channels = scale_channels(32, width)
        self.last_channels = scale_channels(1280, max(1.0, width))

        features: list[nn.Module] = [ConvBnAct(3, in_channels, 3, 1 if cifar else 2, act_layer=nn.ReLU6)]
        strides = cifar_strides((s for *_, s in INVERTED_RESIDUAL_SETTING), cifar)
        for (t, c, n, _), s in zip(INVERTED_RESIDUAL_SETTING, strides):
            out_channels = scale_channels(c, width)
            for i in range(n):
                stride = s if i == 0 else 1
                block = InvertedResidual(
                    in_channels, out_channels, stride, t, linear_bottleneck, residual=shortcut == "bottleneck"
                )
                features.append(block)
                in_channels = out_channels
        features.append(ConvBnAct(in_channels, self.last_channels, 1, act_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channels, num_classes))
        #: shortcut="expansion": indices in `features` of the blocks whose expansion output gets the previous
        #: block's added (the previous block keeps its shape and both expansions have the same channels).
        self.expansion_shortcuts: frozenset[int] = frozenset()
        if shortcut == "expansion":
            self.expansion_shortcuts = frozenset(
                index + 1
                for index, (block, after) in enumerate(zip(features, features[1:]))
                if isinstance(block, InvertedResidual)
                and isinstance(after, InvertedResidual)
                and block.keeps_shape
                and after.expansion_layers
                and after.hidden_channels == block.hidden_channels
            )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_expansion_shortcuts(x) if self.expansion_shortcuts else self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)

    def _forward_expansion_shortcuts(self, x: torch.Tensor) -> torch.Tensor:
        """`features` with the residual between the expanded layers (shortcut="expansion")."""
        previous_expansion: torch.Tensor | None = None
        for index, layer in enumerate(self.features):
            if not isinstance(layer, InvertedResidual):
                x = layer(x)
                continue
            expanded = layer.expand(x)
            if index in self.expansion_shortcuts:
                expanded = expanded + previous_expansion
            previous_expansion = expanded
            x = layer.project(expanded)
        return x

    def twin_module_names(self) -> dict[str, str]:
        """timm's `mobilenetv2_*` module paths -> ours (`lnrepro.models.pretrained`). timm's first block is a
        DepthwiseSeparableConv (conv_dw, bn1, conv_pw, bn2), the others InvertedResidual (conv_pw, bn1, conv_dw,
        bn2, conv_pwl, bn3); ours are torchvision's, whose projection is a bare conv and BN."""
        head = f"features.{len(self.features) - 1}"
        names = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": f"{head}.0", "bn2": f"{head}.1"}
        names["classifier"] = "classifier.1"
        expansions = [t for t, _, n, _ in INVERTED_RESIDUAL_SETTING for _ in range(n)]
        blocks = timm_block_names(c for _, c, n, _ in INVERTED_RESIDUAL_SETTING for _ in range(n))
        for index, (block, expansion) in enumerate(zip(blocks, expansions), start=1):
            ours = f"features.{index}.conv"
            if expansion == 1:
                own = [conv_bn(f"{ours}.0"), (f"{ours}.1", f"{ours}.2")]
                names |= timm_conv_bn_names(block, ("conv_dw", "conv_pw"), own)
            else:
                own = [conv_bn(f"{ours}.0"), conv_bn(f"{ours}.1"), (f"{ours}.2", f"{ours}.3")]
                names |= timm_conv_bn_names(block, ("conv_pw", "conv_dw", "conv_pwl"), own)
        return names


@register_model
def mobilenet_v2(
    *,
    width: float,
    num_classes: int,
    stem: str,
    dropout: float = 0.2,
    linear_bottleneck: bool = True,
    shortcut: str = "bottleneck",
) -> MobileNetV2:
    """Dropout 0.2 before the classifier: TF-slim's MobileNet V2 (keep_prob 0.8), also torchvision's.
    `linear_bottleneck` and `shortcut`: the paper's Figure 6 ablations (module docstring); the defaults are the
    paper's network."""
    if not isinstance(linear_bottleneck, bool):
        raise UserInputError(f"mobilenet_v2: linear_bottleneck must be true or false (got {linear_bottleneck!r})")
    if shortcut not in SHORTCUTS:
        raise UserInputError(
            f"mobilenet_v2: shortcut={shortcut!r} is not supported; choose one of: {', '.join(SHORTCUTS)}"
        )
    return MobileNetV2(width, num_classes, stem, dropout, linear_bottleneck, shortcut)
