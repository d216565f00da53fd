"""submitit's Hydra launchers (hydra-submitit-launcher 1.2), as lnrepro runs them.

What they add to `submitit_slurm` / `submitit_local`:

- **Every job is waited for, and every failure is named.** submitit's launcher waits for the jobs in order and stops
  at the first failure with that job's exception alone; here the sweep waits for all its jobs, logs each failure as
  soon as it is seen, and ends with one error that lists every failed job: its number, its overrides, the last line
  of its error, and its log files (`<sweep>/.submitit/<job id>/<job id>_<task>_log.err` / `.out`).
- **A job that died without a word is noticed.** Without SLURM accounting (`sacct`), submitit knows a job is done
  only from its result file, and waits forever for a job that was killed (out of memory, cancelled, node failure).
  Here `squeue` is asked instead when the cluster keeps no accounting.
- **Jobs with several tasks run DDP.** Each task exports `LNREPRO_TASKS_PER_NODE` and `LNREPRO_NUM_NODES`, which
  `trainer=ddp` reads for `devices` and `num_nodes`; under SLURM, Lightning takes ranks from SLURM's environment;
  with the local launcher, submitit's ranks are exported as torch's (`RANK`, `LOCAL_RANK`, `MASTER_ADDR`, ...) so
  that Lightning uses the processes submitit started instead of running the command line again.

The launcher itself imports neither torch nor lnrepro: the sweep's own process stays light.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)

POLL_S = 1.0
# SLURM job states after which a job will not run again (a requeued job is PENDING or REQUEUED, not one of these).
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}


class SweepJobsFailed(CompactHydraException):
    """Jobs of a sweep failed; the message names each with its log files. Hydra prints it without a traceback."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_error(error: BaseException) -> str:
    """One line: what the job's exception says (the last line of a traceback submitit brought back)."""
    import submitit

    if isinstance(error, submitit.core.utils.FailedJobError):
        # "Job (task=0) failed during processing with trace:\n---\n<traceback>\n---\nYou can check full logs ..."
        trace = str(error).split("-" * 24)
        return _last_line(trace[1] if len(trace) > 2 else error)
    if isinstance(error, submitit.core.utils.UncompletedJobError):
        # "Job 7_1 (task: 0) with path ...\nhas not produced any output (state: CANCELLED by 0)\n..."
        state = re.search(r"has not produced any output \(state: (.*)\)", str(error))
        return (
            f"the job ended without a result (SLURM state {state.group(1)})"
            if state
            else "the job ended without a result (killed?)"
        )
    text = _last_line(str(error)) if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def log_files(job) -> list[Path]:
    """The job's log files: stderr then stdout of each task (task 0's first)."""
    from submitit.core.utils import JobPaths

    files = []
    for task in range(job.num_tasks):
        paths = JobPaths(job.paths.folder, job_id=job.job_id, task_id=task)
        files += [paths.stderr, paths.stdout]
    return files


def failure_line(number: int, overrides: Sequence[str], job, error: BaseException, shared: Sequence[str] = ()) -> str:
    """`job #N (<its own overrides>) failed: <error>` and its log files; `shared`: the overrides every job of the
    sweep has, left out."""
    files = [f for f in log_files(job) if f.exists()] or log_files(job)[:1]
    own = [o for o in filter_overrides(overrides) if o not in shared]
    shown = " ".join(own) or "the sweep's common overrides"
    return f"job #{number} ({shown}) failed: {describe_error(error)}\n    log: {files[0]}" + "".join(
        f"\n         {f}" for f in files[1:]
    )


