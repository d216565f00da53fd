"""The package's Hydra configs (`pkg://lnrepro.conf`): one config group per concern, shipped with the wheel.

Entry configs: `train.yaml`, `eval.yaml`, `profile.yaml`. A user's own config folder joins through
`hydra.searchpath=[file://DIR]` (its `model/mine.yaml` is then `model=mine`).
"""
