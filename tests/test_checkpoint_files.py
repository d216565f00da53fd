"""lnrepro.utils.checkpoint, the one reader of weight files from users: data only unless trusted, one line for
whatever is wrong with a file."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.utils.checkpoint import (
    check_matches,
    load_checkpoint,
    network_weights,
    read_state_dict,
    training_position,
)

CALLS: list = []


class RunsWhenUnpickled:
    """What a crafted file could hold: unpickling it calls `record_call`."""

    def __reduce__(self):
        return (record_call, ("unpickled",))


def record_call(*args):
    CALLS.append(args)
    return {"state_dict": {}, "epoch": 0}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_holding_code_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "crafted.ckpt"
    with open(path, "wb") as file:
        torch.save(RunsWhenUnpickled(), file, pickle_module=pickle)
    CALLS.clear()
    with pytest.raises(UserInputError) as error:
        load_checkpoint(path)
    assert CALLS == []
    message = one_line(error)
    assert message.startswith(f"checkpoint '{path}' is refused") and "could run code" in message
    assert message.endswith("load it anyway with trust_checkpoint=true")
    assert load_checkpoint(path, trusted=True) == {"state_dict": {}, "epoch": 0}
    assert CALLS == [("unpickled",)]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist; pass a checkpoint lnrepro-train wrote"),
        (b"\x80\x04 truncated", "cannot be read (UnpicklingError"),
        (b"plain text", "cannot be read"),
        ({"epoch": 3}, "is not a Lightning checkpoint (no 'state_dict')"),
    ],
    ids=["missing", "corrupt", "not torch", "no state_dict"],
)
def test_what_is_wrong_with_a_checkpoint_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "last.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserInputError) as error:
        load_checkpoint(path)
    assert one_line(error).startswith(f"checkpoint '{path}' ") and message in str(error.value)


def test_check_matches_names_the_key_and_both_shapes(tmp_path):
    module = nn.Sequential(nn.Linear(4, 3))
    check_matches({"state_dict": module.state_dict()}, module, tmp_path / "a.ckpt")
    wider = nn.Sequential(nn.Linear(4, 5)).state_dict()
    with pytest.raises(UserInputError) as error:
        check_matches({"state_dict": wider}, module, tmp_path / "a.ckpt")
    assert "does not fit the configured model: key '0.weight' has shape (5, 4), the model needs (3, 4)" in one_line(
        error
    )
    with pytest.raises(UserInputError, match="its key 'extra' has no place in it"):
        check_matches({**module.state_dict(), "extra": torch.zeros(1)}, module, tmp_path / "a.ckpt")
    with pytest.raises(UserInputError, match="it has no value for '0.bias'"):
        check_matches({"0.weight": module[0].weight}, module, tmp_path / "a.ckpt")


def test_the_network_is_taken_out_of_training_checkpoints_and_wrappers(tmp_path):
    weights = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}
    lightning = {f"net.{k}": v for k, v in weights.items()} | {"loss.weight": torch.ones(1)}
    assert network_weights(lightning).keys() == weights.keys()
    compiled_in_ddp = {f"module._orig_mod.{k}": v for k, v in weights.items()}
    assert network_weights(compiled_in_ddp).keys() == weights.keys()
    torch.save({"model_state_dict": compiled_in_ddp, "optimizer": {}}, tmp_path / "train.pt")
    assert read_state_dict(tmp_path / "train.pt").keys() == weights.keys()


def test_training_position_reads_epoch_and_step_or_says_nothing(tmp_path):
    torch.save({"epoch": 2, "global_step": 40, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "last.ckpt")
    assert training_position(tmp_path / "last.ckpt") == (2, 40)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert training_position(tmp_path / "bad.ckpt") is None
    assert training_position(tmp_path / "missing.ckpt") is None
    torch.save({"state_dict": {}}, tmp_path / "no_position.ckpt")
    assert training_position(tmp_path / "no_position.ckpt") is None
