"""Print the composed config as a rich tree (and save it next to the run)."""

from __future__ import annotations

from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

FIRST = ("data", "model", "module", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None) -> None:
    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    fields = [f for f in FIRST if f in cfg] + [f for f in cfg if f not in FIRST]
    for field in fields:
        branch = tree.add(str(field), style="bold cyan", guide_style="dim")
        value = cfg[field]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as file:
            rich.print(tree, file=file)