def _accounting_is_off() -> bool:
    """Whether the SLURM cluster keeps no accounting (`sacct` then cannot answer)."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(
        line.split("=", 1)[0].strip() == "AccountingStorageType" and "accounting_storage/none" in line
        for line in config.splitlines()
    )


def _squeue_watcher(delay_s: int = 600):
    """submitit's job-state watcher, asking `squeue` instead of `sacct`: for clusters without accounting, where
    submitit would learn of a job's end only from its result file and wait forever for a job that was killed."""
    from submitit.core import logger as submitit_logger
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        def update(self) -> None:
            ids = sorted({job_id.split("_")[0] for job_id in self._registered - self._finished})
            if not ids:
                return
            self._num_calls += 1
            try:
                result = subprocess.run(
                    ["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(ids)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                submitit_logger.get_logger().warning(f"squeue failed ({error}): job states may be late")
            else:
                if result.returncode == 0:
                    states = {}
                    for job_id, info in self.read_info("JobID|State\n" + result.stdout).items():
                        state = info.get("State", "").split(" ")[0]
                        # submitit counts any state it does not know as an end: only real ends are ends here
                        states[job_id] = {**info, "State": state if state in ENDED_STATES else "RUNNING"}
                    self._info_dict.update(states)
                elif "Invalid job id" in result.stderr:  # slurmctld has forgotten them: MinJobAge after their end
                    for job_id in self._registered - self._finished:
                        if job_id not in self._info_dict or self._info_dict[job_id].get("State") == "RUNNING":
                            self._info_dict[job_id] = {"State": "ENDED"}
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return SqueueWatcher(delay_s=delay_s)


class _Sweep:
    """submitit's `launch` (hydra-submitit-launcher 1.2.0), with every job waited for and every failure named."""

    _EXECUTOR = "abstract"

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        # Runs in every task of the job, before the run's config is composed (and before lightning is imported).
        import submitit

        environment = submitit.JobEnvironment()
        os.environ["LNREPRO_TASKS_PER_NODE"] = str(max(1, environment.num_tasks // environment.num_nodes))
        os.environ["LNREPRO_NUM_NODES"] = str(environment.num_nodes)
        if self._EXECUTOR == "local" and environment.num_tasks > 1:
            # torch's names for submitit's ranks: Lightning then uses these processes (it sees LOCAL_RANK) instead
            # of starting its own by running the command line again, which here would run submitit's job runner.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        assert len(job_overrides) > 0
        params = self.params
        init_params = {"folder": params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x not in init_keys}
        )

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        if self._EXECUTOR == "slurm" and _accounting_is_off():
            from submitit.slurm.slurm import SlurmJob

            SlurmJob.watcher = _squeue_watcher()  # this process's jobs only: the sweep's own process
        jobs = executor.map_array(self, *zip(*job_params))
        for idx, job in enumerate(jobs, start=initial_job_idx):
            log.info(f"\t#{idx} : job {job.job_id}, log {job.paths.stdout.parent}")
        return self._wait(jobs, job_overrides, initial_job_idx, sweep_dir)

    def _wait(self, jobs, job_overrides: Sequence[Sequence[str]], first: int, sweep_dir: Path) -> list[JobReturn]:
        returns: list[JobReturn | None] = [None] * len(jobs)
        failures: list[str] = []
        shared = set.intersection(*(set(o) for o in job_overrides)) if len(job_overrides) > 1 else set()
        while any(r is None for r in returns):
            for i, job in enumerate(jobs):
                if returns[i] is not None or not job.done():
                    continue
                overrides = list(job_overrides[i])
                try:
                    returned = job.results()[0]
                except Exception as error:  # the job died or raised outside Hydra: no JobReturn came back
                    returned = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=error)
                if returned.status == JobStatus.FAILED:
                    failures.append(failure_line(first + i, overrides, job, returned._return_value, shared))
                    log.error(failures[-1])
                returns[i] = returned
            if any(r is None for r in returns):
                time.sleep(POLL_S)
        if failures:
            others = "; the others ran to their end" if len(failures) < len(jobs) else ""
            error = SweepJobsFailed(
                f"{len(failures)} of {len(jobs)} jobs of the sweep failed{others} (outputs in "
                f"{sweep_dir}):\n" + "\n".join(failures)
            )
            for returned in returns:
                if returned.status == JobStatus.FAILED:
                    returned._return_value = error
        return returns


class SlurmLauncher(_Sweep, BaseSubmititLauncher):
    _EXECUTOR = "slurm"


class LocalLauncher(_Sweep, BaseSubmititLauncher):
    _EXECUTOR = "local"
