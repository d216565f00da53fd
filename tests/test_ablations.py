"""The papers' ablation tables: each family option that makes an ablation's rows, its preset and its shipped
published table (lnrepro/reference/<paper>_<table>.csv) with the counts our networks must have."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lnrepro.errors import UserInputError
from lnrepro.models import build_model, list_models, registry
from lnrepro.models import shufflenet_v1 as shufflenet_v1_module
from lnrepro.models.layers import GhostModule, PointwiseDepthwise
from lnrepro.models.mobilenet_v2 import InvertedResidual
from lnrepro.profiling import count_macs
from lnrepro.reporting.reference import load_reference, parse_amount, shipped_table
from tests.conftest import CONF, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def table_rows(name: str) -> list[dict[str, str]]:
    with open(shipped_table(name), newline="") as file:
        return list(csv.DictReader(file))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_m(model: nn.Module, side: int = 224) -> float:
    return count_macs(model.eval(), side).macs / 1e6


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics in eval mode: a freshly initialised network's outputs are near zero, where a
    missing shuffle or activation might not show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.2, generator=generator)
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def within_printed(count: float, printed: float) -> bool:
    """The brief's rule: within 1% of the printed figure or within its printed rounding (half a unit of its last
    digit), whichever is wider. Every printed complexity here is a whole number of millions."""
    return abs(count - printed) <= max(0.01 * printed, 0.5)


def test_the_ablation_tables_ship_and_are_read_as_option_tables():
    for name, options in (("shufflenet_v1_table3", {"shuffle"}), ("mobilenet_v2_figure6", {"linear_bottleneck"})):
        reference = load_reference(name)
        assert reference.kind == "generic", (name, reference.kind)
        assert options <= set(reference.rows[0]) and {"params", "macs_m", "top1", "source"} <= set(reference.rows[0])


# ---------------------------------------------------------------------------------------------------------------
# ShuffleNet V1, paper Table 3: channel shuffle on and off
# ---------------------------------------------------------------------------------------------------------------
#: Rows whose network cannot have the paper's printed complexity, with the count ours has: the reasons are in
#: lnrepro/models/shufflenet_v1.py's docstring (Table 2 prints one budget per width for every group count).
SHUFFLENET_V1_DIFFERENCES = {(0.5, 8): 40.47, (0.25, 8): 12.43}
#: Paper Table 1's complexities of the 1x networks, g -> MFLOPs.
SHUFFLENET_V1_TABLE1 = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}


def test_shufflenet_v1_table3_rows_are_the_twelve_cells_with_the_papers_errors():
    rows = table_rows("shufflenet_v1_table3")
    cells = {(float(r["width"]), int(r["groups"]), r["shuffle"]): float(r["top1"]) for r in rows}
    assert len(rows) == len(cells) == 12
    # Table 3 prints errors: (no shuffle, shuffle) per network; the CSV holds top-1 = 100 - error
    errors = {(1.0, 3): (34.5, 32.6), (1.0, 8): (37.6, 32.4), (0.5, 3): (45.7, 43.2), (0.5, 8): (48.1, 42.3)}
    errors |= {(0.25, 3): (56.3, 55.0), (0.25, 8): (56.5, 52.7)}
    for (width, groups), (no_shuffle, shuffle) in errors.items():
        assert cells[(width, groups, "false")] == pytest.approx(100 - no_shuffle)
        assert cells[(width, groups, "true")] == pytest.approx(100 - shuffle)


def test_shufflenet_v1_table3_counts_match_the_shipped_rows():
    rows = table_rows("shufflenet_v1_table3")
    for width, groups in sorted({(float(r["width"]), int(r["groups"])) for r in rows}):
        pair = [r for r in rows if (float(r["width"]), int(r["groups"])) == (width, groups)]
        assert sorted(r["shuffle"] for r in pair) == ["false", "true"]
        models = {
            "true": build_model("shufflenet_v1", width=width, groups=groups),
            "false": build_model("shufflenet_v1", width=width, groups=groups, shuffle=False),
        }
        # the shuffle has no parameters and no multiply-adds: both rows are the same network's counts
        assert count_params(models["true"]) == count_params(models["false"])
        assert {r["params"] for r in pair} == {pair[0]["params"]} and {r["macs_m"] for r in pair} == {pair[0]["macs_m"]}
        if pair[0]["params"]:
            assert count_params(models["true"]) == int(pair[0]["params"]), (width, groups)
        counted, printed = macs_m(models["true"]), float(pair[0]["macs_m"])
        if (width, groups) in SHUFFLENET_V1_DIFFERENCES:
            assert not within_printed(counted, printed)  # a difference the docstring explains, kept as it is
            assert counted == pytest.approx(SHUFFLENET_V1_DIFFERENCES[(width, groups)], abs=0.01)
        else:
            assert within_printed(counted, printed), (width, groups, counted, printed)
    smallest = build_model("shufflenet_v1", width=0.25, groups=8, shuffle=False)
    assert macs_m(smallest) == macs_m(build_model("shufflenet_v1", width=0.25, groups=8))


def test_shufflenet_v1_table1_complexities_leave_out_the_classifier():
    """Why the docstring says Table 1 counts the body: without the 1000-way classifier every 1x network has Table
    1's figure to the printed digit; with it g=4 would be 1% off."""
    for groups, printed in SHUFFLENET_V1_TABLE1.items():
        model = build_model("shufflenet_v1", groups=groups)
        body = macs_m(model) - model.classifier.weight.numel() / 1e6
        assert round(body) == printed, (groups, body)


