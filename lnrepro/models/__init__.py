"""The model zoo: `build_model(name, ...)`, `list_models()` and `resolved_arguments(name, ...)`.

Importing this package registers every family (one module per family); see `registry` for the arguments,
`pretrained` for published weights and `layers` for the shared building blocks.
"""

from lnrepro.models.registry import build_model, list_models, register_model, resolved_arguments

# Importing the family modules registers them.
from lnrepro.models import (  # noqa: F401  isort: skip
    cifar_resnet,
    ghostnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    shufflenet_v1,
    shufflenet_v2,
    vgg,
)

__all__ = ["build_model", "list_models", "register_model", "resolved_arguments"]
