"""Per-layer times (lnrepro.profiling.layer_times): each runtime's rows are real operators of what it ran, classed in
the one vocabulary, with the multiply-adds and bytes of their shapes; the tables are written as CSV; and for GhostNet
at 224x224 ONNX Runtime's node times account for its end-to-end latency.

The small network below has one layer of each kind a test names (a dense 3x3 conv, a depthwise conv, a 1x1 conv, a
grouped 1x1 conv, a concatenation of known shapes, squeeze-and-excitation, a residual add, a linear layer), so each
runtime's classing is checked on layers whose kind is known by construction.
"""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from lnrepro.models import build_model
from lnrepro.models.layers import SqueezeExcite
from lnrepro.profiling import runtimes
from lnrepro.profiling.counts import count_macs, count_operators, moved_bytes
from lnrepro.profiling.layer_times import (
    COLUMNS,
    KINDS,
    eager_layer_times,
    layer_times,
    onnx_layer_times,
    onnx_scope,
    profiled_session,
    read_layer_table,
    runtime_layer_times,
    time_by_kind,
)
from lnrepro.profiling.roofline import machine_peaks, roofline_bound_ms
from lnrepro.schema import declared

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
F32 = 4


class Kinds(nn.Module):
    """One layer of each kind, with the shapes the tests compute by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # conv
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.pointwise = nn.Conv2d(8, 6, 1)  # conv1x1
        self.grouped = nn.Conv2d(8, 4, 1, groups=2)  # grouped: 4 input channels per group
        self.se = SqueezeExcite(10, 4)  # se
        self.fc = nn.Linear(10, 5)  # linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(torch.relu(self.stem(x)))
        x = torch.cat([self.pointwise(x), self.grouped(x)], 1)  # 6 + 4 channels
        x = self.se(x) + x
        return self.fc(x.mean((2, 3)))


def kinds_net() -> nn.Module:
    torch.manual_seed(0)
    return Kinds().eval()


def layer(rows, **match):
    found = [row for row in rows if all(getattr(row, key) == value for key, value in match.items())]
    assert len(found) == 1, (match, [row.name for row in rows])
    return found[0]


def test_count_operators_counts_every_operator_and_the_macs_of_count_macs():
    net = kinds_net()
    operators = count_operators(net, SIZE)
    assert sum(op.macs for op in operators) == count_macs(net, SIZE).macs
    cat = [op for op in operators if op.op == "cat"]
    assert len(cat) == 1
    # inputs (6 and 4 channels) + output (10 channels), float32
    assert cat[0].bytes_moved == (6 + 4 + 10) * SIZE * SIZE * F32
    depthwise = next(op for op in operators if op.module == "depthwise")
    weights = 8 * 9 + 8
    assert depthwise.bytes_moved == (8 * SIZE * SIZE * 2 + weights) * F32
    assert depthwise.macs == 8 * SIZE * SIZE * 9


def test_views_move_nothing_and_in_place_writes_count_both_ways():
    class Shuffle(nn.Module):
        def forward(self, x):
            y = x.view(1, 2, 2, SIZE, SIZE).transpose(1, 2)  # views: nothing moved
            z = y.contiguous()  # the channel shuffle's copy
            return torch.relu_(z.view(1, 4, SIZE, SIZE))  # in place: read and written

    operators = {op.op: op for op in count_operators(Shuffle(), (4, SIZE, SIZE))}
    tensor = 4 * SIZE * SIZE * F32
    assert operators["view"].bytes_moved == 0 and operators["transpose"].bytes_moved == 0
    assert operators["contiguous"].bytes_moved == 2 * tensor
    assert operators["relu_"].bytes_moved == 2 * tensor and operators["relu_"].in_place
    assert moved_bytes([(10, 4)], []) == 0


def test_eager_rows_are_the_operators_with_their_kinds():
    net = kinds_net()
    rows = eager_layer_times(net, SIZE, runs=3, warmup=1).rows
    assert {row.kind for row in rows} <= set(KINDS)
    assert layer(rows, name="stem/conv2d").kind == "conv"
    assert layer(rows, name="depthwise/conv2d").kind == "depthwise"
    assert layer(rows, name="pointwise/conv2d").kind == "conv1x1"
    assert layer(rows, name="grouped/conv2d").kind == "grouped"
    assert layer(rows, name="fc/linear").kind == "linear"
    assert layer(rows, name="Kinds/cat").kind == "concat_split_shuffle"
    assert layer(rows, name="Kinds/cat").bytes == (6 + 4 + 10) * SIZE * SIZE * F32
    assert layer(rows, name="Kinds/add").kind == "elementwise"
    assert layer(rows, name="Kinds/mean").kind == "pool"
    assert {row.kind for row in rows if row.name.startswith("se")} == {"se"}
    assert all(row.time_ms > 0 for row in rows)
    assert net.training is False


def onnx_rows(runtime: str, net: nn.Module, tmp_path):
    calibration = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    runtimes.prepare(runtime, net, SIZE, calibration=calibration, workdir=tmp_path)
    name = "model.int8.onnx" if runtime.endswith("int8") else "model.onnx"
    return onnx_layer_times((tmp_path / name).read_bytes(), SIZE, runs=3, warmup=1, se=["se"]).rows


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime_int8"])
def test_onnxruntime_rows_class_the_nodes_it_ran(runtime, tmp_path):
    rows = onnx_rows(runtime, kinds_net(), tmp_path)
    assert {row.kind for row in rows} <= set(KINDS)
    convs = {onnx_scope(row.name).split(".")[0]: row for row in rows if row.op in ("Conv", "QLinearConv")}
    assert convs["depthwise"].kind == "depthwise"
    assert convs["pointwise"].kind == "conv1x1"
    assert convs["grouped"].kind == "grouped"
    assert layer(rows, op="Gemm" if runtime == "onnxruntime" else "QGemm").kind == "linear"
    assert {row.kind for row in rows if onnx_scope(row.name).startswith("se")} <= {"se", "quantize"}
    if runtime == "onnxruntime":
        concat = layer(rows, op="Concat")
        assert concat.kind == "concat_split_shuffle"
        assert concat.bytes == (6 + 4 + 10) * SIZE * SIZE * F32
        # ONNX Runtime's NCHWc layout pads the 8 channels to its SIMD block (8 with AVX2, 16 with AVX-512)
        assert convs["depthwise"].macs in {channels * SIZE * SIZE * 9 for channels in (8, 16)}
    else:
        assert convs["depthwise"].macs == 8 * SIZE * SIZE * 9
        assert any(row.kind == "quantize" for row in rows)


@pytest.mark.parametrize("runtime", ["executorch", "executorch_int8"])
def test_executorch_rows_class_the_operators_xnnpack_ran(runtime):
    calibration = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    rows = runtime_layer_times(runtime, kinds_net(), SIZE, calibration=calibration, runs=3, warmup=1).rows
    assert {row.kind for row in rows} <= set(KINDS)
    # XNNPACK's events carry no shapes: the layers are found by the work the lowered graph gives them
    by_macs = {row.macs: row for row in rows if row.macs}
    assert by_macs[8 * SIZE * SIZE * 27].kind == "conv"
    assert by_macs[8 * SIZE * SIZE * 9].kind == "depthwise"
    assert by_macs[6 * SIZE * SIZE * 8].kind == "conv1x1"  # run by XNNPACK's "Fully Connected" operator
    assert by_macs[4 * SIZE * SIZE * 4].kind == "grouped"
    assert by_macs[5 * 10].kind == "linear"
    assert (
        by_macs[8 * SIZE * SIZE * 9].op.startswith("Convolution (NHWC") and "DWConv" in by_macs[8 * SIZE * SIZE * 9].op
    )
    copies = [row for row in rows if row.op.startswith("Copy")]  # the concatenation, as XNNPACK runs it
    assert copies and all(row.kind == "concat_split_shuffle" and row.bytes is None for row in copies)
    assert [row.op for row in rows].count("DELEGATE_CALL") == 2  # each delegate call's time beyond its operators
    if runtime == "executorch_int8":
        assert any(row.kind == "quantize" for row in rows)


def test_onnx_scope_reads_the_exporters_module_paths():
    assert onnx_scope("/blocks/blocks.3/blocks.3.0/se/fc1/Conv") == "blocks.3.0.se.fc1"
    assert onnx_scope("/features/features.0/conv/Conv") == "features.0.conv"
    assert onnx_scope("/features/features.4/block/block.2/fc1/Conv") == "features.4.block.2.fc1"
    assert onnx_scope("/act1/Relu_output_0_nchwc") == "act1"
    assert onnx_scope("ReorderOutput_token_3") == ""


def test_layer_times_writes_the_tables_and_their_sums(tmp_path):
    net = kinds_net()
    metrics = layer_times(net, SIZE, ["eager", "compiled", "onnxruntime"], tmp_path, runs=3, warmup=1)
    peaks = machine_peaks(torch.get_num_threads())
    assert not (tmp_path / "layers" / "compiled.csv").exists()  # not reported: inductor fuses across layers
    for runtime in ("eager", "onnxruntime"):
        path = tmp_path / "layers" / f"{runtime}.csv"
        with open(path, newline="") as file:
            assert tuple(next(csv.reader(file))) == COLUMNS
        rows = read_layer_table(path)
        assert rows and all(row["kind"] in KINDS for row in rows)
        key = f"layers/{runtime}_sum_ms"
        assert declared(key) and declared(f"layers/{runtime}_latency_ms")
        assert metrics[key] == pytest.approx(sum(row["time_ms"] for row in rows), rel=1e-4)
        assert metrics[f"layers/{runtime}_latency_ms"] > 0
        conv = next(row for row in rows if row["macs"])
        assert conv["intensity"] == pytest.approx(2 * conv["macs"] / conv["bytes"], rel=1e-4)
        assert conv["bound_ms"] == pytest.approx(roofline_bound_ms(conv["macs"], conv["bytes"], peaks), rel=1e-4)
        assert conv["roofline_share"] == pytest.approx(conv["bound_ms"] / conv["time_ms"], rel=1e-4)
        assert conv["gflops"] == pytest.approx(2 * conv["macs"] / conv["time_ms"] / 1e6, rel=1e-4)
        shares = time_by_kind(rows)
        assert sum(share for _, _, share in shares) == pytest.approx(1)
    assert metrics["roofline/gflops"] == peaks.gflops


def test_compiled_alone_is_named_as_not_reported():
    with pytest.raises(Exception, match="cannot report per-layer times"):
        runtime_layer_times("compiled", kinds_net(), SIZE)


def test_onnxruntime_layers_of_ghostnet_at_224_sum_to_its_latency(tmp_path):
    """The issue's check: ONNX Runtime's node times (its own profiler) add up to its end-to-end median within 15%,
    and every row is a node of the graph it ran: no row stands for time nobody measured."""
    import onnx

    net = build_model("ghostnet").eval()
    runtimes.prepare("onnxruntime", net, 224, workdir=tmp_path)
    program = (tmp_path / "model.onnx").read_bytes()
    table = onnx_layer_times(program, 224, runs=30, warmup=5)
    assert abs(table.sum_ms / table.latency_ms - 1) <= 0.15, (table.sum_ms, table.latency_ms)
    _, optimized = profiled_session(program, tmp_path)
    nodes = [node.name for node in onnx.load(str(optimized)).graph.node]
    assert sorted(row.name for row in table.rows) == sorted(nodes)
    assert {row.kind for row in table.rows} <= set(KINDS) - {"other"}
    assert all(row.macs is not None and row.bytes is not None for row in table.rows)


def test_profile_with_layers_writes_a_table_per_runtime_and_prints_where_the_time_goes(tmp_path, capsys):
    from lnrepro.tasks.profile import print_layer_times, profile
    from tests.conftest import compose_config

    overrides = ["model=ghostnet", "model.width=0.25", "data=synthetic", "data.image_size=16", "profile.runs=3"]
    overrides += ["profile.warmup=1", "profile.batch_size=2", "profile.memory=false", "profile.train=false"]
    overrides += ["profile.runtimes=[eager,onnxruntime]", "profile.layers=true"]
    metrics = profile(compose_config("profile", tmp_path, overrides))
    printed = capsys.readouterr().out
    for runtime in ("eager", "onnxruntime"):
        rows = read_layer_table(tmp_path / "layers" / f"{runtime}.csv")
        assert metrics[f"layers/{runtime}_sum_ms"] == pytest.approx(sum(row["time_ms"] for row in rows), rel=1e-4)
        assert f"where the time goes in {runtime}" in printed and f"the ten most expensive rows in {runtime}" in printed
    assert "per layer, one image" in printed  # today's table of multiply-adds stays
    print_layer_times(tmp_path, ["compiled"], metrics)
    assert "per-layer times in compiled: not reported" in capsys.readouterr().out


def test_time_by_kind_skips_empty_times_and_counts_unknown_kinds_as_other():
    from lnrepro.profiling.layer_times import time_by_kind

    rows = [
        {"kind": "depthwise", "time_ms": 3.0},
        {"kind": "conv1x1", "time_ms": None},
        {"kind": "mystery", "time_ms": 1.0},
    ]
    assert time_by_kind(rows) == [("depthwise", 3.0, 0.75), ("other", 1.0, 0.25)]
