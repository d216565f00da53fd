"""benchmarks/bench_profile_overhead.py: the step-interleaving switch runs the callback's per-step hooks on exactly
one step of each pair, the median interval is the textbook one, and the whole benchmark runs at a tiny size."""

from __future__ import annotations

import importlib.util
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_profile_overhead", ROOT / "benchmarks" / "bench_profile_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class CountingHooks(pl.Callback):
    def __init__(self):
        self.batch_starts, self.batch_ends, self.epoch_starts, self.epoch_ends, self.fit_starts = [], [], 0, 0, 0

    def on_fit_start(self, trainer, pl_module):
        self.fit_starts += 1

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_starts += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_ends += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_starts.append((trainer.current_epoch, batch_idx))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch_ends.append((trainer.current_epoch, batch_idx))


class TinyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_switch_runs_the_per_step_hooks_on_one_step_of_each_pair(bench):
    inner = CountingHooks()
    switch = bench.EveryOtherStep(inner, warmup=2, seed=0)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[switch],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(TinyModule(), train_dataloaders=DataLoader(data, batch_size=4))  # 10 steps per epoch
    # Timed steps: epoch 0 after its 2 warm-up steps (8 steps: 4 pairs), epoch 1 from its 2nd step (the first
    # starts the clock; 9 steps: 4 pairs and a half pair, dropped since a pair never spans epochs).
    assert len(switch.pairs) == 8 and all(set(pair) == {True, False} for pair in switch.pairs)
    assert inner.batch_starts == inner.batch_ends
    pairs = [(0, (2, 3)), (0, (4, 5)), (0, (6, 7)), (0, (8, 9)), (1, (1, 2)), (1, (3, 4)), (1, (5, 6)), (1, (7, 8))]
    for epoch, steps in pairs:  # the callback's per-step hooks ran on exactly one step of each pair
        assert sum((epoch, step) in inner.batch_starts for step in steps) == 1, (epoch, steps, inner.batch_starts)
    assert set(inner.batch_starts) <= {(e, s) for e, steps in pairs for s in steps} | {(1, 9)}  # no warm-up step
    positions = {steps.index(s) for e, steps in pairs for s in steps if (e, s) in inner.batch_starts}
    assert positions == {0, 1}  # a coin, not a fixed order, decides which step of a pair runs the hooks
    assert inner.fit_starts == 1 and inner.epoch_starts == 2 and inner.epoch_ends == 2  # forwarded always
    assert all(ratio > 0 for ratio in switch.ratios())


def test_median_interval_is_the_order_statistics_one(bench):
    assert bench.median_interval([float(v) for v in range(1, 101)]) == (40.0, 61.0)
    low, high = bench.median_interval([1.0, 2.0, 3.0])
    assert (low, high) == (1.0, 3.0)


def test_benchmark_runs_end_to_end_at_a_tiny_size(bench, capsys):
    bench.main(
        [
            "--train-size",
            "64",
            "--batch",
            "16",
            "--epochs",
            "1",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--interleaved-epochs",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "ratio with/without, images/s over all steps" in out
    assert "time inside the callback's hooks" in out and "on_fit_start" in out
    assert "pairs of adjacent steps" in out and "verdict on the interval's lower end" in out


def test_the_contention_benchmark_times_each_runtime_quiet_and_loaded_and_flags_the_load(capsys):
    spec = importlib.util.spec_from_file_location("bench_contention", ROOT / "benchmarks" / "bench_contention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(
            [
                "--model",
                "mobilenet_v2",
                "--width",
                "0.25",
                "--image-size",
                "16",
                "--runtimes",
                "eager",
                "onnxruntime",
                "--threads",
                "1",
                "--hogs",
                "2",
                "--rounds",
                "1",
                "--runs",
                "12",
                "--warmup",
                "1",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    rows = {
        line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ("eager", "onnxruntime")
    }
    assert set(rows) == {"eager", "onnxruntime"}
    for cells in rows.values():
        assert float(cells[1]) > 0 and float(cells[3]) > 0 and float(cells[5]) > 0  # quiet, loaded, ratio
        assert cells[6] in ("yes", "no")