def tiny_shufflenet(groups: int, shuffle: bool) -> nn.Module:
    return build_model("shufflenet_v1", width=0.25, groups=groups, num_classes=10, stem="cifar", shuffle=shuffle)


@pytest.mark.parametrize("groups", [3, 8])
def test_shufflenet_v1_without_shuffle_is_the_same_network_minus_the_shuffle(monkeypatch, groups):
    shuffled = randomized(tiny_shufflenet(groups, shuffle=True))
    plain = tiny_shufflenet(groups, shuffle=False).eval()
    plain.load_state_dict(shuffled.state_dict())  # the same parameters, by the same names
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    calls = []
    real_shuffle = shufflenet_v1_module.channel_shuffle

    def counting_shuffle(tensor, groups):
        calls.append(tensor.shape[1])
        return real_shuffle(tensor, groups)

    monkeypatch.setattr(shufflenet_v1_module, "channel_shuffle", counting_shuffle)
    with torch.no_grad():
        with_shuffle = shuffled(x)
        assert len(calls) == 16  # one shuffle per unit
        without = plain(x)
        assert len(calls) == 16  # and none without
        assert not torch.allclose(with_shuffle, without, atol=1e-4)
        # the shuffle=true network with its shuffle made the identity computes exactly what shuffle=false does
        monkeypatch.setattr(shufflenet_v1_module, "channel_shuffle", lambda tensor, groups: tensor)
        torch.testing.assert_close(shuffled(x), without)


# ---------------------------------------------------------------------------------------------------------------
# MobileNet V2, paper Figure 6: linear bottleneck and shortcut placement
# ---------------------------------------------------------------------------------------------------------------
def figure6_options(row: dict[str, str]) -> dict:
    return {"linear_bottleneck": row["linear_bottleneck"] == "true", "shortcut": row["shortcut"]}


def test_mobilenet_v2_figure6_rows_are_the_four_networks_without_accuracies():
    rows = table_rows("mobilenet_v2_figure6")
    assert [(r["linear_bottleneck"], r["shortcut"]) for r in rows] == [
        ("true", "bottleneck"),
        ("false", "bottleneck"),
        ("true", "expansion"),
        ("true", "none"),
    ]
    assert all(r["top1"] == "" for r in rows)  # the paper prints curves and its text states no accuracy
    assert all("no accuracy" in r["source"] for r in rows)


def test_mobilenet_v2_figure6_switches_leave_every_count_as_it_is():
    """The paper's construction adds no layer for either ablation: a ReLU6 has no parameters and costs no
    multiply-add, and the expansion shortcut joins tensors of the same shape (no projection)."""
    rows = table_rows("mobilenet_v2_figure6")
    default = build_model("mobilenet_v2")
    assert within_printed(macs_m(default), float(rows[0]["macs_m"]))
    small = macs_m(default, 64)
    for row in rows:
        model = build_model("mobilenet_v2", **figure6_options(row))
        assert count_params(model) == int(row["params"]) == count_params(default), row
        assert macs_m(model, 64) == small, row
        assert model.state_dict().keys() == default.state_dict().keys()  # torchvision's names still load


def tiny_mobilenet_v2(**options) -> nn.Module:
    return randomized(build_model("mobilenet_v2", width=0.5, num_classes=10, stem="cifar", **options))


def blocks(model: nn.Module) -> list[tuple[int, InvertedResidual]]:
    return [(index, layer) for index, layer in enumerate(model.features) if isinstance(layer, InvertedResidual)]


def test_mobilenet_v2_linear_bottleneck_false_puts_a_relu6_after_each_projection():
    linear, relu6 = tiny_mobilenet_v2(), tiny_mobilenet_v2(linear_bottleneck=False)
    relu6.load_state_dict(linear.state_dict())
    outputs: dict[int, torch.Tensor] = {}
    for index, block in blocks(relu6):
        assert isinstance(block.conv[-1], nn.ReLU6) and isinstance(block.conv[-2], nn.BatchNorm2d)
        block.conv.register_forward_hook(lambda module, args, out, index=index: outputs.__setitem__(index, out))
    for _, block in blocks(linear):
        assert isinstance(block.conv[-1], nn.BatchNorm2d)  # the paper's network: the projection stays linear
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.allclose(linear(x), relu6(x), atol=1e-4)
    assert len(outputs) == 17
    for out in outputs.values():  # every thin layer, before any residual addition, is clipped to [0, 6]
        assert out.min() >= 0 and out.max() <= 6
    assert any(out.max() == 6 or out.min() == 0 for out in outputs.values())


