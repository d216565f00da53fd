"""Published weights into this project's networks: `build_model(..., pretrained=PATH)`.

A pretrained file is a state_dict saved from the torchvision or timm implementation of the same network (its
"twin"), or from this project (plain, or inside a Lightning checkpoint). `lnrepro.utils.checkpoint` reads it, as
it reads every weight file a user gives.

Names. A file whose keys are all the model's own loads name for name: files saved from this project, and
torchvision's files of the families that use torchvision's names (mobilenet_v2, mobilenet_v3_*, shufflenet_v2).
Any other file is renamed through the family's table of module names, declared in the family's file as
`twin_module_names()` ({module path in the twin's files: module path here}, as timm's `checkpoint_filter_fn`):
`<module>.<tensor>` becomes `<the table's name for module>.<tensor>`, and a module the table does not list keeps
its name. Then every tensor must have its place in the model, with the model's shape: a file of another network or
width fails at its first key that has no place or the wrong shape, which the message names.

Shapes. A 1x1 conv weight (O, I, 1, 1) and a linear weight (O, I) are the same numbers: timm's MobileNet V3 head
is a 1x1 conv where ours, like torchvision's, is a linear layer, so such a tensor is reshaped to the model's.

Classifier. If the file's classifier has another number of classes than the model, the classifier keeps its fresh
initialisation (logged) and everything else is loaded: this is how to fine-tune from ImageNet weights.

Before loading, a model may adapt to the file (`adapt_to_pretrained(keys)`, with the file's own keys): MobileNet V3
switches its BN eps to timm's 1e-5 for a timm file (torchvision uses 1e-3), which the outputs depend on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path

import torch
from torch import nn

from lnrepro.utils.checkpoint import PRETRAINED, check_fits, read_state_dict

log = logging.getLogger(__name__)

# Tensors that hold no learned value: a file may lack them (torchvision's older files do).
BOOKKEEPING_SUFFIX = "num_batches_tracked"


def load_pretrained(model: nn.Module, path: str | Path, *, model_name: str) -> None:
    """Load the state_dict file at `path` into `model` (the module docstring says how its names are read)."""
    path = Path(path).expanduser()
    source = read_state_dict(path)
    if hasattr(model, "adapt_to_pretrained"):
        model.adapt_to_pretrained(list(source))
    own = model.state_dict()

    file_keys: dict[str, str] = {}  # the model's name -> the file's, for every renamed key
    if not set(source) <= set(own):
        names = model.twin_module_names() if hasattr(model, "twin_module_names") else {}
        renamed = {}
        for key, tensor in source.items():  # in the file's order, so that a misfit names its first key
            module, _, tensor_name = key.rpartition(".")
            own_key = f"{names[module]}.{tensor_name}" if module in names else key
            if own_key != key:
                file_keys[own_key] = key
            renamed[own_key] = tensor
        source = renamed

    classifier = model.classifier_name + "."
    other_classes = [
        key
        for key, tensor in source.items()
        if key.startswith(classifier) and key in own and _only_class_count_differs(tensor.shape, own[key].shape)
    ]
    file_classes = source[other_classes[0]].shape[0] if other_classes else None
    for key in other_classes:
        del source[key]
    for key, tensor in source.items():
        if key in own and _same_numbers(tensor.shape, own[key].shape):
            source[key] = tensor.reshape(own[key].shape)

    check_fits(
        source,
        own,
        path,
        PRETRAINED,
        model_name,
        may_lack=lambda key: key.endswith(BOOKKEEPING_SUFFIX) or (bool(other_classes) and key.startswith(classifier)),
        file_keys=file_keys,
    )
    model.load_state_dict(source, strict=False)  # check_fits allowed only what may be missing
    if other_classes:
        log.info(
            "%s: pretrained classifier has %d classes, the model %d: classifier re-initialised, "
            "all other weights loaded from %s",
            model_name,
            file_classes,
            own[other_classes[0]].shape[0],
            path,
        )
    else:
        log.info("%s: loaded pretrained weights from %s", model_name, path)


def _only_class_count_differs(stored: torch.Size, expected: torch.Size) -> bool:
    return len(stored) == len(expected) and stored[0] != expected[0] and stored[1:] == expected[1:]


def _same_numbers(stored: torch.Size, expected: torch.Size) -> bool:
    """A 1x1 conv weight (O, I, 1, 1) and a linear weight (O, I), either way round."""
    ranks = sorted((len(stored), len(expected)))
    return ranks == [2, 4] and stored[:2] == expected[:2] and stored.numel() == expected.numel()


# --------------------------------------------------------------------------------------------------------------
# timm's names, for the family files' tables
# --------------------------------------------------------------------------------------------------------------
def timm_block_names(out_channels: Iterable[int]) -> list[str]:
    """timm's module path of each block of a MobileNet-style body (`blocks.<stage>.<block>`), from the blocks'
    output channels in the paper's table: timm's architecture definitions start a stage where they change."""
    names = []
    for stage, (_, blocks) in enumerate(groupby(out_channels)):
        names += [f"blocks.{stage}.{index}" for index, _ in enumerate(blocks)]
    return names


def conv_bn(path: str) -> tuple[str, str]:
    """The (conv, BN) module paths of the `ConvBnAct` at `path`."""
    return f"{path}.0", f"{path}.1"


def timm_conv_bn_names(
    timm_block: str, convs: Sequence[str], own: Sequence[tuple[str, str]], se: str | None = None
) -> dict[str, str]:
    """The table entries of one timm block: timm names its convs `convs` (conv_dw, conv_pw, conv_pwl...) and the BN
    after the n-th of them `bn<n>`; `own` holds the (conv, BN) module paths here in the same order; `se` is the
    path of our squeeze-and-excitation (timm's `se.conv_reduce`/`se.conv_expand`, ours `fc1`/`fc2`)."""
    names = {}
    for number, (conv, (own_conv, own_bn)) in enumerate(zip(convs, own, strict=True), start=1):
        names[f"{timm_block}.{conv}"] = own_conv
        names[f"{timm_block}.bn{number}"] = own_bn
    if se is not None:
        names |= {f"{timm_block}.se.conv_reduce": f"{se}.fc1", f"{timm_block}.se.conv_expand": f"{se}.fc2"}
    return names
