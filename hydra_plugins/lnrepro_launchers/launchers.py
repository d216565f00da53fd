"""lnrepro's Hydra launchers: Hydra's own, which runs the jobs of a sweep one after another in the sweep's process
(the default, `hydra/launcher=sequential`), and submitit's (hydra-submitit-launcher 1.2: `hydra/launcher=local`,
`hydra/launcher=slurm`), as lnrepro runs them.

What they add:

- **Every job runs, and every failure is named.** Hydra's launcher ends a sweep with the first failed job's
  traceback (also for a refused value) and names no other; submitit's waits for the jobs in order and stops at the
  first failure. Here every job runs to its end, each failure is logged as soon as it is seen, and the sweep ends
  with every failed job: its number, its own overrides, the last line of its error, and its log: one line per job,
  `<sweep>/<n>/<task>.log`, in the sweep's process (where a job's traceback, if it has one, is logged too); with
  submitit, `<sweep>/.submitit/<job id>/<job id>_<task>_log.err` and `.out`. The sweep exits 2 when every failure
  was a refused request or an exhausted resource (what a single run exits 2 for), else 1. With another sweeper than
  Hydra's basic one (optuna decides itself how many failed trials it bears), the failed jobs' results carry that
  list instead, as `SweepJobsFailed`.
- **SIGTERM and SIGINT stop a sweep.** In the sweep's process the job that runs receives them: lnrepro's tasks save
  what they must and exit 143 or 130 (`lnrepro.errors.RunInterrupted`); the sweep starts no further job, says which
  job was stopped and how many were not started, and exits with the same status (also for a signal between jobs).
  With `hydra/launcher=local` the sweep's process passes the signal on to the processes of its running jobs, once
  per signal received, waits for them to end, names them, and exits 128 + the signal number. Its jobs' controllers
  run in a session of their own, so that Ctrl+C in a terminal reaches the sweep alone (submitit's controller would
  answer it by killing its job a second later).
- **A job that died without a word is noticed.** Without SLURM accounting (`sacct`), submitit knows a job is done
  only from its result file, and waits forever for a job that was killed (out of memory, cancelled, node failure).
  Here `squeue` is asked instead when the cluster keeps no accounting.
- **Jobs with several tasks run DDP.** Each task exports `LNREPRO_TASKS_PER_NODE` and `LNREPRO_NUM_NODES`, which
  `trainer=ddp` reads for `devices` and `num_nodes`; under SLURM, Lightning takes ranks from SLURM's environment;
  with the local launcher, submitit's ranks are exported as torch's (`RANK`, `LOCAL_RANK`, `MASTER_ADDR`, ...) so
  that Lightning uses the processes submitit started instead of running the command line again.

The launchers import neither torch nor lnrepro: the sweep's own process stays light (a failed job's error, when
it is one of lnrepro's, is recognised among the modules already loaded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)

POLL_S = 1.0
# SLURM job states after which a job will not run again (a requeued job is PENDING or REQUEUED, not one of these).
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# lnrepro.errors.USER_ERROR_STATUS: a single run's exit status for a refused request or an exhausted resource
USER_ERROR_STATUS = 2
# Hydra's own sweeper reads every job's result after the launch and raises the first failure's exception
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


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


def is_user_facing(error: BaseException) -> bool:
    """Whether `error` is one that a single run reports in one line with exit status 2 (`lnrepro.errors.
    USER_FACING_ERRORS`: a refused value, a diverged loss, a full disk, no memory). Looked up among the modules
    already loaded, not imported: a job that raised one loaded `lnrepro.errors` in this process (or unpickling its
    result did)."""
    errors = sys.modules.get("lnrepro.errors")
    return errors is not None and isinstance(error, getattr(errors, "USER_FACING_ERRORS", ()))


def own_overrides(overrides: Sequence[str], shared: Sequence[str] | set[str] = ()) -> str:
    """A job's overrides without those every job of the sweep has (`shared`)."""
    return " ".join(o for o in filter_overrides(overrides) if o not in shared) or "the sweep's common overrides"


