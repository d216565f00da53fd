"""Checks on a checkpoint file before Lightning touches it, so problems end in one clear message."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError


def _unreadable(path: Path, error: Exception) -> UserInputError:
    return UserInputError(
        f"checkpoint {path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
        f"it is corrupt or truncated: use another one, e.g. the run's checkpoints/last.ckpt"
    )


def load_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """The checkpoint as tensors and plain containers (`torch.load(weights_only=True)`: nothing in the file is
    called); `trusted=True` unpickles it fully, for a file whose author you trust."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        named = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if not named:  # not a pickle at all: a corrupt file, reported below like any other
            raise _unreadable(path, error) from error
        raise UserInputError(
            f"checkpoint {path} is refused: it holds more than tensors and plain containers, so unpickling it could "
            f"run code ({named[0][:160]}); if you trust its author, load it anyway with trust_checkpoint=true"
        ) from error
    except Exception as error:
        raise _unreadable(path, error) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserInputError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by train.py"
        )
    return checkpoint


def check_matches(checkpoint: dict[str, Any], module: nn.Module, path: str | Path) -> None:
    """Raise if the checkpoint's weights (a Lightning checkpoint or a plain state_dict) do not fit `module`
    (another model, width, class count...)."""
    stored = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    for name, tensor in module.state_dict().items():
        if name not in stored:
            raise UserInputError(
                f"checkpoint {path} does not match the configured model: it has no '{name}'. "
                f"Use the model, width and options it was trained with."
            )
        if tuple(stored[name].shape) != tuple(tensor.shape):
            raise UserInputError(
                f"checkpoint {path} does not match the configured model: '{name}' is {tuple(stored[name].shape)} "
                f"in the checkpoint but {tuple(tensor.shape)} in the model. "
                f"Use the model, width and options it was trained with."
            )
    extra = sorted(set(stored) - set(module.state_dict()))
    if extra:
        raise UserInputError(
            f"checkpoint {path} does not match the configured model: it has weights the model lacks ('{extra[0]}'). "
            f"Use the model, width and options it was trained with."
        )
