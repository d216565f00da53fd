"""The evaluation task: rebuild a run from its checkpoint (`lnrepro.load_run`) and test it, or test an exported
file (`exported=`: an .onnx or .pte of a run's export/) in its own runtime, the very file a user ships."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lnrepro import schema
from lnrepro.errors import UserInputError
from lnrepro.loggers import publish
from lnrepro.profiling import ProfileSettings
from lnrepro.runs import load_run
from lnrepro.schema import write_metrics
from lnrepro.tasks.common import hydra_config, log, run_facts
from lnrepro.tasks.deployment import data_batches, runtime_figures, upload_export
from lnrepro.tasks.instantiate import close_loggers, instantiate, instantiate_loggers
from lnrepro.training import ClassificationModule
from lnrepro.utils.tables import print_table

# Only these parts of a stored run can be changed on eval's command line; the rest describes the trained weights.
OVERRIDABLE = ("data", "model")


def command_line_overrides(cfg: DictConfig) -> dict[str, Any]:
    """{key: value} of the data/model keys given on eval's command line, as composed into `cfg`."""
    hydra_cfg = hydra_config()
    keys = [override.split("=", 1)[0].lstrip("+~") for override in (hydra_cfg.overrides.task if hydra_cfg else [])]
    overrides = {}
    for key in keys:
        if key.split(".")[0] in OVERRIDABLE and "." in key:
            value = OmegaConf.select(cfg, key)
            overrides[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return overrides


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    print_table(
        title,
        [("metric", True), ("value", False)],
        [[key, f"{value:.4f}" if isinstance(value, float) else str(value)] for key, value in sorted(metrics.items())],
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("exported") and cfg.get("ckpt_path"):
        raise UserInputError(
            f"ckpt_path={cfg.ckpt_path} and exported={cfg.exported} name two networks to evaluate: give one"
        )
    if cfg.get("exported"):
        return evaluate_exported(cfg)
    if not cfg.get("ckpt_path"):
        raise UserInputError(
            "nothing to evaluate: give ckpt_path=<a run's checkpoint> or exported=<a file of a run's export/>"
        )
    settings = ProfileSettings.from_config(cfg.get("profile"))
    settings.check_runtimes()
    settings.check_predictors()
    net, run_cfg = load_run(
        cfg.ckpt_path, overrides=command_line_overrides(cfg), trusted=bool(cfg.get("trust_checkpoint"))
    )
    module = ClassificationModule(net=net, optimizer=None, scheduler=None, num_classes=run_cfg.data.num_classes)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = instantiate(run_cfg.data)  # the package's data config, stored values
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, enable_checkpointing=False)
    try:
        trainer.test(module, datamodule=datamodule)
        metrics: dict[str, Any] = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if trainer.is_global_zero:  # the accuracy in each deployment runtime beside eager's
            about = {**run_facts(run_cfg), schema.CKPT_PATH: str(cfg.ckpt_path)}
            figures = runtime_figures(
                settings,
                net,
                int(run_cfg.data.image_size),
                datamodule,
                tested=True,
                run_dir=cfg.paths.output_dir,
                about=about,
            )
            publish(trainer, figures, save=True)
            metrics.update(figures)
            upload_export(trainer, settings, cfg.paths.output_dir)
    finally:
        close_loggers(loggers)
    log.info("evaluated %s on the test split", cfg.ckpt_path)
    print_metrics(metrics, title=f"{run_cfg.model.name} (test split)")
    metrics.update(run_facts(run_cfg))
    metrics.update({schema.TASK: "eval", schema.CKPT_PATH: str(cfg.ckpt_path)})
    if trainer.is_global_zero:
        write_metrics(cfg.paths.output_dir, metrics)
    return metrics


def evaluate_exported(cfg: DictConfig) -> dict[str, Any]:
    """`exported=<file>`: the exported file (`lnrepro.profiling.exported.load_exported`: .onnx in ONNX Runtime,
    .pte in ExecuTorch, on the CPU) on `cfg.data`'s test split, the images as the training run's eager network saw
    them, normalised with export.json's mean and std where the file has one beside it (else the data's). Its
    `test/acc` is the training run's `test/acc_<runtime>` of that file on the same images. A file that does not
    fit the data (input size, class count) is refused before any image is read."""
    from lnrepro.profiling.context import shape_text
    from lnrepro.profiling.exported import check_fits_data, data_facts, evaluation_metrics, load_exported, renormalized

    network = load_exported(cfg.exported)
    data = cfg.data
    check_fits_data(
        network,
        (int(data.get("channels", 3)), int(data.image_size), int(data.image_size)),
        int(data.num_classes),
        str(data.get("name")),
    )
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup("test")
    facts = data_facts(datamodule)
    batches = data_batches(datamodule, datamodule.test_dataloader(), torch.device("cpu"))
    if network.mean is not None and network.std is not None:
        if facts["mean"] is None or facts["std"] is None:
            raise UserInputError(
                f"data={data.get('name')} does not say how it normalises its images, so they cannot be "
                f"normalised as export.json asks; evaluate on data that does (cifar10, imagenet, synthetic)"
            )
        batches = renormalized(batches, facts["mean"], facts["std"], network.mean, network.std)
    metrics: dict[str, Any] = evaluation_metrics(network.run, batches)
    log.info("evaluated %s (%s) on the test split", network.path, network.runtime)
    print_metrics(metrics, title=f"{network.path.name} (test split)")
    manifest = network.manifest
    metrics.update(
        {
            schema.TASK: "eval",
            schema.EXPORTED: str(network.path),
            schema.EXPORTED_RUNTIME: network.runtime,
            schema.MODEL: manifest.get(schema.MODEL),
            schema.WIDTH: manifest.get(schema.WIDTH),
            schema.CONV: manifest.get(schema.CONV),
            schema.GROUPS: manifest.get(schema.GROUPS),
            schema.STEM: manifest.get(schema.STEM),
            schema.DATA: data.get("name"),
            schema.SEED: cfg.get("seed"),
            schema.INPUT_SIZE: shape_text(network.input_size),
        }
    )
    write_metrics(cfg.paths.output_dir, metrics)
    return metrics
