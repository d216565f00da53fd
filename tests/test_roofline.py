"""The roofline's peaks: measured by a real (tiny) microbenchmark, cached per CPU and thread count, re-measured when
the cache is unusable; the bound they give."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest

from lnrepro import schema
from lnrepro.profiling import roofline
from lnrepro.profiling.cpu import cpu_features
from lnrepro.profiling.roofline import Peaks, PeakSettings, machine_peaks, roofline_bound_ms
from lnrepro.utils.files import cache_dir

# Milliseconds instead of the default's seconds: these sizes fit in caches, so they say nothing about memory, only
# that the benchmark runs and yields figures in a plausible range.
TINY = PeakSettings(matmul_size=128, copy_mib=2, min_run_s=0.02)


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path))
    return tmp_path / "cache" / roofline.CACHE_FILE


def fake_peaks(threads: int, settings: PeakSettings = TINY, gflops: float = 50.0) -> Peaks:
    return Peaks(
        gflops=gflops,
        gbps=10.0,
        cpu_model=cpu_features()["model"],
        threads=threads,
        measured_at="2026-12-03T00:00:00+00:00",
        matmul_size=settings.matmul_size,
        copy_bytes=settings.resolved_copy_bytes(),
        min_run_s=settings.min_run_s,
        torch_version="x",
        cpu_pressure=None,
    )


@pytest.fixture
def measurements(monkeypatch) -> list[int]:
    """Replaces the microbenchmark with a recorder of the thread counts it was asked to measure at."""
    calls: list[int] = []

    def measure(threads, settings):
        calls.append(threads)
        return fake_peaks(threads, settings, gflops=50.0 + len(calls))

    monkeypatch.setattr(roofline, "measure_peaks", measure)
    return calls


def test_the_microbenchmark_measures_plausible_peaks_and_caches_them(cache_root):
    peaks = machine_peaks(threads=1, settings=TINY)
    assert peaks.gflops > 1 and peaks.gbps > 0.5
    assert peaks.gflops < 1e5 and peaks.gbps < 1e4  # no CPU core does 100 TFLOP/s or 10 TB/s: a unit slip would
    assert peaks.cpu_model == cpu_features()["model"] and peaks.threads == 1
    assert (peaks.matmul_size, peaks.copy_bytes, peaks.min_run_s) == (128, 2 * 2**20, 0.02)
    assert datetime.datetime.fromisoformat(peaks.measured_at).tzinfo is not None
    entries = json.loads(cache_root.read_text())["entries"]
    assert list(entries.values()) == [dataclasses.asdict(peaks)]
    assert peaks.metrics() == {"roofline/gflops": peaks.gflops, "roofline/gbps": peaks.gbps}
    assert not schema.undeclared(peaks.metrics())


def test_a_second_call_reads_the_cache_and_refresh_measures_again(cache_root, measurements):
    first = machine_peaks(threads=2, settings=TINY)
    assert machine_peaks(threads=2, settings=TINY) == first
    assert measurements == [2]
    refreshed = machine_peaks(threads=2, refresh=True, settings=TINY)
    assert measurements == [2, 2] and refreshed.gflops != first.gflops
    assert machine_peaks(threads=2, settings=TINY) == refreshed  # the refreshed entry replaced the old one


def test_each_thread_count_has_its_own_entry(cache_root, measurements):
    one, two = machine_peaks(threads=1, settings=TINY), machine_peaks(threads=2, settings=TINY)
    assert measurements == [1, 2] and one != two
    assert machine_peaks(threads=1, settings=TINY) == one and machine_peaks(threads=2, settings=TINY) == two
    assert measurements == [1, 2]
    entries = json.loads(cache_root.read_text())["entries"]
    assert sorted(entry["threads"] for entry in entries.values()) == [1, 2]


def test_another_cpu_model_or_benchmark_size_measures_afresh(cache_root, measurements, monkeypatch):
    machine_peaks(threads=1, settings=TINY)
    machine_peaks(threads=1, settings=dataclasses.replace(TINY, matmul_size=64))
    monkeypatch.setattr(roofline, "cpu_features", lambda: {"model": "Another CPU"})
    machine_peaks(threads=1, settings=TINY)
    assert measurements == [1, 1, 1]
    assert len(json.loads(cache_root.read_text())["entries"]) == 3


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2]",
        '{"version": 1, "entries": []}',
        '{"version": 99, "entries": {}}',
        "bad entry",  # replaced below by a well-formed file whose entry holds a negative peak
        "missing field",  # ... and one whose entry lacks a field
    ],
)
def test_a_corrupt_cache_is_measured_again_and_overwritten(cache_root, measurements, content):
    key = roofline.cache_key(cpu_features()["model"], 1, TINY)
    good = dataclasses.asdict(fake_peaks(1))
    if content == "bad entry":
        content = json.dumps({"version": 1, "entries": {key: {**good, "gflops": -3.0}}})
    elif content == "missing field":
        content = json.dumps({"version": 1, "entries": {key: {k: v for k, v in good.items() if k != "gbps"}}})
    cache_root.parent.mkdir(parents=True)
    cache_root.write_text(content)
    peaks = machine_peaks(threads=1, settings=TINY)
    assert measurements == [1]
    assert json.loads(cache_root.read_text())["entries"][key] == dataclasses.asdict(peaks)
    assert machine_peaks(threads=1, settings=TINY) == peaks and measurements == [1]


def test_an_unwritable_cache_costs_a_warning_not_the_peaks(tmp_path, monkeypatch, measurements, caplog):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path))
    peaks = machine_peaks(threads=1, settings=TINY)
    assert peaks.gflops > 0 and measurements == [1]
    assert "not cached" in caplog.text


def test_cache_dir_follows_lnrepro_root_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("LNREPRO_ROOT", str(tmp_path / "root"))
    assert cache_dir() == tmp_path / "root" / "cache"
    monkeypatch.delenv("LNREPRO_ROOT")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lnrepro"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid under the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lnrepro"


def test_the_bound_is_the_slower_of_arithmetic_and_traffic():
    peaks = fake_peaks(1)  # 50 GFLOP/s, 10 GB/s: the ridge at 5 FLOP/byte
    assert peaks.ridge_intensity == 5.0
    # 1e9 multiply-adds = 2 GFLOP: 40 ms of arithmetic; 1 MB: 0.1 ms of traffic
    assert roofline_bound_ms(1e9, 1e6, peaks) == pytest.approx(40.0)
    # 1000 multiply-adds, 100 MB: 10 ms of traffic
    assert roofline_bound_ms(1e3, 1e8, peaks) == pytest.approx(10.0)
