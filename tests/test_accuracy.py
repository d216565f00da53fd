"""Accuracy is top-1 / top-5 over all images (micro average), the figure papers report, not torchmetrics' default
mean of per-class recalls: on imbalanced labels, as here, the two differ. Checked through the module's training,
validation and test steps."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lnrepro.training import ClassificationModule

NUM_CLASSES = 10
# Every image gets the same logits, in decreasing order: top-1 is class 0, the top 5 are classes 0-4.
LOGITS = torch.arange(NUM_CLASSES, 0, -1, dtype=torch.float)
# 7 images of class 0, 2 of class 3 (in the top 5), 1 of class 7 (not): top-1 7/10, top-5 9/10.
LABELS = torch.tensor([0, 0, 3, 0, 0, 7, 0, 3, 0, 0])


def fixed_logits_net() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, NUM_CLASSES))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(LOGITS)
    return net


def test_per_class_averaging_gives_other_figures_on_these_labels():
    """The premise: torchmetrics' default averages the recalls of the classes present, (1 + 0 + 0) / 3 and
    (1 + 1 + 0) / 3, so the test below fails under it."""
    logits = LOGITS.expand(len(LABELS), -1)
    assert float(MulticlassAccuracy(NUM_CLASSES, top_k=1)(logits, LABELS)) == pytest.approx(1 / 3)
    assert float(MulticlassAccuracy(NUM_CLASSES, top_k=5)(logits, LABELS)) == pytest.approx(2 / 3)


def module_and_trainer() -> tuple[ClassificationModule, pl.Trainer]:
    # lr 0: a training epoch leaves the logits as they are
    module = ClassificationModule(
        fixed_logits_net(), optimizer=partial(torch.optim.SGD, lr=0.0), scheduler=None, num_classes=NUM_CLASSES
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return module, trainer


def loader() -> DataLoader:
    # Batches of 4, 4 and 2 images: the epoch's figure counts images, whatever the batches hold.
    return DataLoader(TensorDataset(torch.zeros(len(LABELS), 3, 4, 4), LABELS), batch_size=4)


def test_training_accuracy_is_the_fraction_of_all_images_classified_right():
    module, trainer = module_and_trainer()
    trainer.fit(module, train_dataloaders=loader())
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(0.7)


@pytest.mark.parametrize("stage", ["val", "test"])
def test_evaluation_top1_and_top5_are_the_fractions_of_all_images_classified_right(stage):
    module, trainer = module_and_trainer()
    run = trainer.validate if stage == "val" else trainer.test
    metrics = run(module, loader(), verbose=False)[0]
    assert metrics[f"{stage}/acc"] == pytest.approx(0.7)
    assert metrics[f"{stage}/acc5"] == pytest.approx(0.9)
    if stage == "val":
        assert metrics["val/acc_best"] == pytest.approx(0.7)
