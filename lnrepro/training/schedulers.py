"""Learning-rate schedules as Lightning scheduler configs.

Every factory takes the optimizer plus `steps_per_epoch` and `max_epochs` (known only once the Trainer has the data),
so configs name a schedule with `_partial_: true` and the LightningModule completes it. They are torch's own
schedulers, which Lightning steps natively (timm's need a custom `lr_scheduler_step`).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiStepLR,
    SequentialLR,
    StepLR,
)

from lnrepro.errors import UserInputError


def _per_epoch(scheduler) -> dict:
    return {"scheduler": scheduler, "interval": "epoch", "frequency": 1}


def cosine_with_warmup(
    optimizer: Optimizer,
    *,
    steps_per_epoch: int,
    max_epochs: int,
    warmup_epochs: float = 0,
    warmup_start_factor: float = 0.01,
    min_lr: float = 0.0,
) -> dict:
    """Linear warm-up from `warmup_start_factor` x lr over `warmup_epochs`, then cosine decay to `min_lr`, per step."""
    total_steps = max(1, steps_per_epoch * max_epochs)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if warmup_epochs < 0 or warmup_steps >= total_steps:
        raise UserInputError(
            f"scheduler.warmup_epochs={warmup_epochs} must be >= 0 and shorter than trainer.max_epochs={max_epochs}"
        )
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr)
    if warmup_steps == 0:
        scheduler = cosine
    else:
        warmup = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup_steps)
        scheduler = SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def linear(optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int, end_factor: float = 0.0) -> dict:
    """lr decays linearly to `end_factor` x lr over the run, every step (ShuffleNet V1/V2's schedule)."""
    total_steps = max(1, steps_per_epoch * max_epochs)
    scheduler = LinearLR(optimizer, start_factor=1.0, end_factor=end_factor, total_iters=total_steps)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def step(
    optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int, step_size: int = 30, gamma: float = 0.1
) -> dict:
    return _per_epoch(StepLR(optimizer, step_size=step_size, gamma=gamma))


def multistep(
    optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int, milestones=(100, 150), gamma: float = 0.1
) -> dict:
    return _per_epoch(MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma))


def exponential(optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int, gamma: float = 0.98) -> dict:
    return _per_epoch(ExponentialLR(optimizer, gamma=gamma))


def constant(optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int) -> dict:
    return _per_epoch(LambdaLR(optimizer, lambda epoch: 1.0))
