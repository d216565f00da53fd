"""Deployment runtimes (lnrepro.profiling.runtimes): every runtime runs and agrees with eager PyTorch, the caller's
network is left as it was, and bad requests are refused in one line before any work.

Networks are tiny (a Conv-BN-ReLU net and ShuffleNet V2 / GhostNet at width 0.25 on 16x16 or 32x32 inputs) and
their BatchNorm statistics and classifier are randomised, so that logits are of order 1 and differ between
classes: a freshly initialised network's logits are ~1e-2 and nearly tied, which would make an absolute logit
bound and an argmax comparison say little. Compilation takes tens of seconds on 2 shared cores, so one test
compiles the tiny net; the measurement of every runtime on ShuffleNet V2 is marked slow.
"""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models import build_model
from lnrepro.profiling import cpu, runtimes
from lnrepro.profiling.cpu import contended, cpu_features, cpu_pressure
from lnrepro.profiling.runtimes import measure_runtime, prepare, runtime_accuracy
from lnrepro.schema import RUNTIMES

pytestmark = pytest.mark.usefixtures("one_thread")

ONNX_BOUND = 1e-4  # |ONNX Runtime fp32 - eager| logits of std ~3: measured 1e-6 (tiny, ShuffleNet V2) to 1.2e-5
#                   (GhostNet), float reassociation in the folded Conv+BN and ONNX Runtime's kernels


