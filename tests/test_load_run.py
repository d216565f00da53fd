"""lnrepro.load_run: a run rebuilt from its checkpoint with the package's own configs; nothing the file names runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lnrepro
from lnrepro.errors import UserInputError

CALLS: list = []


def record_call(*args, **kwargs):
    """A callable a hostile checkpoint may name: the tests check it is never called."""
    CALLS.append((args, kwargs))
    return torch.nn.Linear(1, 1)


@pytest.fixture
def trained_checkpoint(tiny_run) -> Path:
    return tiny_run.last_checkpoint


def test_load_run_gives_the_trained_network_in_eval_mode(trained_checkpoint):
    net, config = lnrepro.load_run(trained_checkpoint)
    assert not net.training
    assert config.model.name == "ghostnet" and config.model.width == 0.25 and config.data.name == "synthetic"
    stored = torch.load(trained_checkpoint, weights_only=True)["state_dict"]
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, stored[f"net.{name}"])
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def tampered(checkpoint: Path, tmp_path: Path, change) -> Path:
    content = torch.load(checkpoint, weights_only=True)
    change(content["hyper_parameters"])
    path = tmp_path / "tampered.ckpt"
    torch.save(content, path)
    return path


@pytest.mark.parametrize(
    "section, change, message",
    [
        ("model", lambda m: m.update(_target_="tests.test_load_run.record_call"), "not lnrepro's"),
        ("data", lambda d: d.update(_target_="tests.test_load_run.record_call"), "not lnrepro's"),
        ("model", lambda m: m.update(name="os.system"), "not an lnrepro family"),
        ("model", lambda m: m.update(activation={"_target_": "tests.test_load_run.record_call"}), "does not have"),
        ("model", lambda m: m.update(width={"_target_": "tests.test_load_run.record_call"}), "only numbers"),
        ("data", lambda d: d.update(name="stolen"), "not one of lnrepro's data configs"),
        # an interpolation would be resolved by OmegaConf: oc.create builds a `_target_` node instantiate would call
        (
            "data",
            lambda d: d.update(batch_size="${oc.create:{_target_: tests.test_load_run.record_call}}"),
            "not a plain",
        ),
        ("model", lambda m: m.update(dropout="${oc.env:HOME}"), "not a plain"),
    ],
)
def test_a_checkpoint_naming_foreign_code_or_options_is_refused_and_nothing_is_called(
    trained_checkpoint, tmp_path, section, change, message
):
    path = tampered(trained_checkpoint, tmp_path, lambda stored: change(stored[section]))
    CALLS.clear()
    with pytest.raises(UserInputError, match=message):
        lnrepro.load_run(path)
    assert CALLS == []


def test_eval_refuses_a_foreign_target_in_one_line(trained_checkpoint, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tampered(trained_checkpoint, tmp_path, lambda s: s["model"].update(_target_="builtins.exec"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'logs'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: checkpoint")
    assert "Traceback" not in result.stderr