def block_tensors(model: nn.Module, x: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """Per block: its input, its expanded tensor as made (exp), the tensor its depthwise conv reads (dw_in), its
    projection's output before any residual (proj) and its output, which is what the next layer reads (the
    expansion shortcut runs the blocks' layers without calling the blocks themselves, so hooks sit on layers)."""
    reads: dict[int, torch.Tensor] = {}
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for index, layer in enumerate(model.features):
        first = layer.conv[0] if isinstance(layer, InvertedResidual) else layer[0]
        handles.append(first.register_forward_pre_hook(lambda m, args, i=index: reads.__setitem__(i, args[0])))
    for index, block in blocks(model):
        record = seen.setdefault(index, {})
        depthwise = block.conv[block.expansion_layers]
        handles.append(depthwise.register_forward_pre_hook(lambda m, args, r=record: r.__setitem__("dw_in", args[0])))
        handles.append(block.conv[-1].register_forward_hook(lambda m, a, out, r=record: r.__setitem__("proj", out)))
        if block.expansion_layers:
            handles.append(block.conv[0].register_forward_hook(lambda m, a, out, r=record: r.__setitem__("exp", out)))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    for index, record in seen.items():
        record["input"], record["output"] = reads[index], reads[index + 1]
    return seen


def test_mobilenet_v2_shortcuts_go_where_the_option_says():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    bottleneck = tiny_mobilenet_v2()
    same_shape = [index for index, block in blocks(bottleneck) if block.keeps_shape]
    assert len(same_shape) == 10  # Table 2's repeats: 1 + 2 + 3 + 2 + 2 blocks keep their shape
    for shortcut in ("bottleneck", "expansion", "none"):
        model = tiny_mobilenet_v2(shortcut=shortcut)
        model.load_state_dict(bottleneck.state_dict())
        assert model(x).shape == (2, 10)
        tensors = block_tensors(model, x)
        for index, block in blocks(model):
            t = tensors[index]
            if shortcut == "bottleneck" and index in same_shape:  # residual between the thin layers
                torch.testing.assert_close(t["output"], t["input"] + t["proj"])
            else:  # no residual on the bottleneck
                torch.testing.assert_close(t["output"], t["proj"])
            if shortcut == "expansion" and index - 1 in same_shape:
                # residual between the expanded layers: this block's expansion plus the previous block's
                # expanded tensor, both 6 x c channels (no projection needed), feed this block's depthwise conv
                previous = tensors[index - 1]["dw_in"]
                assert previous.shape == t["exp"].shape and t["exp"].shape[1] == 6 * t["input"].shape[1]
                torch.testing.assert_close(t["dw_in"], t["exp"] + previous)
            elif block.expansion_layers:
                torch.testing.assert_close(t["dw_in"], t["exp"])
        if shortcut == "expansion":
            assert sorted(model.expansion_shortcuts) == [index + 1 for index in same_shape]
    outputs = {s: tiny_mobilenet_v2(shortcut=s) for s in ("bottleneck", "expansion", "none")}
    for model in outputs.values():
        model.load_state_dict(bottleneck.state_dict())
    with torch.no_grad():
        results = [model(x) for model in outputs.values()]
    assert not torch.allclose(results[0], results[1], atol=1e-4) and not torch.allclose(results[0], results[2])


def test_mobilenet_v2_expansion_shortcut_trains():
    """The shortcut crosses block boundaries outside `features`' own forward: gradients must reach every layer."""
    model = build_model("mobilenet_v2", width=0.35, num_classes=10, stem="cifar", shortcut="expansion")
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Bad input: each family takes its own options only
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options, message",
    [
        ("mobilenet_v2", {"shuffle": False}, "mobilenet_v2 does not take option 'shuffle'; its options are: "),
        ("shufflenet_v1", {"linear_bottleneck": False}, "shufflenet_v1 does not take option 'linear_bottleneck'"),
        ("mobilenet_v2", {"shortcut": "sideways"}, "choose one of: bottleneck, expansion, none"),
        ("mobilenet_v2", {"linear_bottleneck": "no"}, "linear_bottleneck must be true or false"),
        ("shufflenet_v1", {"shuffle": "off"}, "shuffle must be true or false"),
    ],
)
def test_mobilenet_v2_and_shufflenet_v1_refuse_what_they_do_not_take(name, options, message):
    with pytest.raises(UserInputError) as refused:
        build_model(name, **options)
    text = str(refused.value)
    assert message in text and "\n" not in text
    if "does not take" in text:  # and it names what the family does take
        expected = {"mobilenet_v2": "linear_bottleneck, shortcut", "shufflenet_v1": "shuffle"}[name]
        assert text.endswith(f"its options are: {expected}")


