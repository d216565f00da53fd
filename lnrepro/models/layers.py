"""Building blocks shared by every family of the model zoo.

Everything that more than one family needs lives here, once: the channel rounding used to scale a network's
width, the conv-BN-activation unit, squeeze-and-excitation with a hard-sigmoid gate, channel shuffle, the
depthwise-separable conv (and its reversed order), the Ghost module with its ablation options, and `conv_slot`, the
single place where `model.conv` (standard | dwpw | pwdw | ghost | ghost_module) turns into layers.

Layers are built from plain `nn.Sequential` containers where torchvision does the same, so that the parameter
names (``0.weight``, ``1.running_mean``, ...) are the ones in torchvision's and timm's state_dict files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError

#: Every value `model.conv` can take, in the order they are listed to users; each family offers its own subset
#: (`register_model(conv_choices=...)`).
CONV_KINDS = ("standard", "dwpw", "pwdw", "ghost", "ghost_module")
#: The conv kinds whose slots hold Ghost modules, which the GHOST_OPTIONS tune.
GHOST_CONV_KINDS = ("ghost", "ghost_module")
#: Family options of the Ghost module (GhostNet paper Tables 2-3, document 003's discussion): ratio s, the cheap
#: depthwise kernel d, and what makes the cheap features.
GHOST_OPTIONS = ("ghost_ratio", "ghost_kernel", "ghost_cheap")
#: `ghost_cheap` values: see `GhostModule`.
GHOST_CHEAP = ("learned", "zeros", "fixed")

ActLayer = Callable[..., nn.Module] | None


# --------------------------------------------------------------------------------------------------------------
# Width rounding
# --------------------------------------------------------------------------------------------------------------
def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round `value` to the nearest multiple of `divisor`, never going below `round_limit` x `value`.

    This is the rule of the TF-slim MobileNet code, used unchanged by torchvision (`_make_divisible`) and timm
    (`make_divisible`): rounding to multiples of 8 keeps tensors aligned for mobile kernels, and the 90% floor stops
    the rounding from removing more than 10% of a layer's channels.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return int(rounded)


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """The one width-rounding function: `channels` scaled by the width multiplier, made divisible by `divisor`.

    MobileNet V1/V2/V3, VGG16 and ResNet34 use divisor 8 (TF-slim, torchvision, timm), GhostNet divisor 4 (the
    official code), ShuffleNet V1 divisor 4 x groups (so that every grouped 1x1 conv and the bottleneck of
    width/4 split evenly into the groups). Width 1.0 returns `channels` unchanged whenever it is already divisible.
    """
    return make_divisible(channels * width, divisor)


def cifar_strides(strides: Iterable[int], cifar: bool) -> list[int]:
    """The body's strides under the MobileNet V2 CIFAR rule (stem="cifar" of MobileNet V1/V2/V3 and GhostNet): the
    first stride-2 layer runs at stride 1 (the stem conv does too), so a 32x32 image ends as a 4x4 map, total
    stride 8. Unchanged for the ImageNet stem."""
    strides = list(strides)
    if cifar and 2 in strides:
        strides[strides.index(2)] = 1
    return strides


# --------------------------------------------------------------------------------------------------------------
# Basic units
# --------------------------------------------------------------------------------------------------------------
class ConvBnAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation (the activation is left out when `act_layer` is None).

    An `nn.Sequential` like torchvision's `Conv2dNormActivation`, so the parameters are named ``0.weight``
    (conv), ``1.weight``/``1.bias``/``1.running_*`` (BN) exactly as in torchvision's files. Padding keeps the
    spatial size at stride 1 ("same" for odd kernels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act_layer: ActLayer = nn.ReLU,
        bias: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=bias,
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if act_layer is not None:
            layers.append(act_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate, as in MobileNet V3 and GhostNet.

    Global average pool -> 1x1 conv down to `squeeze_channels` -> ReLU -> 1x1 conv back -> hard-sigmoid, which
    then scales the input channel by channel. Hard-sigmoid (relu6(x + 3) / 6) is the MobileNet V3 paper's cheap
    replacement for the sigmoid. Attribute names follow torchvision's `SqueezeExcitation` (fc1, fc2).
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.scale_activation = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return x * scale


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups (ShuffleNet V1 Fig. 1c): reshape to (groups, C/groups),
    transpose, flatten. After it, each group of the next grouped conv sees channels from every group."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    x = x.transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class DepthwiseSeparable(nn.Sequential):
    """A kxk depthwise conv and a 1x1 pointwise conv, each followed by BN and the activation (MobileNet V1).

    `pointwise_act_layer` is the activation after the pointwise conv (None for a linear projection); the
    depthwise conv is always followed by `act_layer`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act_layer: ActLayer = nn.ReLU,
        pointwise_act_layer: ActLayer = nn.ReLU,
        bias: bool = False,
    ) -> None:
        super().__init__(
            ConvBnAct(
                in_channels, in_channels, kernel_size, stride, groups=in_channels, act_layer=act_layer, bias=bias
            ),
            ConvBnAct(in_channels, out_channels, 1, act_layer=pointwise_act_layer, bias=bias),
        )
        self.out_channels = out_channels


