"""lnrepro's Hydra launchers (`hydra/launcher=slurm`, `hydra/launcher=local`): submitit's, with the failures of a
sweep named by job and log file. Hydra finds launcher classes only inside the `hydra_plugins` package."""
