"""The installed package: a wheel holds the configs and published tables, its console scripts work from any
directory and write under that directory's logs/, a user's own config folder joins through hydra.searchpath, and the
model zoo needs nothing but torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY_TRAINING = [
    "data=synthetic",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "profile.calibration_images=16",  # int8 calibrates on at most the 32 training images
    "data.batch_size=16",
    "model.width=0.25",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "~callbacks.rich_progress_bar",
    "print_config=false",
    "profile.runs=2",
    "profile.throughput_runs=1",
    "profile.warmup=0",
    "profile.batch_size=4",
]


def clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "LNREPRO_ROOT")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    return env


def copy_sources(out: Path) -> Path:
    """What a build reads, copied to `out`/source (an in-tree build would leave build/ and *.egg-info in the
    checkout)."""
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # conf: shipped as lnrepro.conf; hydra_plugins: the hydra/launcher=slurm|local launchers
    for package in ("lnrepro", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def build_wheel(out: Path) -> Path:
    source = copy_sources(out)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-build-isolation",
            "--no-deps",
            "--wheel-dir",
            str(out / "dist"),
            str(source),
        ],
        check=True,
        env=clean_env(),
        timeout=300,
    )
    (wheel,) = (out / "dist").glob("lnrepro-*.whl")
    return wheel


def fresh_venv(where: Path) -> Path:
    """A virtual environment without pip that sees the project environment's packages through a plain .pth line
    (its own .pth files, the checkout's editable lnrepro among them, are not processed). Returns its python."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "project_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (--no-deps). Returns its bin/ directory."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work)
    python = fresh_venv(work)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True,
        env=clean_env(),
        timeout=300,
    )  # fmt: skip
    return python.parent


def test_wheel_ships_every_config_and_published_table(tmp_path):
    shipped_yaml = {f"lnrepro/{p.relative_to(ROOT)}" for p in (ROOT / "conf").rglob("*.yaml")}
    shipped_csv = {str(p.relative_to(ROOT)) for p in (ROOT / "lnrepro" / "reference").glob("*.csv")}
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
    assert shipped_yaml and shipped_yaml <= names
    assert {"lnrepro/reference/ghost_vs_dwpw.csv", "lnrepro/reference/imagenet_published.csv"} <= shipped_csv
    assert shipped_csv <= names
    assert "lnrepro/conf/__init__.py" in names
    assert "hydra_plugins/lnrepro_launchers/launchers.py" in names


def test_console_scripts_from_the_wheel_work_from_any_directory(installed, tmp_path):
    bin_dir = installed
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import lnrepro; print(lnrepro.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(bin_dir.parent)), f"lnrepro imported from {where}, not the new environment"

    # The user's own model config beside the package's, used as model=mine.
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mine.yaml").write_text(
        "defaults:\n  - shufflenet_v2\n  - _self_\nwidth: 0.25\ndropout: 0.1\n"
    )
    trained = subprocess.run(
        [str(bin_dir / "lnrepro-train"), "hydra.searchpath=[file://myconf]", "model=mine", *TINY_TRAINING],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["model"] == "shufflenet_v2" and metrics["width"] == 0.25 and metrics["schema_version"] >= 1
    assert "test/acc" in metrics and metrics["latency/eager_ms"] > 0 and "test/acc_onnxruntime" in metrics

    checkpoint = metrics_file.parent / "checkpoints" / "last.ckpt"
    evaluated = subprocess.run(
        [str(bin_dir / "lnrepro-eval"), f"ckpt_path={checkpoint}", "trainer.enable_progress_bar=false"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_file,) = (tmp_path / "logs" / "eval" / "runs").glob("*/metrics.json")
    assert json.loads(eval_file.read_text())["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert "test/acc" in evaluated.stdout  # the printed table

    profiled = subprocess.run(
        [
            str(bin_dir / "lnrepro-profile"),
            "model=ghostnet",
            "model.width=0.25",
            "data.image_size=16",
            "profile.runs=2",
            "profile.throughput_runs=1",
            "profile.warmup=0",
            "profile.batch_size=2",
            "profile.train=false",
            "profile.memory=false",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert profiled.returncode == 0, profiled.stderr[-3000:]
    assert list((tmp_path / "logs" / "profile" / "runs").glob("*/metrics.json"))

    # The published tables ship with the package: a name is enough.
    reported = subprocess.run(
        [str(bin_dir / "lnrepro-report"), "logs", "--reference", "imagenet", "--no-plots", "--out", "report"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "imagenet_published.csv" in reported.stdout and (tmp_path / "report" / "report.md").is_file()


def test_every_package_of_the_tree_is_listed_for_the_build():
    """pyproject.toml lists the packages (conf/ is mapped to lnrepro.conf, which discovery cannot do): a package
    added to lnrepro/ and not listed would be missing from every install."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("lnrepro", "hydra_plugins")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk | {"lnrepro.conf", "hydra_plugins"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"lnrepro.conf": "conf"}


def test_an_editable_install_composes_the_top_level_conf_folder(tmp_path):
    """`pip install -e .` (what `make` does): lnrepro.conf is the checkout's conf/ itself, so an edited config
    takes effect without reinstalling, and the console script composes it from any directory."""
    source = copy_sources(tmp_path)
    python = fresh_venv(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "-e", str(source)],
        check=True,
        env=clean_env(),
        timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "from importlib.resources import files; print(files('lnrepro.conf') / 'train.yaml')"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=elsewhere,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()) == source / "conf" / "train.yaml"

    model_yaml = source / "conf" / "model" / "shufflenet_v2.yaml"
    model_yaml.write_text(model_yaml.read_text().replace("width: 1.0", "width: 0.625"))
    composed = subprocess.run(
        [str(python.parent / "lnrepro-train"), "--cfg", "job", "model=shufflenet_v2"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=elsewhere,
        timeout=300,
    )
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "width: 0.625" in composed.stdout


def test_the_model_zoo_needs_only_torch():
    """As timm.create_model: building a network imports no training framework."""
    heavy = ["lightning", "hydra", "omegaconf", "torchmetrics", "timm", "wandb", "onnx", "onnxruntime", "matplotlib"]
    code = (
        "import sys; from lnrepro.models import build_model, list_models; "
        "build_model('ghostnet', num_classes=10, stem='cifar'); assert list_models(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_full_pip_install_into_an_empty_environment(tmp_path):
    """`pip install <wheel>` with its dependencies into an empty environment (minutes, gigabytes)."""
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        env=clean_env(),
        timeout=1800,
    )
    result = subprocess.run(
        [str(venv / "bin" / "lnrepro-train"), *TINY_TRAINING],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "logs" / "train" / "runs").glob("*/metrics.json"))
