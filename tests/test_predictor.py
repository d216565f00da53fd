"""The latency predictor (lnrepro/profiling/predictor.py, lnrepro/experiments/latency_predictor.py and
latency_budget.py): a network's kernels are described alike from its torch calls and from a runtime's per-layer
profile (ONNX Runtime's padded channels paired back to the logical ones); a tiny fit through lnrepro-profile's task
measures, caches, validates by leaving a family out and predicts; a killed fit resumes from what it measured; a
predictor from another CPU is refused with the command that fits one; `profile.predict` with `profile.measure=false`
runs nothing; the budget search picks the widest width under the budget and names the fastest network when none
fits; `lnrepro-report --predict` fills the predicted column of runs never timed."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.experiments import latency_budget, latency_predictor
from lnrepro.experiments.latency_predictor import Candidate, KernelStack, MeasurementStore
from lnrepro.profiling import kernels, predictor
from lnrepro.profiling.kernels import KernelShape, describe, paired_rows
from lnrepro.tasks.profile import profile
from tests.conftest import compose_config

#: A plan small enough to measure in seconds: two tiny zoo networks of two families and two kernel stacks.
TINY_PLAN = [
    Candidate("t-0", "mobilenet_v2", 16, "mobilenet_v2", {}, 0.25, "cifar"),
    Candidate("t-1", "kernels", 12, layers=(("conv", 8, 3, 1, 1, "relu"), ("depthwise", 8, 3, 2, 8, "hardswish"))),
    Candidate("t-2", "shufflenet_v2", 16, "shufflenet_v2", {}, 0.5, "cifar"),
    Candidate("t-3", "kernels", 12, layers=(("conv", 12, 3, 1, 1, "relu6"), ("grouped", 24, 1, 1, 4, "none"))),
]
FIT = [
    "experiment=latency_predictor",
    "profile.runtimes=[onnxruntime]",
    "profile.predictor.blocks=1",
    "profile.predictor.runs=3",
    "profile.predictor.warmup=1",
]


def tiny_plan(networks: int, kernels: int, seed: int = 0) -> list[Candidate]:
    return TINY_PLAN[: networks + kernels]


def fit(tmp_path, name: str = "fit", *overrides: str) -> dict:
    return profile(compose_config("profile", tmp_path / name, [*FIT, *overrides]))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny fit for the tests that only read its predictor: (LNREPRO_ROOT, the fit's output folder, metrics)."""
    folder = tmp_path_factory.mktemp("fitted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LNREPRO_ROOT", str(folder / "root"))
        patch.setattr(latency_predictor, "plan", tiny_plan)
        predictor.forget_loaded()
        metrics = fit(folder, "fit", "profile.predictor.networks=2", "profile.predictor.kernels=2")
    predictor.forget_loaded()
    yield folder / "root", folder / "fit", metrics
    predictor.forget_loaded()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, and the tiny plan in place of the sampled one."""
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(latency_predictor, "plan", tiny_plan)
    predictor.forget_loaded()
    yield tmp_path / "root" / "cache"
    predictor.forget_loaded()


@pytest.fixture
def fitted_cache(fitted, monkeypatch):
    """The module's tiny fit as this test's cache."""
    monkeypatch.setenv("LNREPRO_ROOT", str(fitted[0]))
    predictor.forget_loaded()
    yield fitted[0] / "cache"
    predictor.forget_loaded()


def test_a_network_is_described_by_its_kernels_and_glue():
    stack = KernelStack(
        [("conv", 8, 3, 1, 1, "relu"), ("depthwise", 8, 3, 2, 8, "hardswish"), ("grouped", 16, 1, 1, 4, "none")]
    )
    network = describe(stack, (3, 12, 12))
    assert [k.kind for k in network.kernels] == ["conv", "depthwise", "grouped"]
    first, depthwise, grouped = network.kernels
    assert (first.in_channels, first.out_channels, first.kernel, first.stride, first.height) == (3, 8, 3, 1, 12)
    assert (depthwise.groups, depthwise.stride, depthwise.height, depthwise.width) == (8, 2, 6, 6)
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (4, 8, 16)
    assert depthwise.macs == 8 * 6 * 6 * 9 and depthwise.bytes > 0
    assert network.glue_calls["clamp"] == 1 and network.glue_calls["activation"] == 1
    assert network.glue_calls["norm"] == 3 and network.glue_bytes["norm"] > 0
    assert (
        kernels.glue_group("hardswish") == "activation"
        and kernels.glue_group("avg_pool2d") == "avg_pool"
        and kernels.glue_group("cat") == "movement"
    )


def test_padded_runtime_rows_get_the_networks_logical_shapes():
    logical = [
        KernelShape("conv1x1", 12, 6, 1, 1, 1, 8, 8, 100, 10),
        KernelShape("conv1x1", 12, 18, 1, 1, 1, 8, 8, 300, 30),
        KernelShape("depthwise", 18, 18, 3, 2, 18, 4, 4, 50, 5),
    ]
    padded = [  # ONNX Runtime's NCHWc: channels rounded up to its block, in its own order
        (KernelShape("conv1x1", 16, 32, 1, 1, 1, 8, 8, 999, 99), 0.3),
        (KernelShape("conv1x1", 16, 8, 1, 1, 1, 8, 8, 999, 99), 0.1),
        (KernelShape("depthwise", 32, 32, 3, 2, 32, 4, 4, 99, 9), 0.2),
        (KernelShape("conv", 3, 8, 3, 2, 1, 4, 4, 99, 9), 0.5),  # no such kernel in the network: not paired
    ]
    rows, unpaired = paired_rows(logical, padded)
    assert unpaired == 1
    assert sorted((k.out_channels, ms) for k, ms in rows) == [(6, 0.1), (18, 0.2), (18, 0.3)]
    assert all(k in logical for k, _ in rows)


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_runtime_rows_carry_the_shapes_the_torch_side_describes(runtime):
    from lnrepro.profiling.layer_times import runtime_layer_times

    torch.manual_seed(0)
    stack = KernelStack(
        [("conv", 12, 3, 1, 1, "relu"), ("depthwise", 12, 3, 1, 12, "relu"), ("conv1x1", 20, 1, 1, 1, "none")]
    ).eval()
    network = describe(stack, (3, 10, 10))
    table = runtime_layer_times(runtime, stack, (3, 10, 10), runs=2, warmup=1)
    rows, unpaired = paired_rows(network.kernels, [(r.shape, r.time_ms) for r in table.rows if r.shape is not None])
    assert unpaired == 0 and len(rows) == len(network.kernels) == 3


def test_a_tiny_fit_measures_caches_validates_and_predicts(fitted, fitted_cache):
    _, out, metrics = fitted
    key = predictor.PredictorKey.here("onnxruntime", 1)
    folder = key.folder()
    assert folder.parent == fitted_cache / "predictor"
    records = MeasurementStore(folder).read()
    assert sorted(records) == ["t-0", "t-1", "t-2", "t-3"]
    assert all(len(r["latencies_ms"]) == 2 and r["rows"] for r in records.values())
    validation = json.loads((out / "validation.json").read_text())
    for statistic in ("within_10pct", "within_5pct", "spearman", "noise_pct"):
        assert f"onnxruntime/{statistic}" in validation
    assert validation["onnxruntime/networks"] == 2  # both families held out in turn; stacks only ever train
    assert 0 <= validation["onnxruntime/within_10pct"] <= 1
    assert (out / "validation.csv").read_text().count("\n") == 3
    assert (out / "validation.png").stat().st_size > 0
    assert metrics["predictor/onnxruntime/samples"] == 4
    loaded = predictor.load_predictor("onnxruntime", 1)
    network = describe(TINY_PLAN[0].build().eval(), (3, 16, 16))
    predicted = loaded.predict_ms(network)
    assert 0 < predicted < 100
    wider = describe(Candidate("w", "mobilenet_v2", 16, "mobilenet_v2", {}, 1.0, "cifar").build().eval(), (3, 16, 16))
    assert loaded.predict_ms(wider) > predicted  # four times the channels cost more


def test_a_killed_fit_resumes_from_what_it_measured(tmp_path, cache, monkeypatch):
    measured = []
    original = latency_predictor.measure_sample

    def dies_on_the_third(*args, **kwargs):
        if len(measured) == 2:
            raise KeyboardInterrupt
        measured.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(latency_predictor, "measure_sample", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "first", "profile.predictor.networks=2", "profile.predictor.kernels=2")
    assert len(MeasurementStore(predictor.PredictorKey.here("onnxruntime", 1).folder()).read()) == 2
    measured.clear()
    monkeypatch.setattr(latency_predictor, "measure_sample", lambda *a, **k: measured.append(a[1]) or original(*a, **k))
    fit(tmp_path, "second", "profile.predictor.networks=2", "profile.predictor.kernels=2")
    assert len(measured) == 2  # only the two it had not measured


def test_a_predictor_of_another_cpu_or_thread_count_is_refused_with_the_fit_command(fitted_cache, monkeypatch):
    with pytest.raises(UserInputError, match=r"lnrepro-profile experiment=latency_predictor .*profile.threads=2"):
        predictor.load_predictor("onnxruntime", 2)
    from lnrepro.profiling import cpu

    real = cpu.cpu_features()
    monkeypatch.setattr(cpu, "cpu_features", lambda: {**real, "model": "Some Other CPU"})
    predictor.forget_loaded()
    with pytest.raises(UserInputError) as refused:
        predictor.load_predictor("onnxruntime", 1)
    message = str(refused.value)
    assert "\n" not in message and f"fitted on {real['model']}" in message and "Some Other CPU" in message
    assert "lnrepro-profile experiment=latency_predictor 'profile.runtimes=[onnxruntime]'" in message
    with pytest.raises(UserInputError, match="compiled"):
        predictor.PredictorKey.here("compiled")


def test_a_corrupt_predictor_file_is_refused_in_one_line(fitted, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(fitted[0], tmp_path / "root")
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path / "root"))
    predictor.forget_loaded()
    folder = predictor.PredictorKey.here("onnxruntime", 1).folder()
    (folder / predictor.MODEL_FILE).write_bytes(b"not a skops file")
    predictor.forget_loaded()
    with pytest.raises(UserInputError, match="cannot be read.*delete the folder"):
        predictor.load_predictor("onnxruntime", 1)


def test_predict_without_measuring_runs_and_exports_nothing(tmp_path, fitted_cache, monkeypatch):
    from lnrepro.profiling import runtimes

    def refuse(*args, **kwargs):
        raise AssertionError("profile.measure=false ran a runtime")

    monkeypatch.setattr(runtimes, "prepare", refuse)
    overrides = ["model=mobilenet_v2", "model.width=0.25", "data.image_size=16", "profile.threads=1"]
    overrides += ["profile.runtimes=[onnxruntime]", "profile.predict=true", "profile.measure=false"]
    metrics = profile(compose_config("profile", tmp_path / "predict", overrides))
    assert metrics[schema.predicted_latency_key("onnxruntime")] > 0
    assert schema.latency_key("onnxruntime") not in metrics and metrics[schema.MACS] > 0
    assert not (tmp_path / "predict" / "export").exists()
    written = json.loads((tmp_path / "predict" / "metrics.json").read_text())
    assert written[schema.predicted_latency_key("onnxruntime")] == metrics[schema.predicted_latency_key("onnxruntime")]


class MacsPredictor:
    """Stands in for a fitted predictor: one millisecond per million multiply-adds."""

    def predict_ms(self, network) -> float:
        return sum(kernel.macs for kernel in network.kernels) / 1e6


def test_the_budget_search_picks_the_widest_width_that_fits(monkeypatch):
    from lnrepro.models import build_model

    monkeypatch.setattr(latency_budget, "load_predictor", lambda runtime, threads=None: MacsPredictor())
    options = latency_budget.BudgetOptions(("mobilenet_v2",), (0.25, 1.0, 0.25), None, measure=False)

    def macs(width: float) -> float:
        network = describe(build_model("mobilenet_v2", width=width, num_classes=10, stem="cifar").eval(), (3, 32, 32))
        return MacsPredictor().predict_ms(network)

    budget = (macs(0.5) + macs(0.75)) / 2  # 0.5 fits, 0.75 does not
    [choice] = latency_budget.find_widest(budget, options, ["onnxruntime"], "cifar", 10, [32], None)
    assert choice.width == 0.5 and choice.predicted["onnxruntime"] == pytest.approx(macs(0.5))
    with pytest.raises(UserInputError, match=r"below the fastest network's predicted latency: mobilenet_v2 width 0.25"):
        latency_budget.find_widest(macs(0.25) / 2, options, ["onnxruntime"], "cifar", 10, [32], None)


def test_the_budget_preset_confirms_its_choice_by_measuring(tmp_path, fitted_cache):
    overrides = [
        "experiment=latency_budget",
        "profile.budget_ms=1000",
        "profile.budget.families=[shufflenet_v2]",
        "profile.budget.widths=[0.25,0.5,0.25]",
        "profile.runs=3",
        "profile.warmup=1",
        "data.image_size=16",
    ]
    metrics = profile(compose_config("profile", tmp_path / "budget", overrides))
    assert metrics["budget/shufflenet_v2_16_width"] == 0.5
    rows = (tmp_path / "budget" / "budget.csv").read_text().splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(",")))
    assert header[:4] == ["family", "width", "side", "runtime"]
    assert float(row["predicted_ms"]) > 0 and float(row["measured_ms"]) > 0
    assert row["published"].startswith("shufflenet_v2 w0.5") and float(row["top1"]) > 0
    missing = compose_config("profile", tmp_path / "missing", ["experiment=latency_budget"])
    with pytest.raises(UserInputError, match="profile.budget_ms=<milliseconds>"):
        profile(missing)


def test_the_report_predicts_runs_never_timed(tmp_path, fitted_cache):
    from lnrepro.reporting import make_report

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    schema.write_metrics(
        run,
        {
            schema.MODEL: "mobilenet_v2",
            schema.WIDTH: 0.25,
            schema.STEM: "cifar",
            schema.INPUT_SIZE: "3x16x16",
            schema.DATA: "cifar10",
            schema.TEST_ACC: 0.5,
        },
    )
    report = make_report([tmp_path / "runs"], plots=False, predict=["onnxruntime"])
    assert "onnxruntime predicted ms" in report.markdown
    with pytest.raises(UserInputError, match="experiment=latency_predictor"):
        make_report([tmp_path / "runs"], plots=False, predict=["executorch"])


def test_fit_options_are_checked():
    with pytest.raises(UserInputError, match="profile.predictor.netwroks is not a predictor option"):
        latency_predictor.FitOptions.from_config({"netwroks": 3})
    with pytest.raises(UserInputError, match="profile.predictor.runs"):
        latency_predictor.FitOptions.from_config({"runs": 0})


def test_the_plan_extends_and_never_repeats_a_network():
    small, large = latency_predictor.plan(7, 2), latency_predictor.plan(14, 4)
    assert [c.id for c in small] == [c.id for c in large if c.id in {s.id for s in small}]
    networks = [c for c in large if c.model]
    assert len({latency_predictor._signature(c) for c in networks}) == len(networks) == 14
    assert {c.family for c in networks} >= set(predictor.VALIDATION_FAMILIES)
    assert isinstance(KernelStack(large[1].layers), nn.Module)


@pytest.mark.slow
def test_a_real_sampled_fit_holds_every_family_out_and_ranks_them(tmp_path, monkeypatch):
    """The sampler's own networks (not the tiny plan), a short fit in ONNX Runtime (about 2 minutes on 2 cores): every
    family is held out and predicted; the full fit is `make fit-predictor` (docs/RESULTS.md)."""
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path / "root"))
    predictor.forget_loaded()
    metrics = fit(
        tmp_path, "fit", "profile.predictor.networks=21", "profile.predictor.kernels=8", "profile.predictor.runs=5"
    )
    for family in predictor.VALIDATION_FAMILIES:
        assert metrics[f"onnxruntime/{family}/networks"] >= 3
    assert metrics["onnxruntime/networks"] == 18  # 21 networks, every seventh a baseline that only trains
    assert metrics["onnxruntime/spearman"] > 0.8  # larger networks are predicted slower


def test_a_training_run_predicts_after_its_fit_and_refuses_before_it_without_a_predictor(
    fitted_cache, make_train_cfg, monkeypatch, tmp_path
):
    from lnrepro.tasks.train import train

    predicting = [
        "model=mobilenet_v2",
        "model.width=0.25",
        "profile.end_of_fit=true",
        "profile.threads=1",
        "profile.runtimes=[onnxruntime]",
        "profile.predict=true",
        "profile.measure=false",
    ]
    metrics = train(make_train_cfg(*predicting))
    assert metrics[schema.predicted_latency_key("onnxruntime")] > 0
    assert schema.latency_key("onnxruntime") not in metrics
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path / "empty"))
    predictor.forget_loaded()
    with pytest.raises(UserInputError, match="no latency predictor for onnxruntime"):
        train(make_train_cfg(*predicting, output_dir=tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()  # refused before the fit


def test_a_line_cut_short_in_the_store_costs_only_itself(tmp_path):
    store = MeasurementStore(tmp_path)
    store.path.write_text('{"id": "a", "name": "cut')  # a fit killed while writing
    store.append({"id": "b", "name": "b", "family": "kernels", "error": "refused"})
    assert list(store.read()) == ["b"]


def test_budget_options_take_one_value_or_a_list():
    options = latency_budget.BudgetOptions.from_config({"families": "ghostnet", "sides": 224})
    assert options.families == ("ghostnet",) and options.sides == (224,)
    with pytest.raises(UserInputError, match="must be numbers"):
        latency_budget.BudgetOptions.from_config({"sides": ["big"]})
