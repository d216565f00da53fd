"""`lnrepro-report --predict RUNTIME[,RUNTIME]`: the predicted batch-1 latency of runs never timed in a runtime,
from the latency predictor fitted on this machine (`lnrepro.profiling.predictor`).

Each run's network is rebuilt from what its metrics.json records (family, width, conv kind, groups, stem, its family
options and input size; the classifier's size from its data: 1000 classes on ImageNet, 10 otherwise) with random
weights: latency does not depend on the weights. The figures go into the report's runtime table beside the measured
ones; the runs' files are not changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lnrepro import schema
from lnrepro.errors import UserInputError

#: Data names whose classifier has 1000 classes; every other data set of the zoo has 10.
THOUSAND_CLASSES = ("imagenet",)


def network_of(metrics: dict[str, Any]):
    """The network a run measured, rebuilt from its metrics, and its (C, H, W) input; None where the run names no
    family of the zoo or no input size."""
    from lnrepro.models import build_model, list_models
    from lnrepro.models.registry import model_options

    name = metrics.get(schema.MODEL)
    size = metrics.get(schema.INPUT_SIZE)
    if name not in list_models() or not size:
        return None
    shape = [int(part) for part in (size.split("x") if isinstance(size, str) else size)]
    accepted = set(model_options(name)) - {"pretrained"}
    arguments: dict[str, Any] = {
        "width": metrics.get(schema.WIDTH) or 1.0,
        "num_classes": 1000 if metrics.get(schema.DATA) in THOUSAND_CLASSES else 10,
        "stem": metrics.get(schema.STEM) or ("imagenet" if shape[-1] > 64 else "cifar"),
    }
    for option in ("conv", "groups"):
        if option in accepted and metrics.get(option) is not None:
            arguments[option] = metrics[option]
    prefix = schema.model_option_key("")
    for key, value in metrics.items():
        option = key.removeprefix(prefix)
        if key.startswith(prefix) and option in accepted and value is not None:
            arguments[option] = value
    return build_model(name, **arguments).eval(), tuple(shape[-3:])


def fill_predictions(runs: Iterable[Any], runtimes: Iterable[str], threads: int | None = 1) -> list[str]:
    """Set `latency/<runtime>_predicted_ms` in the metrics of each run (in memory) that has neither it nor a measured
    latency in that runtime; the predictors are loaded first, so a missing one is refused before any work. Returns
    notes for the report (runs that could not be rebuilt)."""
    from lnrepro.profiling.kernels import describe
    from lnrepro.profiling.predictor import load_predictor

    runtimes = list(runtimes)
    predictors = {runtime: load_predictor(runtime, threads) for runtime in runtimes}
    notes = []
    for run in runs:
        wanted = [
            runtime
            for runtime in runtimes
            if run.metrics.get(schema.latency_key(runtime)) is None
            and run.metrics.get(schema.predicted_latency_key(runtime)) is None
        ]
        if not wanted:
            continue
        try:
            built = network_of(run.metrics)
        except UserInputError as error:
            built, reason = None, str(error)
        else:
            reason = "it names no model of the zoo or no input size"
        if built is None:
            notes.append(f"{run.path}: no predicted latency ({reason})")
            continue
        network = describe(*built)
        for runtime in wanted:
            run.metrics[schema.predicted_latency_key(runtime)] = predictors[runtime].predict_ms(network)
    return notes
