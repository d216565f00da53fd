"""The one reader of weight files from users: Lightning checkpoints (`ckpt_path=`, `lnrepro.load_run`) and
pretrained state_dicts (`model.pretrained=`), with one policy and one set of messages.

A file from a user is data: it is read with `torch.load(weights_only=True)` (tensors and plain containers, nothing
in it is called) unless the user said they trust its author. Whatever is wrong with it (missing, unreadable,
holding code, not a checkpoint or state_dict, not fitting the network) ends in one `UserInputError` line that
names the file and the fix.

Imports only torch, the standard library and `lnrepro.errors`: the model zoo reads pretrained files through it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError


@dataclass(frozen=True)
class FileRole:
    """What a weight file is to the user, which each message about it says."""

    noun: str  # how messages name the file
    remedy: str  # where a good file comes from
    trust_hint: str  # what to do with a file that holds more than tensors
    misfit_hint: str  # what to do when its weights do not fit the network


CHECKPOINT = FileRole(
    "checkpoint",
    remedy="pass a checkpoint lnrepro-train wrote, e.g. ckpt_path=<run dir>/checkpoints/last.ckpt",
    trust_hint="if you trust its author, load it anyway with trust_checkpoint=true",
    misfit_hint="use the model, width and options it was trained with",
)
PRETRAINED = FileRole(
    "pretrained file",
    remedy="give a state_dict saved with torch.save(model.state_dict(), path)",
    trust_hint="if you trust its author, load it in Python and save only its tensors: "
    "torch.save(model.state_dict(), path)",
    misfit_hint="check that the file was saved from the same network, width and options",
)

# Where training code keeps the network's weights inside a checkpoint: the top-level key of the weights, and the
# attribute of a LightningModule holding the network (lnrepro's is `net`).
WEIGHTS_KEYS = ("state_dict", "model", "model_state_dict")
NETWORK_PREFIXES = ("net.", "model.")
# Wrappers that prefix every key of the network they wrap: DataParallel/DDP and torch.compile, possibly nested.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _named(role: FileRole, path: str | Path) -> str:
    return f"{role.noun} {str(path)!r}"


def read_file(path: str | Path, role: FileRole, trusted: bool = False, mmap: bool = False) -> Any:
    """The one `torch.load` of a user's file: tensors and plain containers only unless `trusted`; on the CPU;
    `mmap` leaves the tensors on disk (for reading a few plain values of a large file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"{_named(role, path)} does not exist; {role.remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)
    except pickle.UnpicklingError as error:
        named = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if not named:  # not a pickle at all: a corrupt file, reported below like any other
            raise _unreadable(path, role, error) from error
        raise UserInputError(
            f"{_named(role, path)} is refused: it holds more than tensors and plain containers, so unpickling it "
            f"could run code ({named[0][:160]}); {role.trust_hint}"
        ) from error
    except Exception as error:
        raise _unreadable(path, role, error) from error


def _unreadable(path: Path, role: FileRole, error: Exception) -> UserInputError:
    first_line = (str(error).splitlines() or [""])[0][:200]
    return UserInputError(
        f"{_named(role, path)} cannot be read ({type(error).__name__}: {first_line}); it is corrupt, truncated or "
        f"not a PyTorch file: {role.remedy}"
    )


def load_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as tensors and plain containers (nothing in the file is called); `trusted=True`
    unpickles it fully, for a file whose author you trust."""
    checkpoint = read_file(path, CHECKPOINT, trusted=trusted)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserInputError(
            f"{_named(CHECKPOINT, path)} is not a Lightning checkpoint (no 'state_dict'); {CHECKPOINT.remedy}"
        )
    return checkpoint


def training_position(path: str | Path) -> tuple[int, int] | None:
    """(epoch, global step) of a Lightning checkpoint, read without loading its tensors; None when the file does
    not say (the fit that reads it reports a damaged file properly)."""
    try:
        checkpoint = read_file(path, CHECKPOINT, mmap=True)
        return int(checkpoint["epoch"]), int(checkpoint["global_step"])
    except (UserInputError, KeyError, TypeError, ValueError):
        return None


def network_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's part of a state_dict, named as the network names it: a LightningModule's weights under
    `net.` (or `model.`) without the other modules beside it (a compiled copy, a loss with weights), and without
    the prefixes of DataParallel and torch.compile wrappers."""
    weights = dict(state)
    for prefix in NETWORK_PREFIXES:
        if any(key.startswith(prefix) for key in weights):
            weights = {key.removeprefix(prefix): value for key, value in weights.items() if key.startswith(prefix)}
            break
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in weights):
                weights = {key.removeprefix(prefix): value for key, value in weights.items()}
                stripped = True
    return weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights in a file: a plain state_dict, or one inside a training or Lightning checkpoint
    (`network_weights`). Read as data only: a weights file needs nothing else."""
    content = read_file(path, PRETRAINED)
    if isinstance(content, Mapping):
        content = next((content[key] for key in WEIGHTS_KEYS if isinstance(content.get(key), Mapping)), content)
    if (
        not isinstance(content, Mapping)
        or not content
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items())
    ):
        raise UserInputError(
            f"{_named(PRETRAINED, path)} is not a state_dict (a mapping of parameter names to tensors); "
            f"{PRETRAINED.remedy}"
        )
    return network_weights(content)


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(size) for size in tensor.shape) + ")"


def check_fits(
    stored: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: str | Path,
    role: FileRole,
    model: str,
    *,
    may_lack: Callable[[str], bool] = lambda key: False,
    file_keys: Mapping[str, str] | None = None,
) -> None:
    """Refuse `stored` unless it holds a tensor of the right shape for every key of `expected` (a state_dict)
    and nothing else; the message names the first key that differs and both shapes.

    `may_lack(key)`: keys of `expected` the file may leave out. `file_keys`: the file's own name of each stored key
    that was renamed on reading, so that the message names both.
    """
    file_keys = file_keys or {}

    def key_of_file(key: str) -> str:
        original = file_keys.get(key, key)
        return repr(key) if original == key else f"{original!r} (the model's {key!r})"

    def refuse(problem: str) -> None:
        raise UserInputError(f"{_named(role, path)} does not fit {model}: {problem}; {role.misfit_hint}")

    for key, tensor in stored.items():
        if key not in expected:
            original = file_keys.get(key, key)
            refuse(f"its key {original!r} has no place in it" + (f" (read as {key!r})" if original != key else ""))
        if tuple(tensor.shape) != tuple(expected[key].shape):
            refuse(f"key {key_of_file(key)} has shape {_shape(tensor)}, the model needs {_shape(expected[key])}")
    for key in expected:
        if key not in stored and not may_lack(key):
            refuse(f"it has no value for {key!r}")


def check_matches(checkpoint: Mapping[str, Any], module: nn.Module, path: str | Path) -> None:
    """Raise if the checkpoint's weights (a Lightning checkpoint or a plain state_dict) do not fit `module`
    (another model, width, class count...)."""
    stored = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    check_fits(stored, module.state_dict(), path, CHECKPOINT, "the configured model")