def test_mobilenet_v2_and_shufflenet_v1_refuse_the_other_familys_option_from_the_command_line(make_train_cfg):
    from omegaconf import OmegaConf

    for overrides, message in (
        (["model=mobilenet_v2", "+model.shuffle=false"], "does not take option 'shuffle'"),
        (["model=shufflenet_v1", "+model.linear_bottleneck=false"], "does not take option 'linear_bottleneck'"),
    ):
        arguments = OmegaConf.to_container(make_train_cfg(*overrides).model, resolve=True)
        arguments.pop("_target_")
        with pytest.raises(UserInputError, match=message):
            build_model(**arguments)


def test_mobilenet_v2_figure6_preset_refuses_an_unknown_row_in_one_line_naming_the_rows(make_train_cfg):
    from omegaconf import OmegaConf

    cfg = make_train_cfg("experiment=mobilenet_v2_figure6", "figure6_row=sideways")
    arguments = OmegaConf.to_container(cfg.model, resolve=True)
    arguments.pop("_target_")
    with pytest.raises(UserInputError) as refused:
        build_model(**arguments)
    text = str(refused.value)
    assert "figure6_row=sideways is not one of" in text and "\n" not in text
    for row in ("linear_bottleneck", "relu6_bottleneck", "expansion_shortcut", "no_residual"):
        assert row in text


# ---------------------------------------------------------------------------------------------------------------
# The presets' multiruns, one tiny epoch per row
# ---------------------------------------------------------------------------------------------------------------
def report_against_the_table(sweep, preset: str, env: dict) -> None:
    """report.py over a preset's multirun beside the preset's own published table: exit 0 and report.csv."""
    report = subprocess.run(
        [sys.executable, str(ROOT / "report.py"), str(sweep), "--reference", preset],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]


TINY_SWEEP = [
    "data=synthetic",
    "data.image_size=16",
    "data.train_size=16",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "profile.end_of_fit=false",
    "logger=none",
    "print_config=false",
]


def option_cells(row: dict[str, str], option_keys: tuple[str, ...]) -> tuple:
    """A table row's cells for the metrics keys a run records its options under (`model/shuffle` -> `shuffle`)."""
    convert = {"width": float, "groups": int}
    return tuple(convert.get(key, str)(row[key.split("/")[-1]]) for key in option_keys)


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, option_keys, rows",
    [
        ("shufflenet_v1_table3", ("width", "groups", "model/shuffle"), 12),
        ("mobilenet_v2_figure6", ("model/linear_bottleneck", "model/shortcut"), 4),
    ],
)
def test_each_ablation_presets_multirun_trains_every_row_and_reports_beside_its_table(
    tmp_path, preset, option_keys, rows
):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    train = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"experiment={preset}",
            f"paths.log_dir={tmp_path}",
            *TINY_SWEEP,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")

    def recorded(run_dir) -> tuple:
        run = json.loads((run_dir / "metrics.json").read_text())
        return tuple(str(run[key]).lower() if isinstance(run[key], bool) else run[key] for key in option_keys)

    published = {option_cells(row, option_keys): row for row in table_rows(preset)}
    runs = [recorded(path.parent) for path in sweep.glob("*/metrics.json")]
    assert len(runs) == rows and set(runs) == set(published)  # every row of the table, once
    report_against_the_table(sweep, preset, env)
    with open(sweep / "report.csv", newline="") as file:
        reported = list(csv.DictReader(file))
    assert len(reported) == rows
    for line in reported:  # each run beside its own row: the published figures of its options' row
        row = published[recorded(sweep / line["run_dir"])]
        assert line["ref_params"] == (str(float(row["params"])) if row["params"] else ""), line["ref_model"]
        assert line["ref_top1"] == (str(float(row["top1"])) if row["top1"] else ""), line["ref_model"]


# ---------------------------------------------------------------------------------------------------------------
# MobileNet V1 Tables 4-5, the GhostNet paper's CIFAR-10 Tables 2-4, He et al.'s CIFAR ResNets, and document
# 003's discussion (pwdw order, cheap features learned / zeros / fixed)
# ---------------------------------------------------------------------------------------------------------------
#: Rows whose count misses the printed figure by more than the rule allows, with the margin that bounds the miss
#: and why: {(table, model, conv, ghost_ratio): {figure: (largest relative miss, reason)}}.
KNOWN_GAPS = {
    ("ghostnet_table3", "vgg16", "ghost_module", "5"): {
        "macs": (0.011, "ceil(c/5) intrinsic maps and their cheap convs: 65.7M with the linear layers, 65.4M without")
    },
    ("ghostnet_table4", "resnet56", "ghost_module", "2"): {
        "params": (0.02, "the printed 0.43M is ResNet-56's 0.85M halved, not a count: the network has 0.438M"),
        "macs": (0.04, "the printed 63M is 125M halved; the cheap 3x3 convs on 16-64 channels add 2.4M: 65.1M"),
    },
}


