"""The model zoo: `build_model(name, ...)` and `list_models()`.

Importing this package registers every family (one module per family); see `registry.build_model` for the
arguments and `layers` for the shared building blocks.
"""

from lnrepro.models.registry import build_model, list_models, load_pretrained, register_model

# Importing the family modules registers them.
from lnrepro.models import (  # noqa: F401  isort: skip
    ghostnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    shufflenet_v1,
    shufflenet_v2,
    vgg,
)

__all__ = ["build_model", "list_models", "load_pretrained", "register_model"]
