"""The model zoo against published figures and against its torchvision/timm twins.

- every row of lnrepro/reference/imagenet_published.csv: parameters (exact where the row's figure comes from
  torchvision, timm or the official code, else within 1%) and multiply-adds within 2% at the row's resolution,
  1000 classes;
- every row of lnrepro/reference/ghost_vs_dwpw.csv (seed document 003's CIFAR-10 table): Conv2d parameters within
  1% and conv FLOPs (2 x multiply-adds) within 2% at 32x32, 10 classes;
- the MobileNet V2 / ShuffleNet V2 rows of lnrepro/reference/cifar10_published.csv (stem cifar): params within 1%,
  multiply-adds within 2%;
- a state_dict saved from each torchvision/timm network that has a twin here, loaded through
  `build_model(..., pretrained=path)`, gives the same outputs in eval mode.

The CSVs are copies of ../shared/reference (ghost_vs_dwpw.csv is its cifar10_seed_table.csv; the tests read only
the copies).
Multiply-adds are counted with torch.utils.flop_counter.FlopCounterMode, which counts 2 per multiply-add of
convolutions and matrix products (nothing for BN, activations, pooling), i.e. what the papers call FLOPs/MAdds.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lnrepro.errors import UserInputError
from lnrepro.models import build_model
from lnrepro.reporting.reference import shipped_table

DATA = Path(shipped_table("ghost_vs_dwpw")).parent  # the published tables ship in the package


pytestmark = pytest.mark.usefixtures("one_thread")


def read_rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="") as f:
        return list(csv.DictReader(f))


def parse_count(text: str) -> float:
    """'14.7M' -> 14.7e6, '877K' -> 877e3, '2.32G' -> 2.32e9."""
    text = text.strip()
    return float(text[:-1]) * {"K": 1e3, "M": 1e6, "G": 1e9}[text[-1]]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_conv_params(model: nn.Module) -> int:
    """Weights and biases of Conv2d layers only (the ghost_vs_dwpw table's convention)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())


def count_flops(model: nn.Module, resolution: int, conv_only: bool = False) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass on a 1 x 3 x resolution x resolution input."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    if not conv_only:
        return counter.get_total_flops()
    per_op = counter.get_flop_counts()["Global"]
    return sum(flops for op, flops in per_op.items() if "convolution" in str(op))


def assert_close(value: float, target: float, rel: float, what: str) -> None:
    assert math.isclose(value, target, rel_tol=rel), (
        f"{what}: {value:,.0f} vs published {target:,.0f} "
        f"({(value / target - 1) * 100:+.2f}%, tolerance {rel * 100:g}%)"
    )


# ---------------------------------------------------------------------------------------------------------------
# ImageNet figures
# ---------------------------------------------------------------------------------------------------------------
IMAGENET_ROWS = read_rows("imagenet_published.csv")


def _imagenet_id(row: dict[str, str]) -> str:
    groups = f"-g{row['groups']}" if row["groups"] else ""
    return f"{row['family']}-{row['width']}{groups}-{row['resolution']}"


@pytest.mark.parametrize("row", IMAGENET_ROWS, ids=[_imagenet_id(r) for r in IMAGENET_ROWS])
def test_imagenet_published_figures(row):
    kwargs = dict(width=float(row["width"]), num_classes=1000)
    if row["groups"]:
        kwargs["groups"] = int(row["groups"])
    model = build_model(row["family"], **kwargs)
    if row["params"]:
        params, published = count_params(model), int(row["params"])
        # The figure is exact where it was counted from torchvision/timm/official code, else a paper's rounding.
        exact = any(source in row["source"] for source in ("torchvision", "timm", "official"))
        if exact:
            assert params == published, f"params {params:,} vs {published:,} ({row['source']})"
        else:
            assert_close(params, published, 0.01, "params")
    macs = count_flops(model, int(row["resolution"])) / 2
    assert_close(macs, float(row["macs_m"]) * 1e6, 0.02, "multiply-adds")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 figures
# ---------------------------------------------------------------------------------------------------------------
GHOST_VS_DWPW_ROWS = read_rows("ghost_vs_dwpw.csv")
CONV_KIND_OF_ROW = {"conv": "standard", "dwpw": "dwpw", "ghost": "ghost"}


@pytest.mark.parametrize("row", GHOST_VS_DWPW_ROWS, ids=[r["model"] for r in GHOST_VS_DWPW_ROWS])
def test_ghost_vs_dwpw_table_conv_figures(row):
    family, kind = row["model"].rsplit("_", 1)
    model = build_model(family, num_classes=10, stem=row["stem"], conv=CONV_KIND_OF_ROW[kind])
    assert_close(count_conv_params(model), parse_count(row["params"]), 0.01, "conv params")
    assert_close(count_flops(model, 32, conv_only=True), parse_count(row["flops"]), 0.02, "conv FLOPs")


CIFAR_PUBLISHED_ROWS = [r for r in read_rows("cifar10_published.csv") if r["params"]]


@pytest.mark.parametrize("row", CIFAR_PUBLISHED_ROWS, ids=[f"{r['model']}-{r['width']}" for r in CIFAR_PUBLISHED_ROWS])
def test_cifar10_published_ports(row):
    model = build_model(row["model"], width=float(row["width"]), num_classes=10, stem="cifar")
    assert_close(count_params(model), parse_count(row["params"]), 0.01, "params")
    assert_close(count_flops(model, 32) / 2, float(row["macs_m"]) * 1e6, 0.02, "multiply-adds")


def test_cifar_rows_cover_both_families():
    assert {r["model"] for r in CIFAR_PUBLISHED_ROWS} == {"mobilenet_v2", "shufflenet_v2"}
    assert len(GHOST_VS_DWPW_ROWS) == 9 and len(IMAGENET_ROWS) >= 30


# ---------------------------------------------------------------------------------------------------------------
# torchvision / timm twins: their weights through `pretrained=` give the same network
# ---------------------------------------------------------------------------------------------------------------
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and BN statistic a random value, so that a wrongly mapped tensor, a missing activation
    or a different BN eps changes the output (a freshly initialised network's outputs are ~0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, math.sqrt(1.0 / m.weight[0].numel()), generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0, 0.2, generator=generator)
                m.running_mean.normal_(0, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def _torchvision(name: str, **kwargs):
    def make():
        import torchvision

        return getattr(torchvision.models, name)(**kwargs)

    return make


def _timm(name: str):
    def make():
        import timm

        return timm.create_model(name, pretrained=False)

    return make


# (id, reference constructor, our model name, our kwargs); 550 MB of VGG16 weights make that one slow
TWINS = [
    *[
        (f"tv-mobilenet_v2-{w}", _torchvision("mobilenet_v2", width_mult=w), "mobilenet_v2", dict(width=w))
        for w in (0.35, 0.5, 0.75, 1.0, 1.4)
    ],
    ("tv-mobilenet_v3_large", _torchvision("mobilenet_v3_large"), "mobilenet_v3_large", {}),
    ("tv-mobilenet_v3_small", _torchvision("mobilenet_v3_small"), "mobilenet_v3_small", {}),
    *[
        (
            f"tv-shufflenet_v2_x{w}",
            _torchvision(f"shufflenet_v2_x{w}".replace(".", "_")),
            "shufflenet_v2",
            dict(width=w),
        )
        for w in (0.5, 1.0, 1.5, 2.0)
    ],
    ("tv-resnet34", _torchvision("resnet34"), "resnet34", {}),
    pytest.param(_torchvision("vgg16_bn"), "vgg16", {}, marks=pytest.mark.slow, id="tv-vgg16_bn"),
    ("timm-ghostnet_050", _timm("ghostnet_050"), "ghostnet", dict(width=0.5)),
    ("timm-ghostnet_100", _timm("ghostnet_100"), "ghostnet", dict(width=1.0)),
    ("timm-ghostnet_130", _timm("ghostnet_130"), "ghostnet", dict(width=1.3)),
    ("timm-mobilenetv1_100", _timm("mobilenetv1_100"), "mobilenet_v1", dict(activation="relu6")),
    *[
        (f"timm-mobilenetv2_{tag}", _timm(f"mobilenetv2_{tag}"), "mobilenet_v2", dict(width=w))
        for tag, w in (("035", 0.35), ("050", 0.5), ("075", 0.75), ("100", 1.0), ("140", 1.4))
    ],
    ("timm-mobilenetv3_large_100", _timm("mobilenetv3_large_100"), "mobilenet_v3_large", dict(width=1.0)),
    ("timm-mobilenetv3_large_075", _timm("mobilenetv3_large_075"), "mobilenet_v3_large", dict(width=0.75)),
    ("timm-mobilenetv3_small_100", _timm("mobilenetv3_small_100"), "mobilenet_v3_small", dict(width=1.0)),
    ("timm-mobilenetv3_small_075", _timm("mobilenetv3_small_075"), "mobilenet_v3_small", dict(width=0.75)),
]


def _saved_reference(make, path: Path, seed: int = 0) -> nn.Module:
    reference = randomize_(make(), seed).eval()
    torch.save(reference.state_dict(), path)
    return reference


def _twin_param(twin):
    if isinstance(twin[0], str):  # (id, constructor, name, kwargs)
        return pytest.param(*twin[1:], id=twin[0])
    return twin  # already a pytest.param


@pytest.mark.parametrize("make_reference,name,kwargs", [_twin_param(t) for t in TWINS])
def test_pretrained_twin_gives_same_outputs(tmp_path, make_reference, name, kwargs):
    torch.manual_seed(0)
    reference = _saved_reference(make_reference, tmp_path / "weights.pth")
    ours = build_model(name, num_classes=1000, pretrained=tmp_path / "weights.pth", **kwargs).eval()
    assert count_params(ours) == count_params(reference)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = reference(images), ours(images)
    assert expected.abs().max() > 0.1  # the randomised reference gives outputs worth comparing
    assert (expected - got).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "make_reference,name,kwargs",
    [
        (_torchvision("shufflenet_v2_x0_5"), "shufflenet_v2", dict(width=0.5)),  # keys matched by name
        (_timm("ghostnet_050"), "ghostnet", dict(width=0.5)),  # keys renamed by GhostNet's table
    ],
    ids=["torchvision", "timm"],
)
def test_pretrained_with_other_num_classes_reinitialises_only_the_classifier(
    tmp_path, caplog, make_reference, name, kwargs
):
    reference = _saved_reference(make_reference, tmp_path / "weights.pth")
    fresh = build_model(name, num_classes=10, **kwargs)
    with caplog.at_level(logging.INFO, logger="lnrepro.models"):
        ours = build_model(name, num_classes=10, pretrained=tmp_path / "weights.pth", **kwargs).eval()
    assert any(
        "classifier re-initialised" in r.getMessage() and "1000 classes" in r.getMessage() for r in caplog.records
    )
    ref_values = [t for k, t in reference.state_dict().items() if not k.endswith("num_batches_tracked")]
    own = {k: t for k, t in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    classifier = {k for k in own if k.startswith(ours.classifier_name + ".")}
    body = [t for k, t in own.items() if k not in classifier]
    for expected, got in zip(ref_values, body):  # everything but the classifier comes from the file
        assert torch.equal(expected.reshape(got.shape), got)
    for key in classifier:  # the classifier has the new size and a fresh initialisation
        assert own[key].shape[0] == 10
        assert own[key].abs().max() < 0.1
        assert fresh.state_dict()[key].shape == own[key].shape
    with torch.no_grad():
        assert ours(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_a_twin_file_that_does_not_fit_names_its_key_and_ours(tmp_path):
    torch.save(_torchvision("resnet34")().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(
        UserInputError,
        match=r"does not fit resnet34: key 'conv1\.weight' \(the model's 'stem\.0\.0\.weight'\) has shape "
        r"\(64, 3, 7, 7\), the model needs \(32, 3, 7, 7\)",
    ):
        build_model("resnet34", width=0.5, pretrained=tmp_path / "resnet34.pth")
    torch.save(_timm("ghostnet_050")().state_dict(), tmp_path / "ghostnet.pth")
    with pytest.raises(
        UserInputError,
        match=r"does not fit ghostnet: its key 'blocks\.0\.0\.ghost1\.primary_conv\.0\.weight' has no place in it",
    ):
        build_model("ghostnet", width=0.5, conv="dwpw", pretrained=tmp_path / "ghostnet.pth")


def test_timm_mobilenetv1_needs_its_relu6(tmp_path):
    """timm's mobilenetv1_100 is the ReLU6 variant: loading it into the paper's ReLU network loads (same shapes)
    but is another function, which is why `activation="relu6"` exists."""
    reference = randomize_(_timm("mobilenetv1_100")()).eval()
    with torch.no_grad():  # large BN scales, so that many activations go past 6
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(10)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    ours = build_model("mobilenet_v1", pretrained=tmp_path / "w.pth").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (reference(images) - ours(images)).abs().max() > 1e-2


def test_project_checkpoint_round_trip(tmp_path):
    """A state_dict saved from this project (plain, or inside a Lightning checkpoint) loads name for name."""
    model = randomize_(build_model("shufflenet_v1", width=0.5, groups=8, num_classes=10, stem="cifar")).eval()
    state = model.state_dict()
    lightning_state = {f"net.{k}": v for k, v in state.items()}  # the LightningModule holds it as `net`
    lightning_state.update({f"_forward_net._orig_mod.{k}": v for k, v in state.items()})  # and compiled
    torch.save({"state_dict": lightning_state, "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = build_model(
        "shufflenet_v1", width=0.5, groups=8, num_classes=10, stem="cifar", pretrained=tmp_path / "ckpt.pt"
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
