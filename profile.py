"""Measure a network without training: `python profile.py model=ghostnet data=cifar10 [profile.key=value ...]`
(`-m model=a,b model.width=0.5,1.0` gives one row per job; see conf/profile.yaml)."""

import sys

if __name__ != "__main__":
    # This file's name is also the standard library's `profile` module, which cProfile imports (and torch imports
    # cProfile). Whenever the repository root is on sys.path (running this script, pytest) that import lands here:
    # hand back the standard library's module instead, and define nothing else.
    import importlib.util
    import sysconfig
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location("profile", Path(sysconfig.get_paths()["stdlib"]) / "profile.py")
    _stdlib_profile = importlib.util.module_from_spec(_spec)
    sys.modules["profile"] = _stdlib_profile
    _spec.loader.exec_module(_stdlib_profile)
else:
    import os
    from pathlib import Path

    import hydra
    from omegaconf import DictConfig

    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

    from lnrepro.tasks import run_task
    from lnrepro.tasks.profile import profile

    @hydra.main(version_base="1.3", config_path="conf", config_name="profile")
    def main(cfg: DictConfig) -> None:
        run_task(profile, cfg)

    main()
