"""The files a user ships (lnrepro.profiling.exported): a finished run keeps each measured runtime's exported file
in its export/ with export.json, `lnrepro-eval exported=<file>` evaluates that very file and gets the run's
`test/acc_<runtime>`, bad files are refused in one line, and with W&B the folder goes up as one artifact; the report
logs its seed rows and runtime table to W&B. W&B runs offline and is read back from its files.

One tiny run (VGG16 x0.25 on a small fake CIFAR-10, one epoch, logger=wandb) serves the module. Trained
that little on random images, a network predicts one class for every image, and any two accuracies would agree:
`SpreadLogitsAfterTest` randomises its BatchNorm statistics and classifier after testing, so that the network the
end-of-fit profile measures and exports tells images apart."""

from __future__ import annotations

import base64
import hashlib
import json
import statistics
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from lnrepro.data.cifar10 import CLASS_NAMES, MEAN, STD
from lnrepro.errors import UserInputError
from lnrepro.profiling import ProfileSettings, measured_metrics
from lnrepro.profiling import runtimes as runtimes_module
from lnrepro.profiling.exported import (
    EXPORT_DIR,
    MANIFEST,
    evaluation_metrics,
    kept_export,
    load_exported,
    renormalized,
)
from tests.conftest import FAST, NO_PROGRESS_BAR, compose_config, write_fake_cifar10

pytestmark = pytest.mark.usefixtures("one_thread")

FILES = {
    "onnxruntime": "model.onnx",
    "onnxruntime_int8": "model.int8.onnx",
    "executorch": "model.pte",
    "executorch_int8": "model.int8.pte",
}
FAST_PROFILE = [
    "profile.runs=2",
    "profile.throughput_runs=1",
    "profile.warmup=0",
    "profile.batch_size=2",
    "profile.calibration_images=16",
]


def cifar_data(root: Path) -> list[str]:
    """The fake CIFAR-10 (40 images a file: 160 training, 40 validation, 40 test images)."""
    return [
        "data=cifar10",
        f"data.root={root}",
        "data.download=false",
        "data.verify_checksums=false",
        "data.val_size=40",
        "data.batch_size=40",
    ]


