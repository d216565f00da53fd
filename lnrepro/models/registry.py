"""The model registry: `build_model(name, ...)` and `list_models()`, plus loading published weights.

Each family file registers its builder with `@register_model(...)`, declaring which of the shared options it
takes (the conv-kind switch, ShuffleNet's groups). `build_model` checks every argument once, here, so that a bad
value always raises `UserInputError` with the same kind of one-sentence message.

Pretrained weights (`pretrained=PATH`) are state_dict files saved from the torchvision or timm implementation of
the same network (or from this project). See `load_pretrained` for how their keys are mapped.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import STEMS, check_conv_kind

log = logging.getLogger(__name__)

#: Arguments every builder receives; anything else a builder declares is a family option (`**family_kwargs`).
_COMMON_ARGS = ("width", "num_classes", "stem", "conv", "groups", "dropout")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    default_conv: str | None = None  # None: the family has no conv-kind switch
    default_groups: int | None = None  # None: the family has no groups option
    group_choices: tuple[int, ...] = ()

    @property
    def family_options(self) -> list[str]:
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p not in _COMMON_ARGS and params[p].kind is inspect.Parameter.KEYWORD_ONLY]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    default_conv: str | None = None,
    default_groups: int | None = None,
    group_choices: tuple[int, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator adding a builder to the registry under `name`.

    The builder is called with keyword arguments width, num_classes, stem, dropout (None = the paper's value),
    conv (only if `default_conv` is set), groups (only if `default_groups` is set) and its own keyword-only
    family options.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, default_conv, default_groups, tuple(group_choices))
        return builder

    return decorator


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The keyword arguments `build_model(name, ...)` accepts: the common ones this family takes and its own."""
    entry = _REGISTRY[name]
    common = ["width", "num_classes", "stem", "dropout", "pretrained"]
    common += ["conv"] if entry.default_conv is not None else []
    common += ["groups"] if entry.default_groups is not None else []
    return common + entry.family_options


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def _refuse_option(name: str, option: str, value: Any, what_is_missing: str) -> None:
    """A family without `option` (conv or groups) accepts only None for it; else one error naming the families
    that have it."""
    if value is None:
        return
    owners = sorted(e.name for e in _REGISTRY.values() if getattr(e, f"default_{option}") is not None)
    raise UserInputError(
        f"{name} {what_is_missing} ({option}={value!r}); model.{option} applies to {_choices(owners)} only, "
        f"leave it unset (null) for {name}"
    )


