"""metrics.json: every key the code writes is declared in lnrepro.schema, writes are atomic, old files still read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lnrepro import schema
from lnrepro.reporting import make_report
from tests.conftest import compose_config


def test_every_key_train_eval_and_profile_write_is_declared(tiny_run, make_eval_cfg, tmp_path):
    from lnrepro.tasks import evaluate
    from lnrepro.tasks.profile import profile

    checkpoint = tiny_run.best_checkpoint  # a run with the end-of-fit profile: every key train writes
    trained = tiny_run.metrics
    evaluated = evaluate(make_eval_cfg(f"ckpt_path={checkpoint}", "data=synthetic", "data.image_size=16"))
    profiled = profile(
        compose_config(
            "profile",
            tmp_path / "profile",
            [
                "data=synthetic",
                "data.image_size=16",
                "model.width=0.25",
                "profile.runs=2",
                "profile.throughput_runs=1",
                "profile.warmup=0",
                "profile.batch_size=2",
            ],
        )
    )
    written = [
        json.loads((checkpoint.parents[1] / "metrics.json").read_text()),
        json.loads((tmp_path / "eval" / "metrics.json").read_text()),
        json.loads((tmp_path / "profile" / "metrics.json").read_text()),
    ]
    for metrics, task in zip(written, ("train", "eval", "profile")):
        assert metrics["task"] == task and metrics["schema_version"] == schema.SCHEMA_VERSION
        assert schema.undeclared(metrics) == [], task
    assert {
        schema.LATENCY_MS,
        schema.latency_key("onnxruntime"),
        schema.latency_key("onnxruntime_int8"),
        schema.MACS,
    } <= set(profiled)
    assert evaluated["test/acc"] == pytest.approx(float(trained["test/acc"]), abs=1e-6)
    # the deployed accuracy beside eager's: fp32 ONNX Runtime computes the same logits (32 test images)
    assert written[0]["test/acc_onnxruntime"] == pytest.approx(float(trained["test/acc"]), abs=1 / 32 + 1e-9)
    assert 0 <= written[0]["test/acc_onnxruntime_int8"] <= 1 and written[0]["onnxruntime_int8/calibration_images"]
    # the end-of-fit profile's cost is recorded beside the fit's, so the README's budget can be checked on any run
    assert written[0][schema.FIT_S] > 0 and written[0][schema.END_OF_FIT_PROFILE_S] > 0


def test_undeclared_keys_are_named():
    assert schema.undeclared(["val/acc", "train/loss_step", "lr-SGD/pg1", "latency/onnxruntime_ms", "my/own"]) == [
        "my/own"
    ]


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = schema.write_metrics(tmp_path, {"params": 1})
    before = path.read_text()

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new content is written, then the flush to disk fails
    with pytest.raises(OSError, match="No space"):
        schema.write_metrics(tmp_path, {"params": 2, "flops": 4})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_files_written_before_the_schema_still_read_and_report(tmp_path):
    old = {
        "model": "ghostnet",
        "conv": "ghost",
        "stem": "cifar",
        "params": 1000,
        "flops": 2000,
        "latency_ms": 1.5,
        "test/acc": 0.5,
        "data": "cifar10",
    }  # as runs wrote it before schema_version
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(old))
    assert schema.read_metrics(tmp_path / "run")[schema.SCHEMA] == 0
    report = make_report([tmp_path / "run"], plots=False)
    assert report.rows[0].run.values["top1"] == pytest.approx(50.0)
    assert report.rows[0].run.values["infer_ms_per_image"] == pytest.approx(1.5)


def test_version_2_memory_keys_read_under_their_unit_names(tmp_path):
    """Version 2 named MiB figures `memory/peak_mb`; they read as `memory/peak_mib` and reach the report."""
    old = {"model": "ghostnet", "schema_version": 2, "memory/peak_mb": 512.0, "memory/infer_peak_mb": 64.0}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(old))
    metrics = schema.read_metrics(tmp_path / "run")
    assert metrics[schema.MEMORY_PEAK_MIB] == 512.0 and metrics[schema.MEMORY_INFER_PEAK_MIB] == 64.0
    report = make_report([tmp_path / "run"], plots=False)
    assert report.rows[0].run.values["memory_mib"] == 512.0


def test_multirun_group_is_the_task_and_sweep_time(tmp_path):
    sweep = tmp_path / "logs" / "train" / "multiruns" / "2026-11-30_12-00-00"
    sweep.mkdir(parents=True)
    assert schema.multirun_group(sweep) == "train/2026-11-30_12-00-00"
    assert schema.multirun_group(tmp_path) is None


def test_the_schema_document_lists_every_key():
    table = schema.markdown()
    assert all(f"`{name}`" in table for name in schema.KEYS)
    docs = Path(__file__).resolve().parents[1] / "docs" / "METRICS.md"
    assert docs.read_text().strip().endswith(table.strip()), "regenerate: python -m lnrepro.schema > docs/METRICS.md"


def test_config_digest_is_shared_by_runs_that_differ_only_in_seed_and_paths(tmp_path):
    from omegaconf import OmegaConf

    def digest(*overrides):
        cfg = compose_config("train", tmp_path, ["data=synthetic", *overrides])
        return schema.config_digest(OmegaConf.to_container(cfg, resolve=False))

    base = digest("seed=0")
    assert digest("seed=1", "paths.log_dir=/elsewhere", "logger=tensorboard", "profile.runs=3") == base
    assert digest("seed=0", "model.width=0.5") != base
    assert digest("seed=0", "optimizer.lr=0.01") != base