class PointwiseDepthwise(nn.Sequential):
    """`DepthwiseSeparable` in the reverse order (document 003's discussion: "DW then PW, or the other way round?
    Reversed works too, with no big difference"): a 1x1 pointwise conv (BN, `act_layer`), then a kxk depthwise conv
    on its output channels (BN, `depthwise_act_layer`, None for a linear unit). The depthwise conv keeps the
    stride: a strided 1x1 conv would drop three pixels in four unseen, so the pointwise conv runs at the input's
    resolution and the depthwise conv works on `out_channels` channels (parameters and multiply-adds differ a
    little from dwpw's)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act_layer: ActLayer = nn.ReLU,
        depthwise_act_layer: ActLayer = nn.ReLU,
        bias: bool = False,
    ) -> None:
        super().__init__(
            ConvBnAct(in_channels, out_channels, 1, act_layer=act_layer, bias=bias),
            ConvBnAct(
                out_channels,
                out_channels,
                kernel_size,
                stride,
                groups=out_channels,
                act_layer=depthwise_act_layer,
                bias=bias,
            ),
        )
        self.out_channels = out_channels


class FixedDepthwise(nn.Module):
    """A kxk depthwise conv whose weights are frozen at their initialisation: `ghost_cheap="fixed"`.

    The weights are a buffer, not a parameter, so no optimizer and no weight decay ever touches them, while they
    are still saved in checkpoints (a resumed or evaluated run computes the same features). They are drawn as
    `init_weights` draws a learned depthwise conv's (He-normal, fan_out), from the global generator, i.e. the run's
    seed. Each input channel feeds `out_channels / in_channels` outputs, as in the learned cheap conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        weight = torch.empty(out_channels, 1, kernel_size, kernel_size)
        nn.init.kaiming_normal_(weight, mode="fan_out")
        self.register_buffer("weight", weight)
        self.groups = in_channels
        self.padding = (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, padding=self.padding, groups=self.groups)