def build_model(
    name: str,
    *,
    width: float = 1.0,
    num_classes: int = 1000,
    stem: str = "imagenet",
    conv: str | None = None,
    groups: int | None = None,
    dropout: float | None = None,
    pretrained: str | Path | None = None,
    **family_kwargs: Any,
) -> nn.Module:
    """Build the network `name` (see `list_models()`).

    Args:
        width: width multiplier (> 0); every family accepts any width (see each family for its rounding).
        num_classes: size of the classifier output.
        stem: "imagenet" (the paper's network) or "cifar" (the family's documented 32x32 adaptation).
        conv: standard | dwpw | ghost on vgg16, resnet34, ghostnet; None = the family's default.
        groups: ShuffleNet V1 group count (1, 2, 3, 4, 8); None = 3.
        dropout: dropout before the classifier; None = the paper's value.
        pretrained: path of a state_dict file saved from torchvision/timm or this project.
        family_kwargs: family options, e.g. ``activation="relu6"`` for mobilenet_v1.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserInputError(f"unknown model {name!r}; choose one of: {_choices(list_models())}")
    entry = _REGISTRY[name]

    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not math.isfinite(width) or width <= 0:
        raise UserInputError(f"width must be > 0 (got {width!r})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise UserInputError(f"num_classes must be a positive integer (got {num_classes!r})")
    if stem not in STEMS:
        raise UserInputError(f"unknown stem {stem!r}; choose one of: {_choices(STEMS)}")

    kwargs: dict[str, Any] = dict(width=float(width), num_classes=int(num_classes), stem=stem)

    if entry.default_conv is None:
        _refuse_option(name, "conv", conv, "has no conv-kind switch")
    else:
        conv = entry.default_conv if conv is None else conv
        kwargs["conv"] = check_conv_kind(conv)

    if entry.default_groups is None:
        _refuse_option(name, "groups", groups, "has no groups option")
    else:
        groups = entry.default_groups if groups is None else groups
        if isinstance(groups, bool) or groups not in entry.group_choices:
            raise UserInputError(
                f"{name}: groups={groups!r} is not supported; choose one of {_choices(entry.group_choices)}"
            )
        kwargs["groups"] = int(groups)

    if dropout is not None:
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise UserInputError(f"dropout must be in [0, 1) or null for the paper's value (got {dropout!r})")
        dropout = float(dropout)
    kwargs["dropout"] = dropout

    options = entry.family_options
    unknown = sorted(set(family_kwargs) - set(options))
    if unknown:
        valid = _choices(options) if options else "none"
        raise UserInputError(f"{name} does not take option {unknown[0]!r}; its options are: {valid}")
    kwargs.update(family_kwargs)

    model = entry.builder(**kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained, model_name=name)
    return model


# --------------------------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------------------------
# Keys that hold no learned value: a file may lack them and they do not take part in the key mapping.
_BOOKKEEPING_SUFFIX = "num_batches_tracked"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserInputError(
            f"pretrained file {str(path)!r} does not exist; give the path of a state_dict saved with "
            f"torch.save(model.state_dict(), path)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of arbitrary objects, not a torch file at all
        raise UserInputError(
            f"pretrained file {str(path)!r} could not be read as a PyTorch state_dict ({type(exc).__name__}); "
            f"save it with torch.save(model.state_dict(), path)"
        ) from None
    # A Lightning or training checkpoint keeps the weights under one of these keys.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise UserInputError(
            f"pretrained file {str(path)!r} is not a state_dict (a mapping of parameter names to tensors); "
            f"save it with torch.save(model.state_dict(), path)"
        )
    state = dict(obj)
    # A LightningModule's checkpoint holds the network under `net.` (or `model.`), maybe beside other modules
    # (a compiled copy, a loss with weights): keep the network's part.
    for prefix in ("net.", "model."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    stripped = True
    while stripped:  # DataParallel / torch.compile wrappers, possibly nested
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _same_shape(a: torch.Size, b: torch.Size) -> bool:
    """Shapes match, counting a 1x1 conv weight (O, I, 1, 1) and a linear weight (O, I) as the same."""
    return a == b or (sorted((len(a), len(b))) == [2, 4] and a[:2] == b[:2] and a.numel() == b.numel())


def _fmt(shape: torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _same_kind(key_a: str, key_b: str) -> bool:
    """Both keys name the same kind of tensor (weight / bias / running_mean / running_var / ...)."""
    return key_a.rsplit(".", 1)[-1] == key_b.rsplit(".", 1)[-1]


def _fits(key_a: str, tensor_a: torch.Tensor, key_b: str, tensor_b: torch.Tensor) -> bool:
    return _same_kind(key_a, key_b) and _same_shape(tensor_a.shape, tensor_b.shape)


def load_pretrained(model: nn.Module, path: str | Path, *, model_name: str = "model") -> None:
    """Load a state_dict file into `model`, mapping torchvision/timm keys to ours.

    Key mapping. mobilenet_v2, mobilenet_v3_* and shufflenet_v2 use torchvision's parameter names, so those
    torchvision files (and files saved from this project) load name for name. timm names the same layers
    differently (conv_stem/bn1/blocks.s.b.conv_pw... for the MobileNets, ConvBnAct.conv/bn1 in GhostNet), as
    torchvision's resnet34/vgg16_bn do ours (our conv-kind slots wrap conv+BN), but all of them, like this
    project, register the layers in the order the forward pass uses them. When the names do
    not match we therefore pair the file's tensors with ours in that order, and accept the pairing only if every
    pair has the same kind (weight / bias / running_mean / running_var) and the same shape, a 1x1 conv and a
    linear layer counting as the same (timm's MobileNet V3 head is a 1x1 conv, ours a linear layer as in
    torchvision). A file of another network or width fails this check at its first differing tensor, which
    the error names. The tests load files from every supported torchvision/timm network and compare outputs.

    Classifier. If the file's classifier has another number of classes than `model`, the classifier keeps its
    fresh initialisation (logged) and everything else is loaded: this is how to fine-tune from ImageNet weights.

    Before loading, a model may adapt to the file (`adapt_to_pretrained(keys)`): MobileNet V3 switches its BN
    eps to timm's 1e-5 when the file comes from timm (torchvision uses 1e-3), which the outputs depend on.
    """
    path = Path(path).expanduser()
    source = _read_state_dict(path)
    own = model.state_dict()
    if hasattr(model, "adapt_to_pretrained"):
        model.adapt_to_pretrained(list(source))

    def learned(keys):
        return [k for k in keys if not k.endswith(_BOOKKEEPING_SUFFIX)]

    own_keys, src_keys = learned(own), learned(source)
    # the final linear layer's keys (each model names it with `classifier_name`)
    own_cls = [k for k in own_keys if k.startswith(model.classifier_name + ".")]
    if set(src_keys) == set(own_keys):
        pairs = [(k, k) for k in own_keys]  # same names: torchvision files, or files saved from this project
        by_name = True
    else:  # pair in forward order; the classifier is the last layer on both sides
        if len(src_keys) != len(own_keys):
            _raise_misfit(path, model_name, own, source, own_keys, src_keys)
        pairs = list(zip(src_keys, own_keys))
        by_name = False

    loaded: dict[str, torch.Tensor] = {}
    reinit_classifier, file_classes = False, 0
    for src_key, own_key in pairs:
        src_t, own_t = source[src_key], own[own_key]
        if _fits(src_key, src_t, own_key, own_t):
            loaded[own_key] = src_t.reshape(own_t.shape)
            continue
        if own_key in own_cls and _same_kind(src_key, own_key) and src_t.shape[1:] == own_t.shape[1:]:
            reinit_classifier, file_classes = True, src_t.shape[0]  # only the number of classes differs
            continue
        _raise_key_mismatch(path, model_name, src_key, src_t.shape, own_key, own_t.shape, by_name)

    if by_name:  # bookkeeping tensors travel too when names match
        for key in own:
            if key.endswith(_BOOKKEEPING_SUFFIX) and key in source:
                loaded[key] = source[key]
    missing = model.load_state_dict(loaded, strict=False).missing_keys
    missing = [k for k in missing if not k.endswith(_BOOKKEEPING_SUFFIX) and not (reinit_classifier and k in own_cls)]
    if missing:  # cannot happen after the checks above; kept as a guard
        raise UserInputError(f"pretrained file {str(path)!r} has no value for {missing[0]!r} of {model_name}")
    if reinit_classifier:
        log.info(
            "%s: pretrained classifier has %d classes, the model %d: classifier re-initialised, "
            "all other weights loaded from %s",
            model_name,
            file_classes,
            own[own_cls[0]].shape[0],
            path,
        )
    else:
        log.info("%s: loaded pretrained weights from %s", model_name, path)


def _raise_key_mismatch(path, model_name, src_key, src_shape, own_key, own_shape, by_name) -> None:
    where = f"key {src_key!r}" if by_name else f"key {src_key!r} (paired with the model's {own_key!r})"
    raise UserInputError(
        f"pretrained file {str(path)!r} does not fit {model_name}: {where} has shape {_fmt(src_shape)}, "
        f"the model needs {_fmt(own_shape)}; check that the file was saved from the same network, width and options"
    )


def _raise_misfit(path, model_name, own, source, own_keys, src_keys) -> None:
    # Name the first tensor where the two networks part ways.
    for src_key, own_key in zip(src_keys, own_keys):
        if not _fits(src_key, source[src_key], own_key, own[own_key]):
            _raise_key_mismatch(path, model_name, src_key, source[src_key].shape, own_key, own[own_key].shape, False)
    raise UserInputError(
        f"pretrained file {str(path)!r} does not fit {model_name}: it holds {len(src_keys)} weight tensors, "
        f"the model {len(own_keys)}; check that the file was saved from the same network, width and options"
    )
