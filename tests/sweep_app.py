"""A stand-in for `lnrepro-train` in the sweep tests (tests/test_sweeps.py): the same config (`train`, so the same
default launcher, run directories and log files), and a task that does what `+does=` says instead of training, so
that a sweep's launcher is tried with real processes and real signals in a second or two per job:

- `ok`: writes `done` in its run directory and returns;
- `refused`: raises `lnrepro.errors.UserInputError` (what lnrepro's tasks re-raise inside a sweep for a refused value);
- `bug`: raises a `ZeroDivisionError` (an error that is not one line: a traceback);
- `exit143`: exits 143, as lnrepro's tasks do when SIGTERM stopped them (`RunInterrupted`);
- `wait`: writes `started`, then waits up to 120 s for SIGTERM or SIGINT, which it handles as lnrepro's tasks do:
  notes the signal's name in `signals` (one line per signal received), takes a moment (as saving a checkpoint does),
  writes `saved`, and exits 128 + the signal number;
- `wait_unhandled`: writes `started` and waits up to 120 s, leaving the signals to whatever handles them.

    python tests/sweep_app.py -m paths.log_dir=DIR +does=ok,refused,bug
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

SAVE_S = 1.0  # how long "saving" takes after a signal: a second signal meanwhile would show in `signals`


@hydra.main(version_base="1.3", config_path="pkg://lnrepro.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    does = cfg.does
    if does == "ok":
        (run_dir / "done").write_text("")
    elif does == "refused":
        from lnrepro.errors import UserInputError

        raise UserInputError(f"does={does} is refused: use does=ok")
    elif does == "bug":
        print(1 / 0)
    elif does == "exit143":
        raise SystemExit(143)
    elif does in ("wait", "wait_unhandled"):
        if does == "wait":

            def stop(number: int, frame) -> None:
                with open(run_dir / "signals", "a") as signals:
                    signals.write(signal.Signals(number).name + "\n")
                time.sleep(SAVE_S)
                (run_dir / "saved").write_text("")
                raise SystemExit(128 + number)

            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, stop)
        (run_dir / "started").write_text("")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.1)
        (run_dir / "done").write_text("")
    else:
        raise ValueError(f"unknown does={does}")


if __name__ == "__main__":
    main()
