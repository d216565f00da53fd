"""The model registry: `build_model(name, ...)`, `list_models()` and `resolved_arguments(name, ...)`.

Each family file registers its builder with `@register_model`, under the builder's function name. The builder's
keyword-only parameters are what the family takes, and their defaults are the family's defaults, declared nowhere
else: `dropout`, `conv` where the family has the conv-kind switch, `groups` where it has ShuffleNet's group count,
and its own options (mobilenet_v1's `activation` and `shallow`, the Ghost options `ghost_ratio`, `ghost_kernel`,
`ghost_cheap`). The conv kinds a family offers and the group counts it accepts are declared beside it, once:
``@register_model(conv_choices=("standard", "dwpw", ...))``, ``@register_model(group_choices=(1, 2, 3, 4, 8))``.
A default that depends on other arguments is a `DependsOn` (VGG16's dropout depends on the stem). `width`,
`num_classes` and `stem`, which every family takes, have no default there: theirs are `resolved_arguments`'s.

`build_model` checks every argument once, here, so that a bad value always raises `UserInputError` with the same
kind of one-sentence message. None for an option means the family's default: the config files leave the options
null, and what a run records is the value `resolved_arguments` filled in.

Pretrained weights (`pretrained=PATH`): `lnrepro.models.pretrained`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lnrepro.errors import UserInputError
from lnrepro.models.layers import GHOST_CONV_KINDS, GHOST_OPTIONS, STEMS, check_conv_kind
from lnrepro.models.pretrained import load_pretrained

#: Arguments with one meaning in every family that takes them; anything else a builder declares is a family option.
_COMMON_ARGS = ("width", "num_classes", "stem", "conv", "groups", "dropout")
#: Arguments every builder takes, whose defaults are `resolved_arguments`'s.
_EVERY_FAMILY = ("width", "num_classes", "stem")


@dataclass(frozen=True)
class DependsOn:
    """A family default computed from the builder's other arguments, e.g.
    ``dropout: float = DependsOn(lambda stem: 0.0 if stem == "cifar" else 0.5)``: the registry calls `rule` with
    the (resolved) arguments its parameters name."""

    rule: Callable[..., Any]

    def value(self, arguments: dict[str, Any]) -> Any:
        return self.rule(**{name: arguments[name] for name in inspect.signature(self.rule).parameters})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    group_choices: tuple[int, ...] = ()
    conv_choices: tuple[str, ...] = ()
    #: conv kind -> why the family does not offer it, said when it is asked for (GhostNet's ghost_module)
    conv_refusals: tuple[tuple[str, str], ...] = ()

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.builder).parameters)

    def takes(self, option: str) -> bool:
        return option in self.parameters

    @property
    def family_options(self) -> list[str]:
        return [name for name in self.parameters if name not in _COMMON_ARGS]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    builder: Callable[..., nn.Module] | None = None,
    /,
    *,
    name: str | None = None,
    group_choices: tuple[int, ...] = (),
    conv_choices: tuple[str, ...] = (),
    conv_refusals: dict[str, str] | None = None,
) -> Any:
    """Decorator adding a builder to the registry, as ``@register_model`` or ``@register_model(group_choices=...)``.

    `name`: the name `build_model` knows it by, by default the builder's function name. `group_choices`: the
    values a `groups` parameter accepts. `conv_choices`: the conv kinds (`layers.CONV_KINDS`) a `conv` parameter
    accepts, as users will see them listed; `conv_refusals`: {kind: why this family does not offer it}, for a
    kind a user could reasonably expect. The builder's parameters are keyword-only; all but width, num_classes
    and stem have a default.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        entry = ModelEntry(
            name or builder.__name__,
            builder,
            tuple(group_choices),
            tuple(conv_choices),
            tuple((conv_refusals or {}).items()),
        )
        if entry.name in _REGISTRY:
            raise RuntimeError(f"model {entry.name!r} registered twice")
        for parameter in entry.parameters.values():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"{entry.name}: builder parameter {parameter.name!r} must be keyword-only")
            if (parameter.name in _EVERY_FAMILY) != (parameter.default is inspect.Parameter.empty):
                raise TypeError(
                    f"{entry.name}: {parameter.name!r} must have a default (the family's) unless it is one of "
                    f"{', '.join(_EVERY_FAMILY)}, whose defaults the registry gives"
                )
        if entry.takes("groups") != bool(entry.group_choices):
            raise TypeError(f"{entry.name}: a `groups` parameter and group_choices come together")
        if entry.takes("conv") != bool(entry.conv_choices):
            raise TypeError(f"{entry.name}: a `conv` parameter and conv_choices come together")
        for kind in entry.conv_choices:
            check_conv_kind(kind)
        if entry.takes("conv") and entry.parameters["conv"].default not in entry.conv_choices:
            raise TypeError(f"{entry.name}: the default conv kind must be one of its conv_choices")
        _REGISTRY[entry.name] = entry
        return builder

    return decorator if builder is None else decorator(builder)


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The keyword arguments `build_model(name, ...)` accepts: the builder's and `pretrained`."""
    return [*_entry(name).parameters, "pretrained"]


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def _entry(name: Any) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserInputError(f"unknown model {name!r}; choose one of: {_choices(list_models())}")
    return _REGISTRY[name]