class SpreadLogitsAfterTest(pl.Callback):
    """After testing, the network drawn afresh, its BatchNorm statistics measured on random images and its
    classifier scaled to logits that spread by ~3 between images, so that the network the end-of-fit profile measures
    predicts different classes for different images (random BatchNorm statistics leave a deep net's features
    independent of the image)."""

    def on_test_end(self, trainer, pl_module):
        net, images = pl_module.net, torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        norms = [module for module in net.modules() if isinstance(module, torch.nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batch
        with torch.no_grad():
            net.train()(images)
            for norm in norms:
                norm.momentum = 0.1
            logits = net.eval()(images)
            classifier = [module for module in net.modules() if isinstance(module, torch.nn.Linear)][-1]
            classifier.weight *= 3 / (logits - logits.mean(dim=0)).std()
            classifier.bias.zero_()


class ShippedRun:
    def __init__(self, metrics: dict, run_dir: Path, data: list[str]):
        self.metrics, self.run_dir, self.data = metrics, run_dir, data
        self.export = run_dir / EXPORT_DIR

    def manifest(self) -> dict:
        return json.loads((self.export / MANIFEST).read_text())


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory) -> ShippedRun:
    from lnrepro.tasks import train

    data = cifar_data(write_fake_cifar10(tmp_path_factory.mktemp("cifar10")))
    out = tmp_path_factory.mktemp("shipped_run")
    with pytest.MonkeyPatch.context() as env:  # the autouse offline fixture is per test: this runs before it
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_DATA_DIR", str(out / "wandb-data"))  # the artifact's staging copies
        overrides = ["model=vgg16", "model.width=0.25", "profile.end_of_fit=true", "logger=wandb"]
        overrides.append("profile.layers=true")  # the end-of-fit per-layer account, timing the kept files
        overrides.append(f"profile.runtimes=[eager,{','.join(FILES)}]")
        overrides.append(f"+callbacks.spread._target_={SpreadLogitsAfterTest.__module__}.SpreadLogitsAfterTest")
        metrics = train(compose_config("train", out, FAST + NO_PROGRESS_BAR + data + overrides + FAST_PROFILE))
    GlobalHydra.instance().clear()
    return ShippedRun(metrics, out, data)


def test_a_finished_run_with_layers_times_every_layer_in_each_runtime(shipped_run):
    """profile.layers=true at the end of a fit: layers/<runtime>.csv in the run directory for eager and every
    deployed runtime (the kept export/ files timed), with the sums in metrics.json."""
    from lnrepro.profiling.layer_times import read_layer_table

    for runtime in ["eager", *FILES]:
        rows = read_layer_table(shipped_run.run_dir / "layers" / f"{runtime}.csv")
        assert rows and all(row["time_ms"] is not None for row in rows)
        assert shipped_run.metrics[f"layers/{runtime}_sum_ms"] == pytest.approx(sum(r["time_ms"] for r in rows))
    conv = [
        row for row in read_layer_table(shipped_run.run_dir / "layers" / "onnxruntime.csv") if row["kind"] == "conv"
    ]
    assert conv and all(row["macs"] > 0 for row in conv)  # VGG16's 3x3 convs, with their multiply-adds


def test_a_finished_run_keeps_the_files_of_the_runtimes_it_measured(shipped_run):
    kept = {path.name for path in shipped_run.export.iterdir()}
    assert kept == {MANIFEST, *FILES.values()}  # no model.int8.pre.onnx, no temporary file
    manifest = shipped_run.manifest()
    assert manifest["files"] == FILES
    assert manifest["input_size"] == [3, 32, 32] and manifest["num_classes"] == 10
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert manifest["mean"] == pytest.approx(list(MEAN)) and manifest["std"] == pytest.approx(list(STD))
    assert manifest["model"] == "vgg16" and manifest["width"] == 0.25 and manifest["data"] == "cifar10"
    assert manifest["config_digest"] == shipped_run.metrics["config_digest"]
    assert manifest["test/ckpt_path"] == shipped_run.metrics["test/ckpt_path"]
    assert manifest["int8_calibration"] == "training images"
    for runtime, name in FILES.items():  # each file is the one the runtime measured
        assert (shipped_run.export / name).stat().st_size == shipped_run.metrics[f"{runtime}/model_bytes"]


MEAN_, STD_ = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


def cifar_test_set(shipped_run: ShippedRun):
    """The fake CIFAR-10's test images (uint8) and labels, as the data module reads them."""
    from lnrepro.data.cifar10 import CIFAR10DataModule

    root = next(o.split("=", 1)[1] for o in shipped_run.data if o.startswith("data.root="))
    data = CIFAR10DataModule(root=root, download=False, verify_checksums=False, val_size=40)
    data.setup("test")
    return data.test_set


def evaluate_file(make_eval_cfg, path: Path, data: list[str]) -> dict:
    from lnrepro.tasks import evaluate

    return evaluate(make_eval_cfg(f"exported={path}", *data))


@pytest.mark.parametrize("runtime", list(FILES))
def test_eval_of_an_exported_file_gives_the_runs_accuracy_in_its_runtime(shipped_run, make_eval_cfg, tmp_path, runtime):
    path = shipped_run.export / FILES[runtime]
    metrics = evaluate_file(make_eval_cfg, path, shipped_run.data)
    assert metrics["test/acc"] == shipped_run.metrics[f"test/acc_{runtime}"]
    test_set = cifar_test_set(shipped_run)
    predicted = load_exported(path).run(((test_set.images.float() / 255) - MEAN_) / STD_).argmax(dim=-1)
    assert len(predicted.unique()) >= 2  # not one class for every image: the equality above tells pipelines apart
    assert metrics["exported/runtime"] == runtime and metrics["exported"] == str(path)
    assert 0 <= metrics["test/acc"] <= metrics["test/acc5"] <= 1 and metrics["test/loss"] > 0
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["test/acc"] == metrics["test/acc"] and saved["task"] == "eval" and saved["model"] == "vgg16"
    assert saved["input_size"] == "3x32x32"


def test_eval_normalises_the_images_as_export_json_says(shipped_run, make_eval_cfg, tmp_path):
    """A manifest with another normalisation than the data's: the images are normalised its way."""
    copy = tmp_path / "shipped" / "model.onnx"
    copy.parent.mkdir()
    copy.write_bytes((shipped_run.export / "model.onnx").read_bytes())
    manifest = {**shipped_run.manifest(), "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    (copy.parent / MANIFEST).write_text(json.dumps(manifest))
    metrics = evaluate_file(make_eval_cfg, copy, shipped_run.data)

    test_set = cifar_test_set(shipped_run)
    raw = test_set.images.float() / 255  # the test images as stored, to [0, 1]
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    expected = evaluation_metrics(load_exported(copy).run, [((raw - mean) / std, test_set.labels)])
    assert metrics["test/acc"] == expected["test/acc"]
    assert metrics["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-5)


def test_renormalized_equals_normalising_the_raw_images_the_other_way():
    raw = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4)
    a_mean, a_std, b_mean, b_std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25], [0.5, 0.5, 0.5], [0.5, 0.4, 0.3]

    def normalised(mean, std):
        return (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    ((images, same),) = list(renormalized([(normalised(a_mean, a_std), labels)], a_mean, a_std, b_mean, b_std))
    assert torch.allclose(images, normalised(b_mean, b_std), atol=1e-6) and same is labels
    batch = normalised(a_mean, a_std)
    ((unchanged, _),) = list(renormalized([(batch, labels)], a_mean, a_std, a_mean, a_std))
    assert unchanged is batch  # equal normalisations: the very tensors, bit for bit


def refusal(make_eval_cfg, capsys, *overrides: str) -> str:
    """The one line `lnrepro-eval` ends with (exit status 2)."""
    from lnrepro.tasks import evaluate, run_task

    with pytest.raises(SystemExit) as exited:
        run_task(evaluate, make_eval_cfg(*overrides))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_file_that_does_not_fit_the_data_is_refused_naming_both_sizes(shipped_run, make_eval_cfg, capsys):
    for name in ("model.onnx", "model.pte"):
        path = shipped_run.export / name
        smaller = refusal(make_eval_cfg, capsys, f"exported={path}", "data=synthetic", "data.image_size=16")
        assert "takes 3x32x32 images" in smaller and "gives 3x16x16" in smaller and "data.image_size" in smaller
        fewer = refusal(make_eval_cfg, capsys, f"exported={path}", "data=synthetic", "data.num_classes=5")
        assert "has 10 classes" in fewer and "data=synthetic has 5" in fewer


def test_missing_corrupt_and_foreign_files_are_refused_in_one_line(shipped_run, make_eval_cfg, capsys, tmp_path):
    missing = refusal(make_eval_cfg, capsys, f"exported={tmp_path / 'nothing.onnx'}")
    assert "no such file" in missing and "nothing.onnx" in missing
    for name in ("model.onnx", "model.pte"):
        corrupt = tmp_path / "corrupt" / name
        corrupt.parent.mkdir(exist_ok=True)
        corrupt.write_bytes(b"not a network " * 100)
        line = refusal(make_eval_cfg, capsys, f"exported={corrupt}")
        assert f"exported={corrupt} is not an" in line and "export it again" in line
    checkpoint = refusal(make_eval_cfg, capsys, f"exported={shipped_run.metrics['test/ckpt_path']}")
    assert "not an exported network" in checkpoint and "ckpt_path=" in checkpoint
    # a manifest that describes another export than the file beside it
    foreign = tmp_path / "foreign" / "model.onnx"
    foreign.parent.mkdir()
    foreign.write_bytes((shipped_run.export / "model.onnx").read_bytes())
    (foreign.parent / MANIFEST).write_text(json.dumps({**shipped_run.manifest(), "input_size": [3, 16, 16]}))
    line = refusal(make_eval_cfg, capsys, f"exported={foreign}")
    assert "says input 3x16x16 but model.onnx takes 3x32x32" in line
    (foreign.parent / MANIFEST).write_text("{not json")
    assert "cannot be read as JSON" in refusal(make_eval_cfg, capsys, f"exported={foreign}")


def test_a_pte_without_executorch_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else found(name, *a))
    program = tmp_path / "model.pte"
    program.write_bytes(b"ET12" * 10)
    with pytest.raises(UserInputError, match=r"pip install 'lnrepro\[mobile\]'") as refused:
        load_exported(program)
    assert len(str(refused.value).splitlines()) == 1 and str(program) in str(refused.value)


def test_eval_needs_a_checkpoint_or_an_exported_file_not_both(shipped_run, make_eval_cfg, capsys):
    assert "ckpt_path=<" in refusal(make_eval_cfg, capsys) and "exported=<" in refusal(make_eval_cfg, capsys)
    both = refusal(
        make_eval_cfg,
        capsys,
        f"ckpt_path={shipped_run.metrics['test/ckpt_path']}",
        f"exported={shipped_run.export / 'model.onnx'}",
    )
    assert "give one" in both


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    return torch.nn.Sequential(net, torch.nn.Linear(4, 10)).eval()


def measure(export_dir: Path, runtimes: list[str]) -> dict:
    settings = ProfileSettings.from_config(
        {"runtimes": runtimes, "runs": 1, "throughput_runs": 1, "warmup": 0, "batch_size": 2, "memory": False}
    )
    return measured_metrics(tiny_net(), 8, settings, training_speed=False, keep_going=True, export_dir=export_dir)


def test_only_the_runtimes_measured_without_error_keep_their_file(monkeypatch, tmp_path):
    from lnrepro.data.synthetic import SyntheticDataModule
    from lnrepro.tasks.deployment import keep_export

    folder = tmp_path / EXPORT_DIR
    int8_only = measure(folder, ["onnxruntime_int8"])
    keep_export(folder, int8_only, ["onnxruntime_int8"], tiny_net(), (3, 8, 8), SyntheticDataModule, {})
    assert {p.name for p in folder.iterdir()} == {"model.int8.onnx", MANIFEST}  # not the fp32 it came from
    assert json.loads((folder / MANIFEST).read_text())["files"] == {"onnxruntime_int8": "model.int8.onnx"}

    def broken(*args, **kwargs):
        raise RuntimeError("quantisation broke")

    monkeypatch.setattr(runtimes_module, "_quantize", broken)
    both = ["eager", "onnxruntime", "onnxruntime_int8"]
    figures = measure(folder, both)
    assert "quantisation broke" in figures["onnxruntime_int8/error"] and "latency/onnxruntime_ms" in figures
    manifest = keep_export(folder, figures, both, tiny_net(), (3, 8, 8), SyntheticDataModule, {})
    # the earlier file of the runtime that failed now is gone: the folder offers only what this run measured
    assert {p.name for p in folder.iterdir()} == {"model.onnx", MANIFEST}
    written = json.loads(manifest.read_text())
    assert written["files"] == {"onnxruntime": "model.onnx"} and written["class_names"] is None
    assert written["mean"] == [0.5, 0.5, 0.5] and written["num_classes"] == 10 and written["input_size"] == [3, 8, 8]

    nothing = tmp_path / "nothing" / EXPORT_DIR
    figures = measure(nothing, ["eager", "onnxruntime_int8"])
    kept = keep_export(nothing, figures, ["eager", "onnxruntime_int8"], tiny_net(), (3, 8, 8), SyntheticDataModule, {})
    assert kept is None and "onnxruntime_int8/error" in figures
    assert not nothing.exists()  # no file kept: no folder either


def test_kept_export_keeps_nothing_when_the_measurement_raises(tmp_path):
    with pytest.raises(RuntimeError), kept_export(tmp_path, "onnxruntime") as workdir:
        (workdir / "model.onnx").write_bytes(b"half")
        raise RuntimeError("measuring failed")
    assert list(tmp_path.iterdir()) == []
    with kept_export(None, "onnxruntime") as workdir, kept_export(tmp_path, "eager") as eager:
        assert workdir is None and eager is None  # nothing asked for, or nothing to keep


PROFILE = ["data=synthetic", "data.image_size=16", "model=mobilenet_v1", "model.width=0.25", "profile.memory=false"]


@pytest.mark.parametrize("export", [True, False])
def test_lnrepro_profile_keeps_the_files_unless_export_is_false(tmp_path, export):
    from lnrepro.tasks.profile import profile

    overrides = [*PROFILE, *FAST_PROFILE, "profile.train=false", "profile.runtimes=[eager,onnxruntime]"]
    cfg = compose_config("profile", tmp_path, [*overrides, f"profile.export={str(export).lower()}"])
    metrics = profile(cfg)
    GlobalHydra.instance().clear()
    folder = tmp_path / EXPORT_DIR
    if not export:
        assert not folder.exists()
        return
    assert {p.name for p in folder.iterdir()} == {"model.onnx", MANIFEST}
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"] == {"onnxruntime": "model.onnx"} and manifest["input_size"] == [3, 16, 16]
    assert manifest["model"] == "mobilenet_v1" and "random images" in manifest["int8_calibration"]
    assert (folder / "model.onnx").stat().st_size == metrics["onnxruntime/model_bytes"]


def md5_base64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_the_export_folder_goes_up_to_wandb_as_one_artifact(shipped_run):
    from tests.wandb_offline import complete_records, read_offline_run

    (offline,) = (shipped_run.run_dir / "wandb").glob("offline-run-*")
    run = read_offline_run(offline)
    artifacts = [r.artifact for r in complete_records(offline) if r.WhichOneof("record_type") == "artifact"]
    models = [artifact for artifact in artifacts if artifact.type == "model"]
    assert len(models) == 1, [(a.type, a.name) for a in artifacts]
    (artifact,) = models
    assert artifact.name == f"export-{run.run_id}" and artifact.run_id == run.run_id
    assert json.loads(artifact.metadata) == shipped_run.manifest()
    contents = {entry.path: entry for entry in artifact.manifest.contents}
    assert set(contents) == {p.name for p in shipped_run.export.iterdir()}
    for name, entry in contents.items():
        assert (
            entry.digest == md5_base64(shipped_run.export / name)
            and entry.size == (shipped_run.export / name).stat().st_size
        )


def width_sweep(root: Path) -> Path:
    """A finished width sweep as lnrepro-report finds it: MobileNet V2 x0.5 and x0.75, three seeds each, measured in
    three runtimes."""
    sweep = root / "logs" / "train" / "multiruns" / "2026-12-03_10-00-00"
    job = 0
    for width, digest, top1s in ((0.5, "aaa", [0.927, 0.930, 0.932]), (0.75, "bbb", [0.900, 0.905, 0.910])):
        for seed, top1 in enumerate(top1s):
            folder = sweep / str(job)
            folder.mkdir(parents=True)
            latency = {"eager": 6.0 + seed, "onnxruntime": 1.0 + width, "onnxruntime_int8": 2.0 + width}
            metrics = {
                "model": "mobilenet_v2",
                "width": width,
                "data": "cifar10",
                "stem": "cifar",
                "seed": seed,
                "config_digest": digest,
                "test/acc": top1,
                "test/acc_onnxruntime": top1,
                "test/acc_onnxruntime_int8": top1 - 0.01,
                "flops": 1e8 * width,
                "schema_version": 3,
                "cpu/model": "a test CPU",
                **{f"latency/{runtime}_ms": value for runtime, value in latency.items()},
                **{f"latency/{runtime}_p90_ms": 1.1 * value for runtime, value in latency.items()},
            }
            (folder / "metrics.json").write_text(json.dumps(metrics))
            job += 1
    return sweep


def test_report_logs_the_seed_rows_and_runtime_table_to_the_sweeps_wandb_group(tmp_path, capsys):
    from lnrepro.cli import report
    from tests.wandb_offline import complete_records, read_offline_run

    sweep = width_sweep(tmp_path)
    assert report([str(sweep), "--reference", "cifar10", "--no-plots", "--wandb"]) == 0
    (offline,) = (sweep / "wandb").glob("offline-run-*")
    (run_record,) = [r.run for r in complete_records(offline) if r.WhichOneof("record_type") == "run"]
    assert run_record.run_group == "train/2026-12-03_10-00-00" and run_record.job_type == "report"
    tables = read_offline_run(offline).tables()

    def rows(key: str) -> list[dict]:
        table = json.loads((offline / "files" / tables[key]["path"]).read_text())
        return [dict(zip(table["columns"], row)) for row in table["data"]]

    seeds = {row["model"]: row for row in rows("report/seeds")}
    assert set(seeds) == {"mobilenet_v2_x0.5", "mobilenet_v2_x0.75"}
    half = seeds["mobilenet_v2_x0.5"]
    assert half["n_seeds"] == 3 and half["seeds"] == "0,1,2" and half["width"] == 0.5
    assert half["top1_mean"] == pytest.approx(statistics.fmean([92.7, 93.0, 93.2]), abs=1e-3)
    assert half["top1_low"] == pytest.approx(half["top1_mean"] - half["top1_ci95"], abs=2e-3)
    assert half["published_top1"] == 92.88 and half["verdict"] == "reproduced"
    assert seeds["mobilenet_v2_x0.75"]["verdict"] == "below"  # 90.5 against the published 93.72

    runtimes = {(row["model"], row["runtime"]): row for row in rows("report/runtimes")}
    assert set(runtimes) == {(m, r) for m in seeds for r in ("eager", "onnxruntime", "onnxruntime_int8")}
    onnx = runtimes[("mobilenet_v2_x0.5", "onnxruntime")]
    assert onnx["latency_ms"] == 1.5 and onnx["latency_p90_ms"] == pytest.approx(1.65)
    assert onnx["speedup_vs_eager"] == pytest.approx(7.0 / 1.5)  # the median eager latency of the seeds
    assert runtimes[("mobilenet_v2_x0.5", "onnxruntime_int8")]["top1"] == pytest.approx(92.0)
    assert onnx["cpu"] == "a test CPU" and onnx["contended"] is False and onnx["error"] is None