def randomised(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """`model` in eval mode with random BatchNorm affine parameters and statistics and its last Linear rescaled so
    that the logits of random images have a standard deviation of about 3."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = 0.1 * torch.randn(n, generator=generator)
            module.running_mean = 0.1 * torch.randn(n, generator=generator)
            module.running_var = torch.rand(n, generator=generator) + 0.5
    model.eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        spread = model(torch.randn(16, 3, size, size, generator=generator)).std()
        classifier.weight *= 3 / spread
        classifier.bias *= 3 / spread
    return model


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return randomised(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        ),
        16,
    )


def zoo_net(name: str, size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return randomised(build_model(name, width=0.25, num_classes=10, stem="cifar"), size)


def images(count: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def eager_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(batch)


# --- the CPU and contention --------------------------------------------------------------------------------------
def test_cpu_features_has_the_keys():
    features = cpu_features()
    assert set(features) == {"model", "avx2", "avx512", "vnni", "amx", "bf16"}
    assert isinstance(features["model"], str) and features["model"]
    assert all(isinstance(features[key], bool) for key in ("avx2", "avx512", "vnni", "amx", "bf16"))
    if features["avx512"] or features["amx"]:  # every CPU with AVX-512 or AMX has AVX2
        assert features["avx2"]


def test_cpu_pressure_and_contended():
    pressure = cpu_pressure()
    assert pressure is None or 0 <= pressure <= 100
    assert not contended(2.0, 2.5, None)
    assert contended(2.0, 3.5, None)  # p90 / median 1.75: unsteady passes
    assert not contended(0.032, 0.050, None)  # as unsteady, but by 18 microseconds: jitter
    assert not contended(2.0, 2.5, cpu.PRESSURE_THRESHOLD - 1)
    assert contended(2.0, 2.5, cpu.PRESSURE_THRESHOLD + 1)


# --- refusals ----------------------------------------------------------------------------------------------------
def test_unknown_runtime_is_refused_with_the_choices():
    with pytest.raises(UserInputError) as error:
        prepare("tensorrt", tiny_net(), 16)
    assert all(name in str(error.value) for name in RUNTIMES)
    with pytest.raises(UserInputError, match="unknown runtime 'openvino'"):
        measure_runtime("openvino", tiny_net(), 16)


@pytest.mark.parametrize("runtime, package", [("onnxruntime", "onnxruntime"), ("onnxruntime_int8", "onnx")])
def test_a_missing_package_is_named(monkeypatch, runtime, package):
    real = runtimes.importlib.util.find_spec
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda name: None if name == package else real(name))
    with pytest.raises(UserInputError, match=f"needs the package {package}"):
        prepare(runtime, tiny_net(), 16, calibration=images(4, 16, 1))


@pytest.mark.parametrize("runtime", ["executorch", "executorch_int8"])
def test_executorch_without_the_mobile_extra_names_the_extra(monkeypatch, runtime):
    real = runtimes.importlib.util.find_spec
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda name: None if name == "executorch" else real(name))
    with pytest.raises(UserInputError, match=r"needs the package executorch.*pip install 'lnrepro\[mobile\]'"):
        prepare(runtime, tiny_net(), 16, calibration=images(4, 16, 1))


def test_compiled_without_a_compiler_is_refused(monkeypatch):
    monkeypatch.setattr(runtimes.shutil, "which", lambda name: None)
    with pytest.raises(UserInputError, match="needs a C/C.. compiler.*g\\+\\+"):
        prepare("compiled", tiny_net(), 16)


@pytest.mark.parametrize(
    "calibration, message",
    [
        (None, "needs calibration images"),
        (torch.zeros(0, 3, 16, 16), "calibration has 0 images"),
        (torch.zeros(4, 3, 32, 32), "calibration images are"),
    ],
)
def test_int8_without_calibration_images_is_refused(calibration, message):
    with pytest.raises(UserInputError, match=message):
        prepare("onnxruntime_int8", tiny_net(), 16, calibration=calibration)


def test_a_network_onnx_cannot_export_names_the_operator_and_layer():
    class Bessel(nn.Module):
        def forward(self, x):
            return torch.special.i0(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Bessel()), nn.Flatten())
    with pytest.raises(UserInputError, match=r"aten::i0.*in layer 1\.1, type Bessel"):
        prepare("onnxruntime", model, 8)


def test_a_network_executorch_cannot_lower_costs_only_that_runtime():
    """torch.special.i0 is outside the Core ATen opset ExecuTorch lowers: the refusal names the operator and the
    layer, and a profile that keeps going measures the other runtimes."""
    from lnrepro.profiling import ProfileSettings, measured_metrics

    class Bessel(nn.Module):
        def forward(self, x):
            return torch.special.i0(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Bessel()), nn.Flatten())
    with pytest.raises(UserInputError, match=r"cannot be lowered to ExecuTorch.*aten\.i0.*in layer 1\.1, type Bessel"):
        prepare("executorch", model, 8)
    settings = ProfileSettings.from_config(
        {"runtimes": ["eager", "executorch"], "runs": 2, "throughput_runs": 1, "warmup": 0, "batch_size": 2}
        | {"train": False, "memory": False}
    )
    metrics = measured_metrics(model, 8, settings, keep_going=True)
    assert metrics["latency/eager_ms"] > 0 and "latency/executorch_ms" not in metrics
    assert "in layer 1.1, type Bessel" in metrics["executorch/error"]


# --- each runtime runs and agrees with eager -----------------------------------------------------------------------
def test_eager_is_the_model_itself():
    model = tiny_net().train()
    runner = prepare("eager", model, 16)
    batch = images(4, 16, 2)
    logits = runner(batch)
    assert logits.shape == (4, 10) and not model.training  # prepare('eager') deploys the model: eval mode
    assert torch.equal(logits, eager_logits(model, batch))


@pytest.mark.parametrize("name, size", [("tiny", 16), ("shufflenet_v2", 16), ("ghostnet", 32)])
def test_onnxruntime_fp32_matches_eager(name, size, tmp_path):
    """Channel shuffle (ShuffleNet V2) and Ghost modules (GhostNet) export with a dynamic batch axis."""
    model = tiny_net() if name == "tiny" else zoo_net(name, size)
    runner = prepare("onnxruntime", model, size, workdir=tmp_path)
    assert (tmp_path / "model.onnx").is_file()
    for count in (1, 8):
        batch = images(count, size, 3)
        logits, expected = runner(batch), eager_logits(model, batch)
        assert logits.shape == (count, 10) and logits.dtype == torch.float32
        difference = float((logits - expected).abs().max())
        print(
            f"{name}: |ONNX Runtime - eager| = {difference:.2e} at batch {count} "
            f"(logit std {float(expected.std()):.2f})"
        )
        assert difference < ONNX_BOUND
    assert runner.facts["onnxruntime/max_abs_diff"] < ONNX_BOUND
    assert runner.facts["onnxruntime/provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize("name, size", [("tiny", 16), ("shufflenet_v2", 16)])
def test_onnxruntime_int8_follows_eager(name, size):
    """int8 logits differ from fp32 ones by quantisation noise (~1% of their range), so the check is that they
    carry the same ranking: the Pearson correlation of each image's 10 logits with eager's (cosine of the centred
    vectors; scale- and offset-free) averages above 0.9, and the argmax agrees on at least 3/4 of 64 images. With
    logits of standard deviation ~3 the measured values are ~0.999 and ~0.95-1.0; the bounds leave room for
    reduce_range (7-bit weights) on CPUs without VNNI."""
    model = tiny_net() if name == "tiny" else zoo_net(name, size)
    runner = prepare("onnxruntime_int8", model, size, calibration=images(32, size, 4))
    batch = images(64, size, 5)
    logits, expected = runner(batch), eager_logits(model, batch)
    assert logits.shape == (64, 10)
    correlation = float(
        F.cosine_similarity(
            logits - logits.mean(1, keepdim=True), expected - expected.mean(1, keepdim=True), dim=1
        ).mean()
    )
    agreement = float((logits.argmax(1) == expected.argmax(1)).float().mean())
    print(
        f"{name}: int8 vs eager correlation {correlation:.4f}, argmax agreement {agreement:.3f}, "
        f"max |difference| {float((logits - expected).abs().max()):.3f} (logit std {float(expected.std()):.2f})"
    )
    assert correlation > 0.9 and agreement >= 0.75
    facts = runner.facts
    assert facts["onnxruntime_int8/calibration_images"] == 32
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert facts["onnxruntime_int8/reduce_range"] is (x86 and not cpu_features()["vnni"])
    assert facts["onnxruntime_int8/quantize_s"] > 0 and facts["onnxruntime_int8/export_s"] > 0


def test_executorch_fp32_matches_eager_and_keeps_its_program(tmp_path):
    """XNNPACK runs the exported program at batch 1; larger batches run image by image. ShuffleNet V2 at width
    0.25 brings the channel split and shuffle (partly outside the delegate) and depthwise convs."""
    model = zoo_net("shufflenet_v2", 16)
    runner = prepare("executorch", model, 16, workdir=tmp_path)
    program = tmp_path / "model.pte"
    assert program.is_file() and program.stat().st_size == runner.facts["executorch/model_bytes"]
    for count in (1, 3):
        batch = images(count, 16, 3)
        logits, expected = runner(batch), eager_logits(model, batch)
        assert logits.shape == (count, 10) and logits.dtype == torch.float32
        difference = float((logits - expected).abs().max())
        print(f"|ExecuTorch - eager| = {difference:.2e} at batch {count} (logit std {float(expected.std()):.2f})")
        assert difference < ONNX_BOUND
    facts = runner.facts
    assert facts["executorch/max_abs_diff"] < ONNX_BOUND and facts["executorch/export_s"] > 0
    assert facts["executorch/threads"] == torch.get_num_threads() and facts["executorch/max_batch"] == 1
    assert facts["executorch/undelegated_ops"] >= 0 and facts["executorch/version"]
    # the kept file is the program: loaded on its own, it gives the same logits
    batch = images(2, 16, 4)
    assert torch.equal(runtimes.executorch_runner(program)(batch), runner(batch))


def test_executorch_int8_follows_eager_and_its_accuracy_is_measured():
    """PT2E int8 with XNNPACK's quantizer on the tiny net: logits carry eager's ranking (the bounds of
    test_onnxruntime_int8_follows_eager), and test/acc_executorch_int8 is measured on labelled batches."""
    model = tiny_net()
    # 33 images: calibrated in a batch of 32 and one image, which the dynamic-batch export cannot take alone
    runner = prepare("executorch_int8", model, 16, calibration=images(33, 16, 4))
    batch = images(32, 16, 5)
    logits, expected = runner(batch), eager_logits(model, batch)
    correlation = float(
        F.cosine_similarity(
            logits - logits.mean(1, keepdim=True), expected - expected.mean(1, keepdim=True), dim=1
        ).mean()
    )
    agreement = float((logits.argmax(1) == expected.argmax(1)).float().mean())
    print(f"ExecuTorch int8 vs eager correlation {correlation:.4f}, argmax agreement {agreement:.3f}")
    assert correlation > 0.9 and agreement >= 0.75
    assert runner.facts["executorch_int8/calibration_images"] == 33
    labels = expected.argmax(1)  # eager's answers as labels: the int8 accuracy is the argmax agreement
    accuracy = runtime_accuracy(runner, [(batch[:20], labels[:20]), (batch[20:], labels[20:])])
    assert accuracy == pytest.approx(agreement)


def test_compiled_runs_and_leaves_the_network_uncompiled():
    """One compilation (batch 1; a cold inductor cache makes it ~15-40 s on 2 shared cores, a warm one ~1-3 s),
    then, after dynamo forgets its in-memory graphs, the same network again: its cache lookups hit (warm)."""
    from torch._dynamo.utils import counters

    model = tiny_net().train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batch = images(1, 16, 6)
    torch._dynamo.reset()
    runner = prepare("compiled", model, 16)
    logits = runner(batch)
    torch._dynamo.reset()
    again = prepare("compiled", torch.compile(model), 16)  # an already compiled module is unwrapped
    torch._dynamo.reset()

    assert logits.shape == (1, 10)
    assert torch.allclose(logits, eager_logits(model, batch), atol=1e-4)
    facts = runner.facts
    print(
        f"compile: {facts['compile/1_s']:.1f} s (cache warm: {facts['compile/cache_warm']}), "
        f"again {again.facts['compile/1_s']:.1f} s"
    )
    assert facts["compile/1_s"] > 0 and facts["compile/graphs"] >= 1 and facts["compiled/max_abs_diff"] < 1e-4
    assert again.facts["compile/cache_warm"] is True and again.facts["compile/graphs"] >= 1
    assert type(again.run.compiled._orig_mod) is nn.Sequential

    # The caller's network: same class, never compiled, its mode and weights as they were, eager when called.
    model.train()
    assert type(model) is nn.Sequential and model._compiled_call_impl is None
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    frames = counters["frames"]["ok"]
    with torch.no_grad():
        model.eval()(batch)
    assert counters["frames"]["ok"] == frames


@pytest.mark.slow
def test_compiled_reports_a_cold_cache_and_each_shape():
    """In a fresh inductor cache every lookup misses (cache_warm False); a second batch size compiles once more
    (a graph with a symbolic batch) and has its own compile/<batch>_s; a third reuses that graph."""
    from torch._inductor.utils import fresh_cache

    model = tiny_net()
    torch._dynamo.reset()
    with fresh_cache():
        runner = prepare("compiled", model, 16)
        assert runner.facts["compile/cache_warm"] is False
        graphs = runner.facts["compile/graphs"]
        for count in (3, 5):
            batch = images(count, 16, 8)
            assert torch.allclose(runner(batch), eager_logits(model, batch), atol=1e-4)
    torch._dynamo.reset()
    print({key: value for key, value in runner.facts.items()})
    assert {"compile/1_s", "compile/3_s", "compile/5_s"} <= set(runner.facts)
    assert runner.facts["compile/graphs"] == graphs + 1  # batch 3: one dynamic-batch graph; batch 5 reuses it
    assert runner.facts["compile/cache_warm"] is False


# --- measurement and accuracy --------------------------------------------------------------------------------------
def test_measure_runtime_keys_and_restores_the_mode(tmp_path):
    model = tiny_net().train()
    metrics = measure_runtime(
        "onnxruntime", model, 16, batch_size=4, runs=5, throughput_runs=2, warmup=1, workdir=tmp_path
    )
    assert model.training
    assert set(metrics) == {
        "prepare/onnxruntime_s",
        "latency/onnxruntime_ms",
        "latency/onnxruntime_p90_ms",
        "infer/onnxruntime_imgs_per_s",
        "latency/onnxruntime_cpu_pressure",
        "latency/onnxruntime_contended",
        "onnxruntime/export_s",
        "onnxruntime/model_bytes",
        "onnxruntime/provider",
        "onnxruntime/version",
        "onnxruntime/max_abs_diff",
        "cpu/model",
        "cpu/avx2",
        "cpu/avx512",
        "cpu/vnni",
        "cpu/amx",
        "cpu/bf16",
    }
    assert 0 < metrics["latency/onnxruntime_ms"] <= metrics["latency/onnxruntime_p90_ms"]
    assert metrics["infer/onnxruntime_imgs_per_s"] > 0 and metrics["prepare/onnxruntime_s"] > 0
    assert isinstance(metrics["latency/onnxruntime_contended"], bool)
    eager = measure_runtime("eager", model, 16, batch_size=4, runs=5, throughput_runs=2, warmup=1)
    assert model.training and eager["latency/eager_ms"] > 0
    with pytest.raises(UserInputError, match="runs=0"):
        measure_runtime("eager", model, 16, runs=0)


def test_runtime_accuracy_is_micro_top1():
    def runner(batch: torch.Tensor) -> torch.Tensor:  # predicts the class written in the first pixel
        return F.one_hot(batch[:, 0, 0, 0].long(), 3).float()

    def batch(predictions, labels):
        images = torch.zeros(len(predictions), 3, 2, 2)
        images[:, 0, 0, 0] = torch.tensor(predictions, dtype=torch.float32)
        return images, torch.tensor(labels)

    # 1/1 right, then 1/3 right: micro 2/4, where a mean of batch accuracies would say 2/3.
    assert runtime_accuracy(runner, [batch([2], [2]), batch([0, 1, 2], [0, 2, 1])]) == pytest.approx(0.5)
    with pytest.raises(UserInputError, match="no images"):
        runtime_accuracy(runner, [])


@pytest.mark.slow
def test_every_runtime_on_shufflenet_v2(tmp_path):
    """ShuffleNet V2 0.25x (cifar stem, 32x32) through every runtime: the keys each produces and sane figures
    (printed, with what preparing each cost)."""
    model = zoo_net("shufflenet_v2", 32)
    for runtime in RUNTIMES:
        metrics = measure_runtime(
            runtime,
            model,
            32,
            batch_size=8,
            runs=10,
            throughput_runs=2,
            warmup=2,
            calibration=images(16, 32, 7),
            workdir=tmp_path / runtime,
        )
        assert metrics[f"latency/{runtime}_ms"] > 0 and metrics[f"infer/{runtime}_imgs_per_s"] > 0
        print(runtime, {key: value for key, value in metrics.items() if not key.startswith("cpu/")})
        if runtime == "compiled":
            assert {"compile/1_s", "compile/8_s", "compile/cache_warm", "compile/graphs"} <= set(metrics)
        if runtime != "eager" and runtime != "compiled":
            assert metrics[f"{runtime}/max_abs_diff"] < (3.0 if runtime.endswith("_int8") else ONNX_BOUND)


def test_bf16_on_a_cpu_without_bf16_units_is_refused_unless_forced(make_train_cfg, monkeypatch):
    from lnrepro.tasks.train import check_precision

    monkeypatch.setattr(cpu, "cpu_features", lambda: {"model": "an AVX2-only CPU", "bf16": False})
    with pytest.raises(UserInputError, match="no bf16 units"):
        check_precision(make_train_cfg("trainer.precision=bf16-mixed"))
    check_precision(make_train_cfg("trainer.precision=bf16-mixed", "force_precision=true"))
    check_precision(make_train_cfg("trainer.precision=32-true"))
    monkeypatch.setattr(cpu, "cpu_features", lambda: {"model": "a Xeon with AMX", "bf16": True})
    check_precision(make_train_cfg("trainer.precision=bf16-mixed"))