def printed_tolerance(cell: str) -> float:
    """Half a unit of the printed figure's last digit ('7.7M' -> 0.05e6, '0.85M' -> 0.005e6, '313' -> 0.5)."""
    number = cell.rstrip("MK")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return 0.5 * 10.0**-decimals * (1e6 if cell.endswith("M") else 1.0)


def assert_as_printed(count: float, cell: str, scale: float, what: str, gap: tuple[float, str] | None) -> None:
    """The rule: within 1% of the printed figure or within its printed rounding, whichever is wider; a known gap
    is held to its own bound (and must still be a gap, or the entry is stale)."""
    printed = parse_amount(cell) * scale
    tolerance = max(0.01 * printed, printed_tolerance(cell) * (scale if not cell.endswith("M") else 1.0))
    if gap is None:
        assert abs(count - printed) <= tolerance, f"{what}: {count:,.0f} vs printed {cell}"
    else:
        assert tolerance < abs(count - printed) <= gap[0] * printed, f"{what}: {count:,.0f} vs {cell} ({gap[1]})"


def paper_counts(name: str, side: int, num_classes: int, **options) -> tuple[int, float]:
    """Parameters and multiply-adds (conv and linear, the papers' convention) on one side x side image."""
    model = build_model(name, num_classes=num_classes, **options).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return count_params(model), counter.get_total_flops() / 2


def row_options(row: dict[str, str]) -> dict:
    """A table row's cells as `build_model` arguments (empty cells: the family's default)."""
    options: dict = dict(width=float(row["width"]), conv=row["conv"])
    if row.get("shallow"):
        options["shallow"] = row["shallow"] == "true"
    for key in ("ghost_ratio", "ghost_kernel"):
        if row.get(key) and row["conv"] in ("ghost", "ghost_module"):
            options[key] = int(row[key])
    if row.get("cifar_classifier"):
        options["cifar_classifier"] = row["cifar_classifier"]
    return options


OWN_TABLES = ("mobilenet_v1_table4", "mobilenet_v1_table5", "ghostnet_table2", "ghostnet_table3", "ghostnet_table4")


def own_rows(table: str) -> list[dict[str, str]]:
    """The table's rows that name a network of ours (not the pruning baselines, which are reference rows only)."""
    return [row for row in table_rows(table) if row["model"] in list_models()]


def test_mobilenet_v1_tables_4_and_5_count_as_printed_at_224():
    for table in ("mobilenet_v1_table4", "mobilenet_v1_table5"):
        rows = own_rows(table)
        assert len(rows) == 2
        for row in rows:
            params, macs = paper_counts("mobilenet_v1", 224, 1000, **row_options(row))
            assert_as_printed(params, row["params"], 1.0, f"{table} {row} params", None)
            assert_as_printed(macs, row["macs_m"], 1e6, f"{table} {row} multiply-adds", None)
    # the paper's accuracies, as printed
    assert [row["top1"] for row in table_rows("mobilenet_v1_table4")] == ["71.7", "70.6"]
    assert [row["top1"] for row in table_rows("mobilenet_v1_table5")] == ["68.4", "65.3"]


