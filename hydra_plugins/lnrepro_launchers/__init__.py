"""lnrepro's Hydra launchers (`hydra/launcher=sequential`, the default; `hydra/launcher=local`,
`hydra/launcher=slurm`): Hydra's and submitit's, with every failed job of a sweep named by its overrides and log, and
SIGTERM and SIGINT stopping a sweep cleanly. Hydra finds launcher classes only inside the `hydra_plugins` package."""
