"""Scaling a run out: the global batch split over DDP processes, which process speaks for the run, the SLURM job
it runs in (which checkpoint a requeued job continues from: `lnrepro.training.resume`).

`data.batch_size` is the recipe's global batch (images per optimizer step over all processes); each process's
DataLoader serves `data.batch_size / world_size`. The training order of an epoch is split across the processes by
Lightning's distributed sampler wrapped around the data module's epoch-seeded sampler (Lightning >= 2.6.1 passes
`set_epoch` through to it; before, every epoch of a DDP run repeated epoch 0's order).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lnrepro import schema
from lnrepro.errors import UserInputError

log = logging.getLogger("lnrepro")

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Set by what starts the processes of a run: torchrun and submitit's exported environment (RANK), SLURM's srun
# (SLURM_PROCID), Lightning's own relaunch of the command line (LOCAL_RANK and NODE_RANK).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
SCRIPT_RELAUNCH_IN_MULTIRUN = (
    "trainer.strategy=ddp starts its other processes by running the command line again, which inside a multirun "
    "(-m) would start the whole sweep again in every process: launch the sweep's jobs as real processes instead "
    "(hydra/launcher=local hydra.launcher.tasks_per_node={n} on this machine, hydra/launcher=slurm "
    "hydra.launcher.tasks_per_node={n} on a cluster), or run each point without -m"
)


def is_rank_zero() -> bool:
    """Whether this process is the run's first (or only) process, from what its launcher set in the environment.

    Known before the Trainer exists, so the config is printed once per run, not once per process.
    """
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name, 0)) != 0:
                return False
        except ValueError:
            continue
    return True


def slurm_facts() -> dict[str, Any]:
    """The SLURM job this process runs in (empty outside SLURM): job id, array job and task ids, restarts."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    facts: dict[str, Any] = {schema.SLURM_JOB_ID: os.environ["SLURM_JOB_ID"]}
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        facts[schema.SLURM_ARRAY_JOB_ID] = os.environ["SLURM_ARRAY_JOB_ID"]
        facts[schema.SLURM_ARRAY_TASK_ID] = int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))
    facts[schema.SLURM_RESTART_COUNT] = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    return facts


def per_process_batch(global_batch: Any, world_size: int) -> int:
    """`data.batch_size` (the global batch) / `world_size`; one line when it does not divide."""
    if not isinstance(global_batch, int) or isinstance(global_batch, bool) or global_batch <= 0:
        raise UserInputError(f"data.batch_size must be a positive integer (got {global_batch!r})")
    if global_batch % world_size:
        below, above = global_batch // world_size * world_size, (global_batch // world_size + 1) * world_size
        raise UserInputError(
            f"data.batch_size={global_batch} is the global batch and must divide among the {world_size} processes: "
            f"use a multiple of {world_size} (e.g. {below or world_size} or {above}) or another number of processes"
        )
    return global_batch // world_size


def _relaunches_command_line(trainer) -> int:
    """How many processes the trainer's strategy would start by running the command line again (0: none)."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if isinstance(launcher, _SubprocessScriptLauncher):
        if not launcher.cluster_environment.creates_processes_externally:
            return launcher.num_processes * launcher.num_nodes
    return 0


def set_up_processes(trainer, datamodule, in_multirun: bool) -> dict[str, Any]:
    """Check the process layout, give the data module its per-process batch; return the facts for metrics.json.

    Runs in every process, after the Trainer is built and before anything is fitted.
    """
    processes = _relaunches_command_line(trainer)
    if in_multirun and processes > 1:
        raise UserInputError(SCRIPT_RELAUNCH_IN_MULTIRUN.format(n=processes))
    world_size = int(trainer.world_size)
    global_batch = datamodule.batch_size
    datamodule.batch_size = per_process_batch(global_batch, world_size)
    if world_size > 1 and is_rank_zero():
        log.info("global batch %d = %d processes x %d", global_batch, world_size, datamodule.batch_size)
    return {
        schema.WORLD_SIZE: world_size,
        schema.BATCH_SIZE_GLOBAL: global_batch,
        schema.BATCH_SIZE_PER_PROCESS: datamodule.batch_size,
        **slurm_facts(),
    }


def keep_csv_history(output_dir: Path) -> list[Path]:
    """Lightning's CSVLogger deletes a metrics.csv it finds in its directory: a resumed job would lose the history
    of its first part. Each is kept beside it as metrics.before-restart-<n>.csv (it may also hold the steps after
    the checkpoint, which the resumed job trains again)."""
    kept = []
    for path in sorted(output_dir.rglob("metrics.csv")):
        number = 1
        while path.with_name(f"metrics.before-restart-{number}.csv").exists():
            number += 1
        kept.append(path.rename(path.with_name(f"metrics.before-restart-{number}.csv")))
    return kept