def _refuse_option(name: str, option: str, value: Any, what_is_missing: str) -> None:
    """A family without `option` (conv or groups) accepts only None for it; else one error naming the families
    that have it."""
    if value is None:
        return
    owners = sorted(entry.name for entry in _REGISTRY.values() if entry.takes(option))
    raise UserInputError(
        f"{name} {what_is_missing} ({option}={value!r}); model.{option} applies to {_choices(owners)} only, "
        f"leave it unset (null) for {name}"
    )


def resolved_arguments(
    name: str,
    *,
    width: float = 1.0,
    num_classes: int = 1000,
    stem: str = "imagenet",
    conv: str | None = None,
    groups: int | None = None,
    dropout: float | None = None,
    **family_options: Any,
) -> dict[str, Any]:
    """The arguments `build_model(name, ...)` passes to the family's builder: each one checked, and every option
    left None given the family's default. A run records its conv kind and group count from here.

    Args:
        width: width multiplier (> 0); every family accepts any width (see each family for its rounding).
        num_classes: size of the classifier output.
        stem: "imagenet" (the paper's network) or "cifar" (the family's documented 32x32 adaptation).
        conv: a conv kind the family offers (`layers.CONV_KINDS`: standard, dwpw, pwdw, ghost, ghost_module;
            each family's list is its `conv_choices`).
        groups: ShuffleNet V1's group count (1, 2, 3, 4, 8).
        dropout: dropout before the classifier, in [0, 1).
        family_options: the family's own options, e.g. ``activation="relu6"`` for mobilenet_v1.
    """
    entry = _entry(name)
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not math.isfinite(width) or width <= 0:
        raise UserInputError(f"width must be > 0 (got {width!r})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise UserInputError(f"num_classes must be a positive integer (got {num_classes!r})")
    if stem not in STEMS:
        raise UserInputError(f"unknown stem {stem!r}; choose one of: {_choices(STEMS)}")
    given: dict[str, Any] = dict(width=float(width), num_classes=int(num_classes), stem=stem)

    if not entry.takes("conv"):
        _refuse_option(name, "conv", conv, "has no conv-kind switch")
    elif conv is not None:
        refusal = dict(entry.conv_refusals).get(conv)
        if refusal:
            raise UserInputError(
                f"{name} does not take conv={conv!r}: {refusal}; choose one of: {_choices(entry.conv_choices)}"
            )
        given["conv"] = check_conv_kind(conv, entry.conv_choices, name)
    if not entry.takes("groups"):
        _refuse_option(name, "groups", groups, "has no groups option")
    elif groups is not None:
        if isinstance(groups, bool) or groups not in entry.group_choices:
            raise UserInputError(
                f"{name}: groups={groups!r} is not supported; choose one of {_choices(entry.group_choices)}"
            )
        given["groups"] = int(groups)
    if dropout is not None:
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise UserInputError(f"dropout must be in [0, 1) or null for the paper's value (got {dropout!r})")
        given["dropout"] = float(dropout)

    options = entry.family_options
    # None is every option's "the family's default", so a family without the option accepts it (as for conv and
    # groups): a preset sweeping several families can set one family's option for that family alone.
    unknown = sorted(option for option, value in family_options.items() if option not in options and value is not None)
    if unknown:
        valid = _choices(options) if options else "none"
        raise UserInputError(f"{name} does not take option {unknown[0]!r}; its options are: {valid}")
    given |= {option: value for option, value in family_options.items() if value is not None}

    # in the builder's order, the family's default where none was given
    arguments = {option: given.get(option, parameter.default) for option, parameter in entry.parameters.items()}
    for option, value in arguments.items():
        if isinstance(value, DependsOn):
            arguments[option] = value.value(arguments)
    # A Ghost option set where the conv kind builds no Ghost module would change nothing: refuse it, not ignore it.
    tuned = [option for option in GHOST_OPTIONS if family_options.get(option) is not None]
    if tuned and arguments.get("conv") not in GHOST_CONV_KINDS:
        kinds = [kind for kind in entry.conv_choices if kind in GHOST_CONV_KINDS]
        raise UserInputError(
            f"{name}: {tuned[0]} tunes Ghost modules, which conv={arguments.get('conv')!r} does not build; "
            f"use it with conv={' or '.join(kinds)}, or leave it unset (null)"
        )
    return arguments


def build_model(name: str, *, pretrained: str | Path | None = None, **arguments: Any) -> nn.Module:
    """Build the network `name` (see `list_models()`) from the arguments `resolved_arguments` takes (width,
    num_classes, stem, conv, groups, dropout and the family's own options; None = the family's default).

    `pretrained`: the path of a state_dict file saved from the torchvision/timm twin or from this project
    (`lnrepro.models.pretrained`).
    """
    resolved = resolved_arguments(name, **arguments)
    model = _REGISTRY[name].builder(**resolved)
    if pretrained is not None:
        load_pretrained(model, pretrained, model_name=name)
    return model
