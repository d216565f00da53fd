"""MobileNet V1 (Howard et al., 2017), "Efficient Convolutional Neural Networks for Mobile Vision Applications".

Construction: the paper's Table 1, a 3x3 stride-2 conv and 13 depthwise-separable layers (3x3 depthwise + 1x1
pointwise, each with BN and ReLU), global average pooling and one fully connected layer. The width multiplier
alpha scales every layer (`scale_channels`, multiples of 8, which the paper's 1.0/0.75/0.5/0.25 already are).

Activation: ReLU as in the paper; ``activation="relu6"`` gives TF-slim's and timm's `mobilenetv1_100`, whose
files load through `MobileNetV1.twin_module_names` (`lnrepro.models.pretrained`).

stem="cifar": the stem conv and the first stride-2 depthwise layer (to 128 channels) run at stride 1, the
MobileNet V2 CIFAR rule (total stride 8: a 32x32 image ends as a 4x4 feature map).

The paper's ablations (`experiment=mobilenet_v1_table4`, `mobilenet_v1_table5`; `--reference` tables of the same
names):

- `conv` (Table 4): "dwpw" (default) is the network above; "standard" makes each of the 13 depthwise-separable
  layers one full 3x3 conv with its stride, BN and activation, the paper's "Conv MobileNet" (29.3M parameters,
  4866M multiply-adds); "pwdw" puts each layer's pointwise conv before its depthwise conv (document 003's
  discussion; `layers.PointwiseDepthwise`: the depthwise conv keeps the stride and works on the output channels).
- `shallow` (Table 5): the five separable layers at 14x14x512 (the stride-1 layers between the third and the
  fourth downsampling) are removed, the paper's "Shallow MobileNet" (2.9M parameters, 307M multiply-adds at width
  1.0), which it sets beside the 0.75 width of about the same cost.
"""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import (
    ConvBnAct,
    DepthwiseSeparable,
    PointwiseDepthwise,
    activation_layer,
    cifar_strides,
    init_weights,
    scale_channels,
)
from lnrepro.models.pretrained import conv_bn, timm_block_names, timm_conv_bn_names
from lnrepro.models.registry import register_model

# Paper Table 1: (output channels of the pointwise conv, stride of the depthwise conv) of the 13 layers.
DEPTHWISE_SEPARABLE_SETTING = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)  # fmt: skip
#: The layers `shallow=True` removes (Table 5): the five stride-1 separable layers at 14x14x512.
SHALLOW_REMOVED = (6, 7, 8, 9, 10)


class MobileNetV1(nn.Module):
    classifier_name = "classifier"

    def __init__(
        self,
        width: float,
        num_classes: int,
        stem: str,
        dropout: float,
        act_layer,
        conv: str,
        shallow: bool,
    ) -> None:
        super().__init__()
        cifar = stem == "cifar"
        in_channels = scale_channels(32, width)
        layers: list[nn.Module] = [ConvBnAct(3, in_channels, 3, 1 if cifar else 2, act_layer=act_layer)]
        strides = cifar_strides((stride for _, stride in DEPTHWISE_SEPARABLE_SETTING), cifar)
        for index, ((channels, _), stride) in enumerate(zip(DEPTHWISE_SEPARABLE_SETTING, strides)):
            if shallow and index in SHALLOW_REMOVED:
                continue
            out_channels = scale_channels(channels, width)
            if conv == "standard":
                layer: nn.Module = ConvBnAct(in_channels, out_channels, 3, stride, act_layer=act_layer)
            elif conv == "pwdw":
                layer = PointwiseDepthwise(
                    in_channels, out_channels, stride, act_layer=act_layer, depthwise_act_layer=act_layer
                )
            else:
                layer = DepthwiseSeparable(
                    in_channels, out_channels, stride, act_layer=act_layer, pointwise_act_layer=act_layer
                )
            layers.append(layer)
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.num_features = in_channels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.dropout(x))

    def twin_module_names(self) -> dict[str, str]:
        """timm's `mobilenetv1_100` module paths -> ours (`lnrepro.models.pretrained`): its blocks are
        DepthwiseSeparableConv (conv_dw, bn1, conv_pw, bn2), ours `DepthwiseSeparable` (two ConvBnAct)."""
        names = {"conv_stem": "features.0.0", "bn1": "features.0.1"}
        blocks = timm_block_names(channels for channels, _ in DEPTHWISE_SEPARABLE_SETTING)
        for index, block in enumerate(blocks, start=1):
            own = [conv_bn(f"features.{index}.0"), conv_bn(f"features.{index}.1")]
            names |= timm_conv_bn_names(block, ("conv_dw", "conv_pw"), own)
        return names


@register_model(conv_choices=("dwpw", "standard", "pwdw"))
def mobilenet_v1(
    *,
    width: float,
    num_classes: int,
    stem: str,
    conv: str = "dwpw",
    dropout: float = 0.0,
    activation: str = "relu",
    shallow: bool = False,
) -> MobileNetV1:
    """`activation`: "relu" (paper) or "relu6" (TF-slim / timm `mobilenetv1_100`). `conv` and `shallow`: the
    paper's Tables 4 and 5 (module docstring).

    The paper reports no dropout for MobileNet V1 (it uses "less regularization" than for large models), so the
    default is 0; TF-slim's keep_prob of 0.999 is the same in effect.
    """
    if not isinstance(shallow, bool):
        raise UserInputError(f"mobilenet_v1: shallow must be true or false (got {shallow!r})")
    return MobileNetV1(
        width, num_classes, stem, dropout, activation_layer(activation, "mobilenet_v1"), conv=conv, shallow=shallow
    )