def test_mobilenet_v1_shallow_removes_the_five_14x14x512_layers_and_standard_makes_full_convs():
    full, shallow = build_model("mobilenet_v1"), build_model("mobilenet_v1", shallow=True)
    assert len(full.features) == 14 and len(shallow.features) == 9  # the stem conv and 13 (8) layers
    widths = [layer[-1][0].out_channels for layer in shallow.features[1:]]
    assert widths == [64, 128, 128, 256, 256, 512, 1024, 1024]  # one 512 layer left: the stride-2 one
    standard = build_model("mobilenet_v1", conv="standard")
    convs = [m for m in standard.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 14 and all(c.kernel_size == (3, 3) and c.groups == 1 for c in convs)
    with torch.no_grad():  # the same feature map sizes: each full conv keeps its layer's stride
        x = torch.randn(1, 3, 64, 64)
        assert standard.features(x).shape == full.features(x).shape == (1, 1024, 2, 2)


@pytest.mark.parametrize("table", ["ghostnet_table2", "ghostnet_table3", "ghostnet_table4"])
def test_ghost_tables_count_as_printed_on_cifar10(table):
    rows = own_rows(table)
    assert rows and all(row["width"] == "1.0" for row in rows)
    for row in rows:
        params, macs = paper_counts(row["model"], 32, 10, stem="cifar", **row_options(row))
        gaps = KNOWN_GAPS.get((table, row["model"], row["conv"], row["ghost_ratio"]), {})
        assert_as_printed(params, row["params"], 1.0, f"{table} {row['model']} params", gaps.get("params"))
        assert_as_printed(macs, row["macs_m"], 1e6, f"{table} {row['model']} multiply-adds", gaps.get("macs"))


def test_ghost_tables_hold_the_papers_rows():
    def cells(table, *columns):
        return [tuple(row[c] for c in columns) for row in table_rows(table)]

    assert cells("ghostnet_table2", "conv", "ghost_kernel", "params", "macs_m", "top1") == [
        ("standard", "", "15.0M", "313", "93.6"),
        ("ghost_module", "1", "7.6M", "157", "93.5"),
        ("ghost_module", "3", "7.7M", "158", "93.7"),
        ("ghost_module", "5", "7.7M", "160", "93.4"),
        ("ghost_module", "7", "7.7M", "163", "93.1"),
    ]
    assert cells("ghostnet_table3", "ghost_ratio", "params", "macs_m", "top1")[1:] == [
        ("2", "7.7M", "158", "93.7"),
        ("3", "5.2M", "107", "93.4"),
        ("4", "4.0M", "80", "93.0"),
        ("5", "3.3M", "65", "92.9"),
    ]
    table4 = {(row["model"], row["conv"]): row["top1"] for row in table_rows("ghostnet_table4")}
    assert table4[("vgg16", "standard")] == "93.6" and table4[("vgg16", "ghost_module")] == "93.7"
    assert table4[("resnet56", "standard")] == "93.0" and table4[("resnet56", "ghost_module")] == "92.7"
    baselines = [row["model"] for row in table_rows("ghostnet_table4") if row["model"] not in list_models()]
    assert baselines == ["l1_vgg16", "sbp_vgg16", "cp_resnet56", "l1_resnet56", "amc_resnet56"]


def test_ghost_and_mobilenet_v1_tables_ship_as_option_tables():
    for table in OWN_TABLES:
        reference = load_reference(table)
        assert reference.kind == "generic"
    assert load_reference("mobilenet_v1_table5").option_columns == ["shallow"]
    assert load_reference("ghostnet_table4").option_columns == ["cifar_classifier", "ghost_ratio", "ghost_kernel"]


def test_ghost_module_primary_conv_keeps_the_replaced_convs_kernel_and_stride():
    vgg = build_model("vgg16", stem="cifar", num_classes=10, conv="ghost_module", ghost_ratio=3, ghost_kernel=5)
    modules = [m for m in vgg.modules() if isinstance(m, GhostModule)]
    assert len(modules) == 13
    for module in modules:
        primary, cheap = module.primary_conv[0], module.cheap_operation[0]
        assert primary.kernel_size == (3, 3) and primary.groups == 1
        assert primary.out_channels == -(-module.out_channels // 3)  # ceil(c / s)
        assert cheap.kernel_size == (5, 5) and cheap.groups == primary.out_channels
        assert cheap.out_channels == 2 * primary.out_channels  # s - 1 ghosts per intrinsic map
    resnet = build_model("resnet56", stem="cifar", num_classes=10, conv="ghost_module")
    first_of_stage3 = resnet.layer3[0].conv1
    assert isinstance(first_of_stage3, GhostModule) and first_of_stage3.primary_conv[0].stride == (2, 2)
    assert not any(m.kernel_size == (1, 1) for m in resnet.modules() if isinstance(m, nn.Conv2d))  # option A
    # today's conv=ghost is still document 003's depthwise conv + Ghost pointwise module
    ghost = build_model("vgg16", stem="cifar", num_classes=10, conv="ghost").features[0]
    assert ghost[0][0].groups == 3 and ghost[1].primary_conv[0].kernel_size == (1, 1)


def test_ghost_options_tune_ghostnets_own_modules():
    model = build_model("ghostnet", width=0.5, ghost_ratio=4, ghost_kernel=1)
    modules = [m for m in model.modules() if isinstance(m, GhostModule)]
    assert len(modules) == 32
    for module in modules:
        assert module.primary_conv[0].kernel_size == (1, 1)
        assert module.cheap_operation[0].kernel_size == (1, 1)
        assert module.cheap_operation[0].out_channels == 3 * module.primary_conv[0].out_channels


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("ghostnet", dict(shallow=True), "ghostnet does not take option 'shallow'; its options are: ghost_ratio"),
        ("vgg16", dict(conv="ghost_module", ghost_ratio=1), "vgg16: ghost_ratio must be an integer >= 2 (got 1)"),
        ("resnet56", dict(conv="ghost", ghost_kernel=4), "resnet56: ghost_kernel must be a positive odd integer"),
        ("resnet56", dict(conv="ghost", ghost_kernel=0), "resnet56: ghost_kernel must be a positive odd integer"),
        ("ghostnet", dict(ghost_kernel=-3), "ghostnet: ghost_kernel must be a positive odd integer: 1, 3, 5, 7"),
        ("vgg16", dict(conv="ghost", ghost_cheap="random"), "choose one of: learned, zeros, fixed"),
        (
            "mobilenet_v1",
            dict(conv="ghost"),
            "unknown conv kind 'ghost' for mobilenet_v1; choose one of: dwpw, standard",
        ),
        ("ghostnet", dict(conv="ghost_module"), "ghostnet does not take conv='ghost_module': its slots already are"),
        ("resnet56", dict(stem="imagenet"), "resnet56 is a CIFAR network: stem='imagenet' is not offered"),
        ("vgg16", dict(ghost_ratio=3), "ghost_ratio tunes Ghost modules, which conv='standard' does not build"),
        ("ghostnet", dict(conv="dwpw", ghost_cheap="zeros"), "use it with conv=ghost, or leave it unset"),
    ],
)
def test_ghost_and_mobilenet_v1_refusals_are_one_line_naming_the_choices(name, options, message):
    options.setdefault("stem", "cifar")
    with pytest.raises(UserInputError) as error:
        build_model(name, num_classes=10, **options)
    text = str(error.value)
    assert message in text and "\n" not in text
    if "conv kind" in message or "conv='ghost_module'" in message:
        assert text.endswith("choose one of: " + ", ".join(registry._entry(name).conv_choices))


