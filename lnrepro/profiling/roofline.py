"""The roofline's two peaks on this machine, measured once and cached: fp32 GFLOP/s at a thread count and sustained
memory bandwidth.

The roofline model (Williams, Waterman and Patterson, "Roofline", CACM 2009) bounds the time of a piece of work from
below by its arithmetic at the compute peak or its memory traffic at the bandwidth, whichever takes longer
(`roofline_bound_ms`); a layer's measured time against that bound says how much of what the hardware allows it gets.
Published peaks (cores x clock x FMA width) are never reached by real kernels, so both peaks are measured here with
the kernels the runtimes themselves call: a large square fp32 matrix product (`torch.mm`, the BLAS every runtime's
convolutions end in) and a tensor copy far larger than the last-level cache (bytes read + bytes written, STREAM's
"copy" count; the write-allocate read a CPU may add is not counted, as STREAM does not). Each is the best of a few
blocks timed by `torch.utils.benchmark` at the requested thread count: the best, not the median, because a peak is
what the machine can do, and another process on a shared machine only ever makes a block slower.

`machine_peaks` measures once per CPU model, thread count, torch version and benchmark size (about 2 s on this
project's 2-core EPYC) and keeps the result in `lnrepro.utils.files.cache_dir()/roofline.json`; a different CPU,
thread count or torch (whose BLAS sets the GEMM peak) measures afresh. A cache file that cannot be read or holds
nonsense is measured again and overwritten; one that cannot be written costs a warning, never the measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lnrepro import schema
from lnrepro.profiling.cpu import PRESSURE_THRESHOLD, cpu_features, cpu_pressure
from lnrepro.utils.files import atomic_write_text, cache_dir

log = logging.getLogger(__name__)

CACHE_FILE = "roofline.json"
CACHE_VERSION = 1
MIB = 2**20


@dataclass(frozen=True)
class PeakSettings:
    """The microbenchmark's sizes. `copy_mib` None: 128 MiB per buffer, or 4x the last-level cache where that is
    larger, so that the copy streams from memory (the 32 MiB L3 of this project's EPYC, the 96 MiB of a V-cache
    CCD); tests pass small sizes to run in milliseconds (they then measure caches, not memory)."""

    matmul_size: int = 2048  # n of the n x n fp32 product: 17 GFLOP, ~0.2 s on 2 EPYC cores
    copy_mib: int | None = None
    min_run_s: float = 0.4  # per benchmark: torch.utils.benchmark's blocked_autorange keeps timing blocks this long

    def resolved_copy_bytes(self) -> int:
        if self.copy_mib is not None:
            return int(self.copy_mib * MIB)
        return max(128 * MIB, 4 * (last_level_cache_bytes() or 0))


DEFAULT_SETTINGS = PeakSettings()


@dataclass(frozen=True)
class Peaks:
    gflops: float  # best fp32 GFLOP/s of the matrix product at `threads`
    gbps: float  # best GB/s (1e9 bytes) of the copy, bytes read + written
    cpu_model: str
    threads: int
    measured_at: str  # ISO 8601, UTC
    matmul_size: int
    copy_bytes: int  # one buffer; the copy moves twice this
    min_run_s: float
    torch_version: str
    cpu_pressure: float | None  # /proc/pressure/cpu some avg10 right after measuring: high means peaks read low

    @property
    def ridge_intensity(self) -> float:
        """FLOP per byte where the memory slope meets the compute ceiling: work below it is memory-bound."""
        return self.gflops / self.gbps

    def metrics(self) -> dict[str, float]:
        """The peaks under metrics.json's keys."""
        return {schema.ROOFLINE_GFLOPS: self.gflops, schema.ROOFLINE_GBPS: self.gbps}


def roofline_bound_ms(macs: float, bytes_moved: float, peaks: Peaks) -> float:
    """The least time (ms) the roofline allows work of `macs` multiply-adds (2 FLOPs each) moving `bytes_moved`
    bytes: the longer of its arithmetic at the compute peak and its traffic at the bandwidth."""
    compute_s = 2 * macs / (peaks.gflops * 1e9)
    memory_s = bytes_moved / (peaks.gbps * 1e9)
    return 1000 * max(compute_s, memory_s)