def job_name(number: int, overrides: Sequence[str], shared: Sequence[str] | set[str] = ()) -> str:
    """`#N (<its own overrides>)`, or `#N` for a job that has none of its own."""
    own = own_overrides(overrides, shared) if set(filter_overrides(overrides)) - set(shared) else ""
    return f"#{number} ({own})" if own else f"#{number}"


def shared_overrides(job_overrides: Sequence[Sequence[str]]) -> set[str]:
    """The overrides every job of the sweep has (none for a sweep of one job: its overrides are its own)."""
    return set.intersection(*(set(o) for o in job_overrides)) if len(job_overrides) > 1 else set()


def failure_line(number: int, overrides: Sequence[str], job, error: BaseException, shared: Sequence[str] = ()) -> str:
    """`job #N (<its own overrides>) failed: <error>` and its log files (a submitit job); `shared`: the overrides
    every job of the sweep has, left out."""
    files = [f for f in log_files(job) if f.exists()] or log_files(job)[:1]
    return (
        f"job #{number} ({own_overrides(overrides, shared)}) failed: {describe_error(error)}\n    log: {files[0]}"
        + ("".join(f"\n         {f}" for f in files[1:]))
    )


def sequential_failure_line(
    number: int, overrides: Sequence[str], error: BaseException, log_file: Path, shared: Sequence[str] = ()
) -> str:
    """`job #N (<its own overrides>) failed: <error>; log: <file>`: one line (a job run in the sweep's process)."""
    return f"job #{number} ({own_overrides(overrides, shared)}) failed: {describe_error(error)}; log: {log_file}"


def failed_jobs_message(failures: Sequence[str], jobs: int, sweep_dir: Path, stopped: bool = False) -> str:
    """The end of a sweep with failed jobs: how many of how many, then each one's line(s)."""
    others = "; the others ran to their end" if len(failures) < jobs and not stopped else ""
    return f"{len(failures)} of {jobs} jobs of the sweep failed{others} (outputs in {sweep_dir}):\n" + "\n".join(
        failures
    )


def end_with_failures(
    config: DictConfig,
    returns: list[JobReturn],
    failures: Sequence[str],
    user_facing: bool,
    sweep_dir: Path,
) -> list[JobReturn]:
    """End a sweep whose jobs `failures` names (the other jobs have ended): with Hydra's basic sweeper, which would
    raise the first failed job's exception (its traceback, its name alone), print them and exit 2 when every
    failure was user-facing, else 1. Another sweeper (optuna) gets them as the failed jobs' results."""
    message = failed_jobs_message(failures, len(returns), sweep_dir)
    if OmegaConf.select(config, "hydra.sweeper._target_") == BASIC_SWEEPER:
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_STATUS if user_facing else 1)
    error = SweepJobsFailed(message)
    for returned in returns:
        if returned.status == JobStatus.FAILED:
            returned._return_value = error
    return returns