def test_ghost_refusals_from_the_command_line(make_train_cfg):
    from omegaconf import OmegaConf

    for overrides, message in (
        (["model=ghostnet", "+model.shallow=true"], "does not take option 'shallow'"),
        (["model=resnet56", "data=imagenet"], "resnet56 is a CIFAR network"),
        (["model=ghostnet", "model.conv=ghost_module"], "does not take conv='ghost_module'"),
    ):
        arguments = OmegaConf.to_container(make_train_cfg(*overrides).model, resolve=True)
        arguments.pop("_target_")
        with pytest.raises(UserInputError, match=message):
            build_model(**arguments)


@pytest.mark.parametrize("depth, published", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnet_parameters_are_he_et_als(depth, published):
    """He et al. Table 6 prints the CIFAR ResNets' parameters: option A shortcuts add none."""
    model = build_model(f"resnet{depth}", stem="cifar", num_classes=10)
    assert round(count_params(model) / 1e6, 2 if published < 1 else 1) == published
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth - 1  # 6n + 1 convs and the classifier


def test_cifar_resnet_shortcut_is_option_a():
    shortcut = build_model("resnet20", stem="cifar", num_classes=10).layer2[0].shortcut
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4) and not list(shortcut.parameters())
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # the input, subsampled, in the middle channels
    assert not out[:, :8].any() and not out[:, 24:].any()  # zeros around it


def test_seed003_pwdw_puts_the_pointwise_conv_first():
    for name, options in (("vgg16", {}), ("resnet20", {}), ("mobilenet_v1", dict(width=0.25))):
        model = build_model(name, stem="cifar", num_classes=10, conv="pwdw", **options)
        units = [m for m in model.modules() if isinstance(m, PointwiseDepthwise)]
        assert units, name
        for unit in units:
            pointwise, depthwise = unit[0][0], unit[1][0]
            assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1
            assert depthwise.kernel_size == (3, 3) and depthwise.groups == depthwise.in_channels > 1
            assert depthwise.in_channels == pointwise.out_channels and pointwise.stride == (1, 1)
    unit = PointwiseDepthwise(8, 16, stride=2)
    assert unit(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)  # the depthwise conv keeps the stride
    ghostnet = build_model("ghostnet", width=0.5, conv="pwdw")
    assert isinstance(ghostnet.blocks[0][0].ghost1, PointwiseDepthwise)


