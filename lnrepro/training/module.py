"""The LightningModule for image classification: any `nn.Module` that maps images to logits."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lnrepro.errors import UserInputError
from lnrepro.profiling.context import InputSize, input_shape


class ClassificationModule(pl.LightningModule):
    """Cross-entropy (label smoothing; Mixup/CutMix from timm), top-1/top-5 accuracy for train/val/test and
    `val/acc_best`. The optimizer and scheduler arrive as partials from the config groups.

    Accuracy is the fraction of all images classified correctly (micro average), the figure papers report;
    torchmetrics' default, the mean of per-class recalls, differs from it wherever the classes are imbalanced.

    Args:
        net: the network.
        optimizer: `partial(torch.optim.X, lr=..., ...)`, completed with the parameters here.
        scheduler: a factory from `lnrepro.training.schedulers`, completed with `steps_per_epoch`/`max_epochs`.
        num_classes: for the metrics and Mixup's soft targets.
        no_weight_decay_on_norm_and_bias: exempt 1-d parameters (norm weights, biases) from weight decay.
        mixup: timm `Mixup` arguments (`mixup_alpha`, `cutmix_alpha`, `prob`, `switch_prob`); off when both alphas
            are 0.
        channels_last: feed the network channels-last tensors (and convert its weights).
        compile: run the forward pass through `torch.compile` (`nn.Module.compile` on this module: the
            state_dict keeps its plain keys, and `self.net`, which profiling and export use, stays uncompiled).
        input_size: the network's input, (C, H, W) or an image side; sets `example_input_array`, so that
            Lightning's model summary counts FLOPs and TensorBoard can draw the graph. None: unset.
        run_config: the composed run config, stored in checkpoints so `eval.py` can rebuild the run.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., dict] | None,
        num_classes: int,
        label_smoothing: float = 0.0,
        no_weight_decay_on_norm_and_bias: bool = True,
        mixup: dict[str, float] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        input_size: InputSize | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        # The run config goes into checkpoints (`hyper_parameters`) and to every logger.
        self.save_hyperparameters(run_config or {}, logger=True)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.no_weight_decay_on_norm_and_bias = no_weight_decay_on_norm_and_bias
        self.channels_last = channels_last
        self.mixup = self._make_mixup(mixup or {}, num_classes, label_smoothing)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            # Compiles this module's __call__ (what the steps call) in place: no wrapper module, so no
            # `_orig_mod.` in the state_dict keys.
            self.compile()
        if input_size is not None:
            self.example_input_array = torch.zeros(1, *input_shape(input_size))

        accuracy = partial(MulticlassAccuracy, num_classes, average="micro")
        top5 = min(5, num_classes)
        self.train_acc = accuracy(top_k=1)
        self.val_acc = accuracy(top_k=1)
        self.val_acc5 = accuracy(top_k=top5)
        self.test_acc = accuracy(top_k=1)
        self.test_acc5 = accuracy(top_k=top5)
        # A plain float saved with the checkpoint (on_save_checkpoint), so a resumed run keeps its best.
        self.best_val_acc = -math.inf

    @staticmethod
    def _make_mixup(options: dict[str, float], num_classes: int, label_smoothing: float):
        if not (options.get("mixup_alpha", 0) > 0 or options.get("cutmix_alpha", 0) > 0):
            return None
        from timm.data import Mixup

        return Mixup(**options, label_smoothing=label_smoothing, num_classes=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.mixup is not None:
            even = len(images) // 2 * 2  # timm's Mixup pairs images by flipping the batch: it needs an even size
            mixed, soft_targets = self.mixup(images[:even], labels[:even])
            logits = self(mixed)
            loss = torch.sum(-soft_targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
            labels = labels[:even]
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch, stage: str, top1: MulticlassAccuracy, top5: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True, prog_bar=False)
        top1(logits, labels)
        top5(logits, labels)
        self.log(f"{stage}/acc", top1, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc5", top5, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc, self.val_acc5)

    def on_validation_epoch_end(self) -> None:
        # Sanity-check batches say nothing about the model being trained.
        if not self.trainer.sanity_checking:
            self.best_val_acc = max(self.best_val_acc, float(self.val_acc.compute()))
        if self.best_val_acc > -math.inf:
            self.log("val/acc_best", self.best_val_acc, prog_bar=True, sync_dist=False)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc, self.test_acc5)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_acc"] = self.best_val_acc

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_acc = checkpoint.get("best_val_acc", -math.inf)

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("this module was built for evaluation only (no optimizer)")
        parameters: Any = self.net.parameters()
        if self.no_weight_decay_on_norm_and_bias:
            from timm.optim import param_groups_weight_decay

            weight_decay = _keyword(self.optimizer_factory, "weight_decay", 0.0)
            parameters = param_groups_weight_decay(self.net, weight_decay=weight_decay)
        optimizer = self.optimizer_factory(params=parameters)
        if self.scheduler_factory is None:
            return optimizer
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs <= 0:
            raise UserInputError(f"trainer.max_epochs must be a positive number of epochs (got {max_epochs})")
        steps_per_epoch = max(1, math.ceil(self.trainer.estimated_stepping_batches / max_epochs))
        scheduler = self.scheduler_factory(optimizer, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _keyword(factory: Callable, name: str, default: Any) -> Any:
    return factory.keywords.get(name, default) if isinstance(factory, partial) else default