# --- signals --------------------------------------------------------------------------------------------------------
class SweepInterrupted(BaseException):
    """SIGTERM or SIGINT reached the sweep's process where no task handles it (between jobs, or before a job's task
    took the signals over). A BaseException, so that Hydra's `except Exception` around a job does not take it for
    the job's failure and go on with the next."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def _raise_interrupted(number: int, frame: Any) -> NoReturn:
    raise SweepInterrupted(number)


def _exit_on_signal(number: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + number)


@contextlib.contextmanager
def signals_handled_by(handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT meanwhile (Python delivers signals to the main thread only: elsewhere
    nothing changes); the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old if old is not None else signal.SIG_DFL)


def signal_name(status: int) -> str | None:
    """`SIGTERM` for 143, `SIGINT` for 130 (a shell's 128 + signal number); None for any other status."""
    try:
        return signal.Signals(status - 128).name if status > 128 else None
    except ValueError:
        return None


def exit_status(stop: BaseException) -> int:
    """The status a sweep stopped by `stop` exits with: a SystemExit's own (as Python would: None 0, a message 1),
    128 + the signal number for a signal."""
    if isinstance(stop, SweepInterrupted):
        return 128 + stop.signal_number
    if isinstance(stop, KeyboardInterrupt):
        return 128 + signal.SIGINT
    code = stop.code if isinstance(stop, SystemExit) else 1
    return 0 if code is None else code if isinstance(code, int) else 1


def stop_sweep(line: str, status: int, failures: Sequence[str], jobs: int, sweep_dir: Path) -> NoReturn:
    """End a sweep that a signal (or a job's exit) stopped: the failures seen so far, then `line`; exit `status`."""
    if failures:
        print(failed_jobs_message(failures, jobs, sweep_dir, stopped=True), file=sys.stderr)
    log.warning(line)
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(status)


def not_started(numbers: Sequence[int]) -> str:
    """`the remaining 2 jobs (#3, #4) were not started`, or that none was left."""
    if not numbers:
        return "no job was left to start"
    jobs = "job" if len(numbers) == 1 else "jobs"
    verb = "was" if len(numbers) == 1 else "were"
    return f"the remaining {len(numbers)} {jobs} ({', '.join(f'#{n}' for n in numbers)}) {verb} not started"


def task_processes(controller: int) -> list[int]:
    """The processes of a local job's tasks (`python -m submitit.core._submit`): the children of its controller,
    or of the shell that runs the controller when the job has setup lines. Read from /proc: Linux only."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tasks, todo = [], list(children.get(controller, []))
    while todo:
        pid = todo.pop()
        try:
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in command:
            tasks.append(pid)  # not its own children: a DataLoader's workers follow their task
        else:
            todo += children.get(pid, [])
    return tasks


class PassOn:
    """SIGTERM and SIGINT to a local sweep's process, passed on to the processes of the jobs still running: each
    signal once to each task process, and to a task that starts later (a job still starting when the signal came),
    its last one. The jobs then stop as they would alone (lnrepro's tasks save what they must, exit 143 or 130)."""

    def __init__(self) -> None:
        self.jobs: Sequence[Any] = ()
        self.received: int | None = None  # the first signal: the sweep's exit status is 128 + it
        self.last: int | None = None
        self.stopped: set[int] = set()  # the jobs (indices) running when a signal came
        self.signalled: set[int] = set()  # task processes already sent the last signal

    @property
    def stop(self) -> SweepInterrupted:
        """What a stopped job's result is when it left none."""
        assert self.received is not None
        return SweepInterrupted(self.received)

    def handle(self, number: int, frame: Any) -> None:
        self.received = self.received or number
        self.last = number
        self.signalled = set()
        name = signal.Signals(number).name
        log.warning(f"{name} received: passing it on to the running jobs, then stopping")
        self.pass_on()

    def pass_on(self) -> None:
        """Send the last signal to every task process of a running job that has not had it yet."""
        if self.last is None:
            return
        for i, job in enumerate(self.jobs):
            if job.done():
                continue
            self.stopped.add(i)
            process = getattr(job, "_process", None)
            if process is None:
                continue
            if not Path("/proc").is_dir():  # no /proc: the controller passes SIGTERM on to its tasks itself
                if process.pid not in self.signalled:
                    process.send_signal(signal.SIGTERM)
                    self.signalled.add(process.pid)
                continue
            for pid in task_processes(process.pid):
                if pid not in self.signalled:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, self.last)
                    self.signalled.add(pid)


class _SubprocessInOwnSession:
    """What `submitit.local.local` sees as its `subprocess` module while a sweep starts its jobs: the same, except
    that a process it starts (each job's controller) begins a session, and a process group, of its own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # subprocess's name
        return subprocess.Popen(*args, **{**kwargs, "start_new_session": True})


@contextlib.contextmanager
def controllers_in_their_own_session() -> Iterator[None]:
    """submitit starts each local job's controller in the sweep's process group: Ctrl+C in a terminal reaches the
    controller too, which sends the job SIGINT and, a second later, SIGKILL (no time to save). In a session of
    their own the jobs get the signal from the sweep alone (`PassOn`), once."""
    from submitit.local import local

    original = local.subprocess
    local.subprocess = _SubprocessInOwnSession()
    try:
        yield
    finally:
        local.subprocess = original


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
    """submitit's `launch` (hydra-submitit-launcher 1.2.0), with every job waited for and every failure named; a local
    sweep passes SIGTERM and SIGINT on to its jobs."""

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
        if self._EXECUTOR == "local":
            # submitit ignores SIGTERM in a job (it logs "Bypassing signal SIGTERM"); a local sweep passes SIGTERM and
            # SIGINT on to stop its jobs: they end this one at once until its task takes them over (lnrepro's tasks
            # save what they must and exit 143 or 130), and after.
            for number in STOP_SIGNALS:
                signal.signal(number, _exit_on_signal)
        if self._EXECUTOR == "local" and environment.num_tasks > 1:
            # torch's names for submitit's ranks: Lightning then uses these processes (it sees LOCAL_RANK) instead
            # of starting its own by running the command line again, which here would run submitit's job runner.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        returned = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        error = returned._return_value
        if returned.status == JobStatus.FAILED and not is_user_facing(error):
            # Hydra kept the exception for the sweep, which gets it without its traceback: into this job's logs
            log.error(f"job #{job_num} failed", exc_info=(type(error), error, error.__traceback__))
        return returned

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
        if self._EXECUTOR != "local":  # SLURM's jobs run on without the sweep's process: it only waits for them
            jobs = executor.map_array(self, *zip(*job_params))
            self._log_jobs(jobs, initial_job_idx)
            return self._wait(jobs, job_overrides, initial_job_idx, sweep_dir)
        passer = PassOn()
        with signals_handled_by(passer.handle):
            with controllers_in_their_own_session():
                jobs = executor.map_array(self, *zip(*job_params))
            passer.jobs = jobs
            self._log_jobs(jobs, initial_job_idx)
            return self._wait(jobs, job_overrides, initial_job_idx, sweep_dir, passer)

    @staticmethod
    def _log_jobs(jobs, first: int) -> None:
        for idx, job in enumerate(jobs, start=first):
            log.info(f"\t#{idx} : job {job.job_id}, log {job.paths.stdout.parent}")

    def _wait(
        self,
        jobs,
        job_overrides: Sequence[Sequence[str]],
        first: int,
        sweep_dir: Path,
        passer: PassOn | None = None,
    ) -> list[JobReturn]:
        returns: list[JobReturn | None] = [None] * len(jobs)
        failures: list[str] = []
        user_facing = True
        shared = shared_overrides(job_overrides)
        while any(r is None for r in returns):
            if passer is not None:
                passer.pass_on()  # to a job's tasks that started after the signal
            for i, job in enumerate(jobs):
                if returns[i] is not None or not job.done():
                    continue
                overrides = list(job_overrides[i])
                stopped = passer is not None and i in passer.stopped
                if stopped and not job.paths.result_pickle.exists():  # not submitit's 15 s wait for a late result
                    returned = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=passer.stop)
                    returns[i] = returned
                    continue
                try:
                    returned = job.results()[0]
                except Exception as error:  # the job died or raised outside Hydra: no JobReturn came back
                    returned = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=error)
                if returned.status == JobStatus.FAILED and not stopped:
                    failures.append(failure_line(first + i, overrides, job, returned._return_value, shared))
                    user_facing = user_facing and is_user_facing(returned._return_value)
                    log.error(failures[-1])
                returns[i] = returned
            if any(r is None for r in returns):
                time.sleep(POLL_S)
        ended: list[JobReturn] = returns  # type: ignore[assignment]  (none is None any more)
        if passer is not None and passer.received is not None:
            name = signal.Signals(passer.received).name
            stopped = [
                job_name(first + i, job_overrides[i], shared)
                for i in sorted(passer.stopped)
                if ended[i].status == JobStatus.FAILED
            ]
            what = (
                f"passed it on to {len(stopped)} running job{'s' if len(stopped) > 1 else ''} and waited for them to "
                f"end: {', '.join(stopped)} (logs in {sweep_dir / '.submitit'})"
                if stopped
                else "no job was running"
            )
            stop_sweep(f"sweep stopped by {name}: {what}", 128 + passer.received, failures, len(jobs), sweep_dir)
        if failures:
            assert self.config is not None
            return end_with_failures(self.config, ended, failures, user_facing, sweep_dir)
        return ended


class SlurmLauncher(_Sweep, BaseSubmititLauncher):
    _EXECUTOR = "slurm"


class LocalLauncher(_Sweep, BaseSubmititLauncher):
    _EXECUTOR = "local"


def job_log_file(config: DictConfig) -> Path:
    """The log file of the job that ran with `config` (its file handler in `hydra.job_logging`: `<sweep>/<n>/<task
    name>.log`), else its run directory."""
    handlers = OmegaConf.select(config, "hydra.job_logging.handlers", default=None) or {}
    for handler in handlers.values():
        if OmegaConf.is_dict(handler) and handler.get("filename"):
            return Path(str(handler.filename))
    return Path(str(config.hydra.runtime.output_dir))


class SequentialLauncher(BasicLauncher):
    """Hydra's basic launcher (the jobs one after another, in the sweep's process), running every job whatever the
    others did and ending with one line per failed job; a job that exits (lnrepro's tasks exit 143 or 130 on SIGTERM
    or SIGINT) or a signal between jobs stops the sweep at once, with one line and the job's status."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None
        assert self.config is not None
        assert self.task_function is not None

        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        shared = shared_overrides(job_overrides)
        returns: list[JobReturn] = []
        failures: list[str] = []
        user_facing = True
        started, running = 0, None
        try:
            with signals_handled_by(_raise_interrupted):
                for i, overrides in enumerate(job_overrides):
                    idx = initial_job_idx + i
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                    sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                    with open_dict(sweep_config):
                        sweep_config.hydra.job.id = idx
                        sweep_config.hydra.job.num = idx
                    started, running = i + 1, i
                    returned = run_job(
                        hydra_context=self.hydra_context,
                        task_function=self.task_function,
                        config=sweep_config,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                    running = None
                    if returned.status == JobStatus.FAILED:
                        error = returned._return_value
                        line = sequential_failure_line(idx, overrides, error, job_log_file(sweep_config), shared)
                        failures.append(line)
                        user_facing = user_facing and is_user_facing(error)
                        # still the job's logging: into its log, with the traceback of an error that is not one line
                        trace = None if is_user_facing(error) else (type(error), error, error.__traceback__)
                        log.error(line, exc_info=trace)
                    returns.append(returned)
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        except (SystemExit, KeyboardInterrupt, SweepInterrupted) as stop:
            status = exit_status(stop)
            by = signal_name(status)  # 143: SIGTERM, also from a task that a signal stopped (it exits 128 + n)
            rest = not_started(range(initial_job_idx + started, initial_job_idx + len(job_overrides)))
            if running is None:
                line = f"sweep stopped by {by or f'exit status {status}'} between jobs; {rest}"
            else:
                job = f"job {job_name(initial_job_idx + running, job_overrides[running], shared)}"
                ended = f"was stopped by {by} (exit status {status})" if by else f"exited with status {status}"
                line = f"sweep stopped: {job} {ended}; {rest}"
            stop_sweep(line, status, failures, len(job_overrides), sweep_dir)
        if failures:
            return end_with_failures(self.config, returns, failures, user_facing, sweep_dir)
        return returns
