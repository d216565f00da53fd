"""The OmegaConf resolvers the package's configs use (`${lnrepro.process:}`, `${lnrepro.cwd:}`).

Registered on import; the config package (`conf/__init__.py`, shipped as `lnrepro.conf`) imports this module, and
Hydra imports that package before it reads a config from it, so the resolvers exist wherever the configs are read.
"""

from __future__ import annotations

import os
import socket

from omegaconf import OmegaConf


def process_tag() -> str:
    """`<host>-<pid>`: what tells apart runs started in the same second (four `train.py &` on one box, a job
    array on several nodes); the time alone named one directory for all of them."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


if not OmegaConf.has_resolver("lnrepro.process"):
    # Cached in the config: a submitit job unpickles its sweep's config and keeps the sweep's directory name.
    OmegaConf.register_new_resolver("lnrepro.process", process_tag, use_cache=True)


if not OmegaConf.has_resolver("lnrepro.cwd"):
    # The directory the command was started from, as `${hydra:runtime.cwd}` but also where Hydra has not set its
    # config yet: a multirun's sweeper and launcher resolve hydra.sweep.dir (so paths.log_dir) before any job runs.
    # Cached: a submitit job keeps its sweep's directory.
    OmegaConf.register_new_resolver("lnrepro.cwd", os.getcwd, use_cache=True)