def test_seed003_zeros_cheap_features_are_zeros():
    module = GhostModule(8, 16, kernel_size=3, cheap="zeros").eval()
    out = module(torch.randn(2, 8, 6, 6))
    assert out.shape == (2, 16, 6, 6) and out[:, 8:].abs().max() == 0 and out[:, :8].abs().max() > 0
    assert module.cheap_operation is None  # no parameter for them
    model = build_model("vgg16", stem="cifar", num_classes=10, conv="ghost_module", ghost_cheap="zeros").eval()
    seen = []
    for ghost in (m for m in model.modules() if isinstance(m, GhostModule)):
        ghost.register_forward_hook(lambda m, i, o: seen.append(o[:, m.out_channels - m.ghost_channels :]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(seen) == 13 and all(not ghosts.any() for ghosts in seen)
    learned = build_model("vgg16", stem="cifar", num_classes=10, conv="ghost_module")
    cheap_params = sum(count_params(m.cheap_operation) for m in learned.modules() if isinstance(m, GhostModule))
    assert count_params(learned) - count_params(model) == cheap_params > 0


def test_seed003_fixed_cheap_features_are_not_trained():
    torch.manual_seed(0)
    model = build_model("resnet20", stem="cifar", num_classes=10, conv="ghost_module", ghost_cheap="fixed")
    ghosts = [m for m in model.modules() if isinstance(m, GhostModule)]
    assert ghosts and all(not list(m.cheap_operation.parameters()) for m in ghosts)  # nothing an optimizer sees
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "cheap_operation.0.weight" in k}
    assert len(buffers) == len(ghosts)  # saved with the checkpoint
    primary = ghosts[0].primary_conv[0].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    model.train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())  # fixed
    assert not torch.equal(ghosts[0].primary_conv[0].weight, primary)  # while the rest trains
    block = ghosts[1].eval()  # layer1's first conv: 16 channels in and out
    ghost_part = block(torch.randn(1, 16, 8, 8))[:, block.out_channels - block.ghost_channels :]
    assert ghost_part.abs().max() > 0  # a transform, not zeros


@pytest.mark.parametrize(
    "preset, rows",
    [
        ("mobilenet_v1_table4", 2),
        ("mobilenet_v1_table5", 2),
        ("ghostnet_table2", 4),
        ("ghostnet_table3", 4),
        ("ghostnet_table4", 4),
    ],
)
def test_ghost_and_mobilenet_v1_presets_sweep_exactly_their_tables_rows(make_train_cfg, preset, rows):
    """Each job of the preset's sweep is one of its table's rows (the networks the rows name), each row once."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    data = (
        "data=imagenet" if preset.startswith("mobilenet_v1") else "data=cifar10"
    )  # the fixture's default is synthetic
    params = make_train_cfg(f"experiment={preset}", data).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    assert len(jobs) == rows
    found = []
    for job in jobs:
        model = OmegaConf.to_container(make_train_cfg(f"experiment={preset}", data, *job).model, resolve=True)
        arguments = registry.resolved_arguments(
            **{k: v for k, v in model.items() if k not in ("_target_", "pretrained")}
        )
        matching = [
            row
            for row in own_rows(preset)
            if row["model"] == model["name"]
            and all(arguments.get(key) == value for key, value in row_options(row).items())
        ]
        assert len(matching) == 1, (job, arguments)
        found.append(matching[0]["source"])
    assert len(set(found)) == rows
    recipe = make_train_cfg(f"experiment={preset}", data)
    if preset.startswith("ghostnet"):  # He et al.'s CIFAR recipe (the paper states only crop and flip)
        assert recipe.data.name == "cifar10" and recipe.model.stem == "cifar"
        assert (recipe.optimizer.lr, recipe.optimizer.momentum, recipe.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
        assert list(recipe.scheduler.milestones) == [82, 123]
        assert OmegaConf.load(CONF / "experiment" / f"{preset}.yaml").trainer.max_epochs == 164  # the fixture's is 1
        assert recipe.data.crop_padding == 4 and recipe.data.flip
    else:
        assert recipe.data.name == "imagenet" and recipe.optimizer.lr == 0.045


# VGG-16's five max-pools need 32x32
GHOST_TINY_SWEEP = [o for o in TINY_SWEEP if not o.startswith("data.image_size=")] + ["data.image_size=32"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, extra, rows",
    [
        ("mobilenet_v1_table4", ["model.width=0.25"], 2),
        ("mobilenet_v1_table5", ["model.width=0.25"], 2),
        ("ghostnet_table2", ["model.width=0.125"], 4),
        ("ghostnet_table3", ["model.width=0.125"], 4),
        ("ghostnet_table4", ["model.width=0.125"], 4),
    ],
)
def test_ghost_and_mobilenet_v1_presets_multirun_every_row_and_report_beside_their_tables(
    tmp_path, preset, extra, rows
):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={preset}", f"paths.log_dir={tmp_path}"]
    train = subprocess.run(
        [*command, *GHOST_TINY_SWEEP, *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    runs = [json.loads(path.read_text()) for path in sweep.glob("*/metrics.json")]
    assert len(runs) == rows and all(0.0 <= run["test/acc"] <= 1.0 for run in runs)
    recorded = {
        (run["model"], run["conv"], run.get("model/ghost_ratio"), run.get("model/ghost_kernel")) for run in runs
    }
    assert len(recorded) == rows or preset == "mobilenet_v1_table5"  # each run a different row
    if preset == "mobilenet_v1_table5":
        assert {run["model/shallow"] for run in runs} == {True, False}
    report_against_the_table(sweep, preset, env)
