from lnrepro.callbacks.efficiency_profile import EfficiencyProfile
from lnrepro.callbacks.epoch_seeding import EpochSeeding
from lnrepro.callbacks.non_finite_loss import StopOnNonFiniteLoss
from lnrepro.callbacks.wandb_run_id import WandbRunId

__all__ = ["EfficiencyProfile", "EpochSeeding", "StopOnNonFiniteLoss", "WandbRunId"]
