"""lnrepro: train, evaluate, profile and reproduce lightweight CNNs.

`lnrepro.models` (the zoo: `build_model`, `list_models`) needs only torch; `lnrepro.load_run(ckpt_path)` rebuilds a
finished run's network and config from its checkpoint (imported on first use: it needs Hydra).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import lnrepro.models` stays as light as torch itself.
    if name == "load_run":
        from lnrepro.runs import load_run

        return load_run
    raise AttributeError(f"module 'lnrepro' has no attribute {name!r}")
