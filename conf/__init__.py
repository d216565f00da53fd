"""The Hydra configs: one config group per concern. This folder ships inside the package as `lnrepro.conf`
(`pkg://lnrepro.conf`; pyproject.toml maps it), so the console scripts find them from any directory.

Entry configs: `train.yaml`, `eval.yaml`, `profile.yaml`. A user's own config folder joins through
`hydra.searchpath=[file://DIR]` (its `model/mine.yaml` is then `model=mine`).
"""

# Hydra imports this package before it reads a config from it: the resolvers the configs use are registered then.
import lnrepro.resolvers  # noqa: F401