class GhostModule(nn.Module):
    """The Ghost module of GhostNet (Han et al., CVPR 2020, Fig. 2b), as in the official code.

    A "primary" conv (`kernel_size`, 1 in GhostNet; the replaced conv's kernel when a Ghost module stands in for a
    kxk conv) makes ceil(out/ratio) intrinsic feature maps; a cheap `cheap_kernel_size` depthwise conv makes
    (ratio - 1) "ghost" maps from each of them; both are concatenated and cut to `out_channels`. Ratio s=2 and a
    3x3 cheap conv (d=3) are the paper's choice (its Tables 2 and 3 vary d and s). `act_layer=None` gives the
    linear module used as the projection of a Ghost bottleneck. Names match timm (primary_conv, cheap_operation).

    `cheap` (document 003's discussion: are the cheap features needed?):

    - ``"learned"``: the paper's module, a trained depthwise conv, BN and the activation;
    - ``"zeros"``: the ghost maps are zeros, so the module's output keeps its width (the next layer is unchanged)
      while only the intrinsic maps carry anything; there is no cheap conv and no parameter for it;
    - ``"fixed"``: a fixed linear transform that is not trained: the same depthwise conv with its weights frozen
      at their random initialisation (`FixedDepthwise`, a buffer), followed by a BatchNorm without affine
      parameters (so the frozen kernels' arbitrary scale is normalised without a learned per-channel scale or
      shift coming back in) and the activation. The cheap branch then has no parameter at all; BN's running
      statistics are buffers, as everywhere.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ratio: int = 2,
        kernel_size: int = 1,
        cheap_kernel_size: int = 3,
        stride: int = 1,
        act_layer: ActLayer = nn.ReLU,
        bias: bool = False,
        cheap: str = "learned",
    ) -> None:
        super().__init__()
        if cheap not in GHOST_CHEAP:
            raise ValueError(f"cheap must be one of {GHOST_CHEAP} (got {cheap!r})")
        self.out_channels = out_channels
        self.cheap = cheap
        init_channels = -(-out_channels // ratio)  # ceil
        ghost_channels = init_channels * (ratio - 1)
        self.ghost_channels = ghost_channels
        self.primary_conv = ConvBnAct(in_channels, init_channels, kernel_size, stride, act_layer=act_layer, bias=bias)
        if cheap == "learned":
            self.cheap_operation = ConvBnAct(
                init_channels,
                ghost_channels,
                cheap_kernel_size,
                1,
                groups=init_channels,
                act_layer=act_layer,
                bias=bias,
            )
        elif cheap == "fixed":
            layers = [
                FixedDepthwise(init_channels, ghost_channels, cheap_kernel_size),
                nn.BatchNorm2d(ghost_channels, affine=False),
            ]
            if act_layer is not None:
                layers.append(act_layer(inplace=True))
            self.cheap_operation = nn.Sequential(*layers)
        else:
            self.cheap_operation = None
        # Only an odd `out_channels` needs the concatenation cut back; skip the slice otherwise.
        self._needs_cut = init_channels + ghost_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            batch, _, height, width = intrinsic.shape
            ghosts = intrinsic.new_zeros(batch, self.ghost_channels, height, width)
        else:
            ghosts = self.cheap_operation(intrinsic)
        out = torch.cat([intrinsic, ghosts], dim=1)
        return out[:, : self.out_channels] if self._needs_cut else out


# --------------------------------------------------------------------------------------------------------------
# The conv-kind switch
# --------------------------------------------------------------------------------------------------------------
def check_conv_kind(kind: str, choices: tuple[str, ...] = CONV_KINDS, model_name: str | None = None) -> str:
    """Return `kind` if it is one of `choices` (by default every kind), else raise a UserInputError naming them."""
    if kind not in choices:
        where = f" for {model_name}" if model_name else ""
        raise UserInputError(f"unknown conv kind {kind!r}{where}; choose one of: {', '.join(choices)}")
    return kind


def ghost_options(model_name: str, ratio: int, kernel: int, cheap: str) -> dict[str, Any]:
    """The Ghost options as `conv_slot` takes them, after refusing, in one sentence naming what is allowed, a Ghost
    ratio below 2 (s=1 has no ghost maps: it is the plain conv), a cheap kernel that is not a positive odd integer
    ("same" padding needs an odd kernel), or an unknown `ghost_cheap`."""
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
        raise UserInputError(f"{model_name}: ghost_ratio must be an integer >= 2 (got {ratio!r})")
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise UserInputError(
            f"{model_name}: ghost_kernel must be a positive odd integer: 1, 3, 5, 7, ... (got {kernel!r})"
        )
    if cheap not in GHOST_CHEAP:
        raise UserInputError(
            f"{model_name}: ghost_cheap={cheap!r} is not supported; choose one of: {', '.join(GHOST_CHEAP)}"
        )
    return dict(ghost_ratio=ratio, ghost_kernel=kernel, ghost_cheap=cheap)


def conv_slot(
    kind: str,
    in_ch: int,
    out_ch: int,
    stride: int = 1,
    *,
    act_layer: ActLayer = nn.ReLU,
    bias: bool = False,
    ghost_after_depthwise: bool = True,
    ghost_ratio: int = 2,
    ghost_kernel: int = 3,
    ghost_cheap: str = "learned",
) -> nn.Module:
    """The layers `model.conv` puts in one slot of a network: a 3x3 conv of VGG16 or a ResNet, a Ghost module of
    GhostNet, each with its BN and activation. For a 3x3 conv, as document 003's ghost_vs_dwpw table means it:

    - ``standard``: a 3x3 conv, BN, activation;
    - ``dwpw``: a 3x3 depthwise conv (BN, activation) and a 1x1 pointwise conv (BN, activation), the
      MobileNet factorisation;
    - ``pwdw``: the same two convs in the reverse order (`PointwiseDepthwise`; document 003's discussion);
    - ``ghost``: a 3x3 depthwise conv (BN, activation) and a Ghost module (1x1 primary conv, ratio 2, 3x3
      cheap depthwise conv) in place of the pointwise conv. Document 003's author explains that the official code
      compresses MobileNet's pointwise conv further this way; a Ghost module alone in place of a 3x3 conv
      would save less than the dwpw variant;
    - ``ghost_module``: the GhostNet paper's own CIFAR-10 experiments (sec. 4.1, Tables 2-4): the conv replaced by
      one Ghost module whose primary conv keeps the replaced conv's 3x3 kernel and stride.

    GhostNet calls this with ``ghost_after_depthwise=False``: there the slot *is* a Ghost module (a 1x1
    primary conv), so ``ghost`` gives the plain Ghost module while ``standard``, ``dwpw`` and ``pwdw`` give
    document 003's replacements of it (a 3x3 conv | a 3x3 depthwise + 1x1 pointwise conv | reversed).

    `ghost_ratio` (s), `ghost_kernel` (d) and `ghost_cheap` tune every Ghost module the slot holds (``ghost`` and
    ``ghost_module``; `GhostModule`). `act_layer=None` makes the unit linear (no activation at its output); the
    inner conv of dwpw/pwdw/ghost keeps its activation. `bias` adds conv biases (VGG16 has them).
    """
    check_conv_kind(kind)
    ghost = dict(ratio=ghost_ratio, cheap_kernel_size=ghost_kernel, cheap=ghost_cheap, bias=bias)
    if kind == "standard":
        return ConvBnAct(in_ch, out_ch, 3, stride, act_layer=act_layer, bias=bias)
    if kind == "dwpw":
        return DepthwiseSeparable(in_ch, out_ch, stride, act_layer=nn.ReLU, pointwise_act_layer=act_layer, bias=bias)
    if kind == "pwdw":
        return PointwiseDepthwise(in_ch, out_ch, stride, act_layer=nn.ReLU, depthwise_act_layer=act_layer, bias=bias)
    if kind == "ghost_module":
        return GhostModule(in_ch, out_ch, kernel_size=3, stride=stride, act_layer=act_layer, **ghost)
    if not ghost_after_depthwise:
        if stride != 1:
            raise ValueError("a Ghost module slot without depthwise conv must have stride 1")
        return GhostModule(in_ch, out_ch, act_layer=act_layer, **ghost)
    depthwise = ConvBnAct(in_ch, in_ch, 3, stride, groups=in_ch, act_layer=nn.ReLU, bias=bias)
    return nn.Sequential(depthwise, GhostModule(in_ch, out_ch, act_layer=act_layer, **ghost))


# --------------------------------------------------------------------------------------------------------------
# Initialisation and shared checks
# --------------------------------------------------------------------------------------------------------------
def init_weights(module: nn.Module) -> None:
    """The torchvision MobileNet/ResNet initialisation: He-normal (fan_out) convs, BN at identity, classifier
    weights N(0, 0.01) and zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:  # None: affine=False
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_megvii_weights(module: nn.Module, stem: nn.Module) -> None:
    """The initialisation of the official ShuffleNet V1/V2 code (megvii-model ShuffleNet-Series): the stem conv
    N(0, 0.01), every other conv N(0, 1 / input channels per group), BN weight 1 and bias 1e-4, the classifier
    N(0, 0.01). Its convs start far smaller than He-normal ones, which matters in short runs: with He-normal
    weights BN's running statistics lag the fast-moving early weights, and eval-mode accuracy stays near chance
    for the first epoch."""
    stem_convs = {id(m) for m in stem.modules() if isinstance(m, nn.Conv2d)}
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.01 if id(m) in stem_convs else 1.0 / m.weight.shape[1])
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


STEMS = ("imagenet", "cifar")


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def activation_layer(name: str, model_name: str) -> Callable[..., nn.Module]:
    """Look up an activation option by name, raising a UserInputError that lists the choices."""
    if name not in ACTIVATIONS:
        raise UserInputError(
            f"{model_name}: activation={name!r} is not supported; choose one of: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]
