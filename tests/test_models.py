"""The model zoo's interface: every family, width and option builds and trains a step; bad input is refused with
a clear `UserInputError`; the shared layers do what their docstrings say.

Published figures and the torchvision/timm twins are in test_model_fidelity.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models import build_model, list_models, register_model, resolved_arguments
from lnrepro.models.layers import (
    ConvBnAct,
    DepthwiseSeparable,
    GhostModule,
    SqueezeExcite,
    channel_shuffle,
    conv_slot,
    make_divisible,
    scale_channels,
)
from lnrepro.models.shufflenet_v1 import OFFICIAL_CHANNELS, stage_channels
from lnrepro.models.shufflenet_v2 import stage_channels as v2_stage_channels

ALL_MODELS = [
    "ghostnet",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet110",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet56",
    "shufflenet_v1",
    "shufflenet_v2",
    "vgg16",
]


pytestmark = pytest.mark.usefixtures("one_thread")

#: He et al.'s CIFAR ResNets, which refuse stem=imagenet.
CIFAR_ONLY = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def test_list_models():
    assert list_models() == ALL_MODELS


# ---------------------------------------------------------------------------------------------------------------
# Every family, width and option: forward and backward at 32x32 (both stems)
# ---------------------------------------------------------------------------------------------------------------
def _variants() -> list[tuple[str, dict]]:
    variants: list[tuple[str, dict]] = []
    variants += [("mobilenet_v1", dict(width=w)) for w in (0.25, 0.5, 0.75, 1.0, 0.6)]
    variants += [("mobilenet_v1", dict(activation="relu6"))]
    variants += [("mobilenet_v2", dict(width=w)) for w in (0.35, 0.5, 0.75, 1.0, 1.4, 0.6)]
    for name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        variants += [(name, dict(width=w)) for w in (0.5, 0.75, 1.0, 1.25)]
    variants += [
        ("shufflenet_v1", dict(width=w, groups=g)) for g in (1, 2, 3, 4, 8) for w in (0.25, 0.5, 1.0, 1.5, 2.0)
    ]
    variants += [("shufflenet_v1", dict(width=0.7, groups=4))]
    variants += [("shufflenet_v2", dict(width=w)) for w in (0.5, 1.0, 1.5, 2.0)]
    variants += [("shufflenet_v2", dict(width=w)) for w in (0.25, 0.75, 1.25, 1.75)]  # off the table
    variants += [("ghostnet", dict(width=w, conv=c)) for w in (0.5, 1.0, 1.3) for c in ("standard", "dwpw", "ghost")]
    variants += [("ghostnet", dict(width=0.7))]
    variants += [("vgg16", dict(conv=c)) for c in ("standard", "dwpw", "ghost")]
    variants += [("resnet34", dict(conv=c)) for c in ("standard", "dwpw", "ghost")]
    variants += [("vgg16", dict(width=0.5)), ("resnet34", dict(width=0.5))]
    variants += [("resnet20", dict(conv=c)) for c in ("standard", "dwpw", "pwdw", "ghost", "ghost_module")]
    variants += [(name, {}) for name in CIFAR_ONLY[1:]]
    variants += [("vgg16", dict(conv=c, width=0.25)) for c in ("pwdw", "ghost_module")]
    variants += [("mobilenet_v1", dict(conv=c, width=0.25)) for c in ("standard", "pwdw")]
    variants += [("mobilenet_v1", dict(shallow=True, width=0.25)), ("ghostnet", dict(conv="pwdw", width=0.5))]
    variants += [("ghostnet", dict(width=0.5, ghost_cheap="fixed")), ("ghostnet", dict(width=0.5, ghost_cheap="zeros"))]
    return variants


def _id(name: str, kwargs: dict) -> str:
    return "-".join([name, *(f"{k}={v}" for k, v in kwargs.items())])


def _train_step(model: nn.Module, images: torch.Tensor, num_classes: int) -> None:
    model.train()
    out = model(images)
    assert out.shape == (images.shape[0], num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(images.shape[0]) % num_classes).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:3]}"


# every variant with each stem it offers (the CIFAR ResNets refuse stem=imagenet: a test of its own)
STEM_VARIANTS = [
    (name, kwargs, stem)
    for stem in ("cifar", "imagenet")
    for name, kwargs in _variants()
    if not (name in CIFAR_ONLY and stem == "imagenet")
]


@pytest.mark.parametrize("name,kwargs,stem", STEM_VARIANTS, ids=[f"{_id(n, k)}-{s}" for n, k, s in STEM_VARIANTS])
def test_forward_backward_32x32(name, kwargs, stem):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, stem=stem, **kwargs)
    _train_step(model, torch.randn(2, 3, 32, 32), 10)


SAMPLE_224 = [
    ("mobilenet_v1", {}),
    ("mobilenet_v2", {}),
    ("mobilenet_v3_large", {}),
    ("mobilenet_v3_small", {}),
    ("shufflenet_v1", {}),
    ("shufflenet_v2", {}),
    ("ghostnet", {}),
    ("ghostnet", dict(conv="dwpw")),
    ("resnet34", {}),
    pytest.param("vgg16", {}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,kwargs", SAMPLE_224)
def test_forward_backward_224x224(name, kwargs):
    torch.manual_seed(0)
    _train_step(build_model(name, num_classes=1000, **kwargs), torch.randn(1, 3, 224, 224), 1000)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_any_input_resolution(name):
    model = build_model(name, num_classes=7, stem="cifar" if name in CIFAR_ONLY else "imagenet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 45)).shape == (1, 7)


@pytest.mark.parametrize(
    "name,kwargs,spatial",
    [
        ("mobilenet_v1", {}, 4),
        ("mobilenet_v2", {}, 4),
        ("mobilenet_v3_large", {}, 4),
        ("mobilenet_v3_small", {}, 4),
        ("shufflenet_v1", {}, 4),
        ("shufflenet_v2", {}, 4),
        ("ghostnet", {}, 4),
        ("resnet34", {}, 4),
        ("vgg16", {}, 2),
    ],
)
def test_cifar_stem_keeps_a_4x4_final_map(name, kwargs, spatial):
    """Each family's stem=cifar rule gives total stride 8 at the last conv (VGG16 keeps its five max-pools:
    its last conv sees 2x2, the last max-pool makes it 1x1)."""
    model = build_model(name, num_classes=10, stem="cifar", **kwargs).eval()
    last_conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    if name in ("ghostnet",):  # its last conv is the head on pooled features; look at the last stage instead
        last_conv = model.blocks[-1][0][0]
    sizes = []
    handle = last_conv.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert sizes == [spatial]


def test_dropout_defaults_and_override():
    def dropouts(model):
        return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]

    assert dropouts(build_model("mobilenet_v2")) == [0.2]
    assert dropouts(build_model("mobilenet_v3_small")) == [0.2]
    assert dropouts(build_model("ghostnet")) == [0.2]
    assert dropouts(build_model("shufflenet_v2", width=1.0)) == [0.0]
    assert dropouts(build_model("shufflenet_v2", width=2.0)) == [0.2]
    assert dropouts(build_model("shufflenet_v2", width=1.25)) == [0.0]  # 0.2 above 1.5, with the 2048-wide conv5
    assert dropouts(build_model("shufflenet_v2", width=1.75)) == [0.2]
    assert dropouts(build_model("vgg16", num_classes=10, stem="cifar")) == [0.0]
    assert dropouts(build_model("mobilenet_v2", dropout=0.35)) == [0.35]
    assert dropouts(build_model("resnet34", dropout=0.1, num_classes=10, stem="cifar")) == [0.1]


def test_shufflenet_v1_structure():
    model = build_model("shufflenet_v1", groups=3)
    first, second = model.features[0], model.features[1]
    assert first.compress[0].groups == 1  # stage 2's first pointwise conv is not grouped (paper, official code)
    assert second.compress[0].groups == 3 and first.expand[0].groups == 3
    assert isinstance(first.shortcut, nn.AvgPool2d) and second.shortcut is None
    assert model.classifier.bias is None  # official code: bias-free classifier
    # Official tables are used verbatim; the channel rule is Table 1 at width 1.0 and keeps convs valid elsewhere.
    assert stage_channels(3, 1.5) == OFFICIAL_CHANNELS[(3, 1.5)] == (24, 360, 720, 1440)
    assert stage_channels(1, 1.0) == (24, 144, 288, 576)
    assert stage_channels(2, 1.0) == (24, 200, 400, 800)
    assert stage_channels(4, 1.0) == (24, 272, 544, 1088)
    for groups in (1, 2, 3, 4, 8):
        for width in (0.25, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0):
            stem, *stages = stage_channels(groups, width)
            assert all(c % (4 * groups) == 0 for c in stages)
            assert (stages[0] - stem) % groups == 0 and stages[0] > stem


def test_shufflenet_v2_channels_at_any_width():
    # Table 5 (torchvision's channels) is reproduced exactly by the rule.
    table = {
        0.5: (24, 48, 96, 192, 1024),
        1.0: (24, 116, 232, 464, 1024),
        1.5: (24, 176, 352, 704, 1024),
        2.0: (24, 244, 488, 976, 2048),
    }
    for width, channels in table.items():
        assert v2_stage_channels(width) == channels
    # Off the table: piecewise-linear in between, even, stages 1 : 2 : 4, conv5 2048 above 1.5.
    assert v2_stage_channels(0.25) == (24, 24, 48, 96, 1024)
    assert v2_stage_channels(0.75) == (24, 82, 164, 328, 1024)
    assert v2_stage_channels(1.25) == (24, 146, 292, 584, 1024)
    assert v2_stage_channels(1.75) == (24, 210, 420, 840, 2048)
    widths = [i / 100 for i in range(1, 401)]
    all_channels = [v2_stage_channels(w) for w in widths]
    for (_, *stages, _), (_, *next_stages, _) in zip(all_channels, all_channels[1:]):
        assert stages[1] == 2 * stages[0] and stages[2] == 4 * stages[0] and stages[0] % 2 == 0 and stages[0] >= 2
        assert next_stages >= stages  # monotonic in the width, no jump at the table widths
    assert [c[-1] for c in all_channels] == [1024 if w <= 1.5 else 2048 for w in widths]
    # The network is built with those channels.
    model = build_model("shufflenet_v2", width=0.75)
    assert [getattr(model, f"stage{i}")[-1].branch2[-3].out_channels * 2 for i in (2, 3, 4)] == [82, 164, 328]
    assert model.conv5.out_channels == 1024 and model.fc.in_features == 1024


def test_conv_switch_replaces_the_right_convs():
    def kernels(model):
        return sorted(
            {(m.kernel_size[0], m.groups == m.in_channels != 1) for m in model.modules() if isinstance(m, nn.Conv2d)}
        )

    # ResNet34, CIFAR: only 3x3 convs (standard) or 3x3 depthwise + 1x1 (dwpw); 1x1 shortcuts in both.
    assert kernels(build_model("resnet34", stem="cifar", conv="standard")) == [(1, False), (3, False)]
    assert kernels(build_model("resnet34", stem="cifar", conv="dwpw")) == [(1, False), (3, True)]
    ghost = build_model("ghostnet", conv="ghost")
    assert sum(isinstance(m, GhostModule) for m in ghost.modules()) == 32  # 16 bottlenecks x 2
    standard = build_model("ghostnet", conv="standard")
    assert not any(isinstance(m, GhostModule) for m in standard.modules())
    assert isinstance(standard.blocks[0][0].ghost1, ConvBnAct)
    assert standard.blocks[0][0].ghost1[0].kernel_size == (3, 3)
    vgg_ghost = build_model("vgg16", stem="cifar", conv="ghost")
    assert sum(isinstance(m, GhostModule) for m in vgg_ghost.modules()) == 13


# ---------------------------------------------------------------------------------------------------------------
# Shared layers
# ---------------------------------------------------------------------------------------------------------------
def test_make_divisible_and_scale_channels():
    assert make_divisible(32 * 0.35) == 16  # 8 would lose more than 10%
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(1280 * 1.4) == 1792
    assert scale_channels(960, 0.5, 4) == 480
    assert scale_channels(240, 1.0, 12) == 240
    assert scale_channels(68, 1.0, 16) == 64


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_ghost_module_and_slots_shapes():
    x = torch.randn(2, 8, 16, 16)
    assert GhostModule(8, 13)(x).shape == (2, 13, 16, 16)  # odd width: concatenation cut back
    assert SqueezeExcite(8, 4)(x).shape == x.shape
    assert DepthwiseSeparable(8, 12, stride=2)(x).shape == (2, 12, 8, 8)
    for kind in ("standard", "dwpw", "ghost"):
        assert conv_slot(kind, 8, 12, 2)(x).shape == (2, 12, 8, 8)
        linear = conv_slot(kind, 8, 12, 1, act_layer=None)
        assert not isinstance(list(linear.modules())[-1], (nn.ReLU, nn.ReLU6))


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
BAD_INPUT = [
    ("foo", {}, "unknown model 'foo'; choose one of: ghostnet, mobilenet_v1, mobilenet_v2"),
    ("ghostnet", dict(width=-1), "width must be > 0 (got -1)"),
    ("mobilenet_v2", dict(width=0), "width must be > 0 (got 0)"),
    ("mobilenet_v2", dict(width="wide"), "width must be > 0 (got 'wide')"),
    ("mobilenet_v2", dict(num_classes=0), "num_classes must be a positive integer (got 0)"),
    ("mobilenet_v2", dict(stem="tiny"), "unknown stem 'tiny'; choose one of: imagenet, cifar"),
    (
        "ghostnet",
        dict(conv="sparse"),
        "unknown conv kind 'sparse' for ghostnet; choose one of: ghost, standard, dwpw, pwdw",
    ),
    (
        "vgg16",
        dict(conv="depthwise"),
        "unknown conv kind 'depthwise' for vgg16; choose one of: standard, dwpw, pwdw, ghost, ghost_module",
    ),
    (
        "mobilenet_v2",
        dict(conv="ghost"),
        "mobilenet_v2 has no conv-kind switch (conv='ghost'); model.conv applies to ghostnet, mobilenet_v1, "
        "resnet110, resnet20, resnet32, resnet34, resnet44, resnet56, vgg16 only",
    ),
    ("shufflenet_v1", dict(groups=5), "shufflenet_v1: groups=5 is not supported; choose one of 1, 2, 3, 4, 8"),
    (
        "shufflenet_v2",
        dict(groups=2),
        "shufflenet_v2 has no groups option (groups=2); model.groups applies to shufflenet_v1 only",
    ),
    ("shufflenet_v2", dict(width=0), "width must be > 0 (got 0)"),
    ("shufflenet_v2", dict(width=-1), "width must be > 0 (got -1)"),
    ("mobilenet_v2", dict(dropout=1.5), "dropout must be in [0, 1) or null for the paper's value (got 1.5)"),
    (
        "shufflenet_v2",
        dict(activation="relu6"),
        "shufflenet_v2 does not take option 'activation'; its options are: none",
    ),
    (
        "mobilenet_v2",
        dict(activation="relu6"),
        "mobilenet_v2 does not take option 'activation'; its options are: linear_bottleneck, shortcut",
    ),
    ("mobilenet_v1", dict(act="relu6"), "mobilenet_v1 does not take option 'act'; its options are: activation"),
    (
        "mobilenet_v1",
        dict(activation="gelu"),
        "mobilenet_v1: activation='gelu' is not supported; choose one of: relu, relu6",
    ),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_INPUT, ids=[m.split(";")[0][:40] for *_, m in BAD_INPUT])
def test_bad_input_raises_user_input_error(name, kwargs, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        build_model(name, **kwargs)


def test_user_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        build_model("resnet50")


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(UserInputError, match=r"pretrained file '.*nope\.pth' does not exist"):
        build_model("mobilenet_v2", pretrained=tmp_path / "nope.pth")


def test_pretrained_not_a_state_dict(tmp_path):
    (tmp_path / "text.pth").write_text("not a torch file")
    with pytest.raises(UserInputError, match=r"pretrained file '.*text\.pth' cannot be read .*not a PyTorch file"):
        build_model("mobilenet_v2", pretrained=tmp_path / "text.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserInputError, match="is not a state_dict"):
        build_model("mobilenet_v2", pretrained=tmp_path / "list.pth")


def test_pretrained_shape_mismatch_names_the_first_key(tmp_path):
    torch.save(build_model("mobilenet_v2", width=0.5).state_dict(), tmp_path / "w050.pth")
    with pytest.raises(
        UserInputError,
        match=r"key 'features\.0\.0\.weight' has shape \(16, 3, 3, 3\), the model "
        r"needs \(32, 3, 3, 3\)",
    ):
        build_model("mobilenet_v2", width=1.0, pretrained=tmp_path / "w050.pth")


def test_pretrained_of_another_network_names_its_first_key_without_a_place(tmp_path):
    torch.save(build_model("shufflenet_v2", width=1.0).state_dict(), tmp_path / "shufflenet.pth")
    with pytest.raises(
        UserInputError, match=r"does not fit mobilenet_v2: its key 'conv1\.0\.weight' has no place in it"
    ):
        build_model("mobilenet_v2", pretrained=tmp_path / "shufflenet.pth")


def test_pretrained_file_missing_a_weight_names_it(tmp_path):
    state = build_model("mobilenet_v2", width=0.5).state_dict()
    del state["features.1.conv.1.weight"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(
        UserInputError, match=r"does not fit mobilenet_v2: it has no value for 'features\.1\.conv\.1\.weight'"
    ):
        build_model("mobilenet_v2", width=0.5, pretrained=tmp_path / "w.pth")


def test_pretrained_file_holding_code_is_refused_with_how_to_save_its_tensors(tmp_path):
    torch.save(build_model("mobilenet_v2", width=0.5), tmp_path / "pickled_model.pth")  # a whole pickled nn.Module
    with pytest.raises(
        UserInputError, match=r"is refused: .*could run code .*torch\.save\(model\.state_dict\(\), path\)"
    ):
        build_model("mobilenet_v2", width=0.5, pretrained=tmp_path / "pickled_model.pth")


# ---------------------------------------------------------------------------------------------------------------
# Family defaults: declared once, by the builder's keyword defaults
# ---------------------------------------------------------------------------------------------------------------
def test_resolved_arguments_fill_in_each_family_default():
    assert resolved_arguments("ghostnet") == dict(
        width=1.0,
        num_classes=1000,
        stem="imagenet",
        conv="ghost",
        dropout=0.2,
        ghost_ratio=2,
        ghost_kernel=3,
        ghost_cheap="learned",
    )
    assert resolved_arguments("shufflenet_v1")["groups"] == 3
    assert resolved_arguments("shufflenet_v1", groups=8)["groups"] == 8
    assert resolved_arguments("vgg16", conv="dwpw", dropout=0.1) == dict(
        width=1.0,
        num_classes=1000,
        stem="imagenet",
        conv="dwpw",
        dropout=0.1,
        ghost_ratio=2,
        ghost_kernel=3,
        ghost_cheap="learned",
        cifar_classifier="linear",
    )
    assert resolved_arguments("mobilenet_v1")["conv"] == "dwpw" and not resolved_arguments("mobilenet_v1")["shallow"]
    # defaults that depend on other arguments
    assert [resolved_arguments("vgg16", stem=stem)["dropout"] for stem in ("imagenet", "cifar")] == [0.5, 0.0]
    assert [resolved_arguments("shufflenet_v2", width=w)["dropout"] for w in (1.5, 2.0)] == [0.0, 0.2]
    assert resolved_arguments("mobilenet_v1", activation=None)["activation"] == "relu"  # None: the family's
    assert "conv" not in resolved_arguments("mobilenet_v2") and "groups" not in resolved_arguments("resnet34")


def test_model_configs_leave_the_family_defaults_to_the_family_files():
    from importlib.resources import files

    from omegaconf import OmegaConf

    configs = [entry for entry in files("lnrepro.conf").joinpath("model").iterdir() if entry.name.endswith(".yaml")]
    assert len(configs) == len(ALL_MODELS)
    for entry in configs:
        config = OmegaConf.create(entry.read_text())
        for option in ("conv", "groups", "dropout"):
            assert config.get(option) is None, f"{entry.name}: {option}"


def test_a_builder_registers_under_its_own_name_and_declares_its_defaults(monkeypatch):
    from lnrepro.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model
    def tiny_net(*, width: float, num_classes: int, stem: str, dropout: float = 0.1, depth: int = 2) -> nn.Module:
        return nn.Sequential(*[nn.Identity()] * depth, nn.Dropout(dropout), nn.LazyLinear(num_classes))

    assert "tiny_net" in list_models()
    assert resolved_arguments("tiny_net", depth=None)["depth"] == 2
    assert len(build_model("tiny_net", depth=3, num_classes=4)) == 5
    with pytest.raises(UserInputError, match="tiny_net has no conv-kind switch"):
        build_model("tiny_net", conv="ghost")
    with pytest.raises(TypeError, match="must have a default"):
        register_model(name="no_default")(lambda *, width, num_classes, stem, dropout: nn.Identity())