def last_level_cache_bytes() -> int | None:
    """The largest cache of CPU 0 (Linux sysfs), or None where it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = entry.read_text().strip().upper()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def _best_block_seconds(statement: str, tensors: dict[str, torch.Tensor], threads: int, min_run_s: float) -> float:
    # torch.utils.benchmark imports torch.utils.cpp_extension, which warns that no CUDA runtime is found on every
    # CPU-only machine with a CUDA build of torch: nothing to do with a CPU benchmark, so kept out of the user's log.
    cpp_extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_extension_log.level
    cpp_extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        cpp_extension_log.setLevel(level)
    timer = Timer(statement, globals={"torch": torch, **tensors}, num_threads=threads)
    measurement = timer.blocked_autorange(min_run_time=min_run_s)
    return min(measurement.times)  # seconds per call, the fastest block


def measure_peaks(threads: int, settings: PeakSettings = DEFAULT_SETTINGS) -> Peaks:
    """Measure both peaks now at `threads` torch threads (no cache)."""
    n = settings.matmul_size
    a, b, c = torch.ones(n, n), torch.ones(n, n), torch.empty(n, n)
    gemm_s = _best_block_seconds("torch.mm(a, b, out=c)", {"a": a, "b": b, "c": c}, threads, settings.min_run_s)
    del a, b, c
    copy_bytes = settings.resolved_copy_bytes()
    source = torch.ones(copy_bytes // 4)  # written, so every page is mapped before timing
    target = torch.zeros_like(source)
    copy_s = _best_block_seconds(
        "target.copy_(source)", {"source": source, "target": target}, threads, settings.min_run_s
    )
    return Peaks(
        gflops=2 * n**3 / gemm_s / 1e9,
        gbps=2 * source.nbytes / copy_s / 1e9,
        cpu_model=cpu_features()["model"],
        threads=threads,
        measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        matmul_size=n,
        copy_bytes=source.nbytes,
        min_run_s=settings.min_run_s,
        torch_version=torch.__version__,
        cpu_pressure=cpu_pressure(),
    )


def cache_key(cpu_model: str, threads: int, settings: PeakSettings = DEFAULT_SETTINGS) -> str:
    # The benchmark's sizes are part of the key so that a test's tiny measurement never stands for the real peaks.
    return (
        f"{cpu_model} | threads={threads} | torch={torch.__version__} | matmul={settings.matmul_size} "
        f"| copy={settings.resolved_copy_bytes()}"
    )


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; {} (with one warning) for a file that is not the cache this module writes."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("roofline cache %s unreadable (%s): measuring again", path, error)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        log.warning("roofline cache %s is not a version-%d cache: measuring again", path, CACHE_VERSION)
        return {}
    return data["entries"]


def _peaks_from(entry: Any) -> Peaks | None:
    """An entry as Peaks, or None where it is not one (missing or extra fields, a peak that is not a positive
    finite number)."""
    names = {field.name for field in dataclasses.fields(Peaks)}
    if not isinstance(entry, dict) or set(entry) != names:
        return None
    for name in ("gflops", "gbps"):
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            return None
    try:
        return Peaks(**entry)
    except TypeError:
        return None


@contextlib.contextmanager
def _measuring_lock(directory: Path) -> Iterator[None]:
    # Jobs of a parallel sweep start together: one measures while the others wait and then read its entry, rather
    # than all measuring at once on the same cores (each would read the others' load as a lower peak).
    try:
        directory.mkdir(parents=True, exist_ok=True)
        file = open(directory / f".{CACHE_FILE}.lock", "a+b")
    except OSError:
        yield
        return
    with file:
        with contextlib.suppress(OSError):
            fcntl.flock(file, fcntl.LOCK_EX)
        yield


def machine_peaks(
    threads: int | None = None, refresh: bool = False, settings: PeakSettings = DEFAULT_SETTINGS
) -> Peaks:
    """The roofline's peaks at `threads` torch threads (None: torch's current count), from the cache when this CPU
    model, thread count, torch version and benchmark size were measured before, else measured now (a few seconds)
    and cached. `refresh`: measure again and replace the cached entry."""
    threads = threads or torch.get_num_threads()
    key = cache_key(cpu_features()["model"], threads, settings)
    path = cache_dir() / CACHE_FILE
    with _measuring_lock(path.parent):  # held while reading too: another process may be measuring this entry
        entries = _read_cache(path)
        if not refresh and (cached := _peaks_from(entries.get(key))) is not None:
            return cached
        log.info("measuring the roofline's peaks at %d thread(s) (cached in %s)", threads, path)
        peaks = measure_peaks(threads, settings)
        if peaks.cpu_pressure is not None and peaks.cpu_pressure > PRESSURE_THRESHOLD:
            log.warning(
                "the roofline's peaks were measured while other processes wanted the CPU (pressure %.0f%%): they may "
                "read low; delete %s to measure them again on a quiet machine",
                peaks.cpu_pressure,
                path,
            )
        entries[key] = dataclasses.asdict(peaks)
        try:
            atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=2) + "\n")
        except OSError as error:
            log.warning("roofline peaks not cached (%s): they will be measured again next time", error)
    return peaks
