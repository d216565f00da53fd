"""Measure a network without training: `python profile_net.py model=ghostnet data=cifar10 [profile.key=value ...]`
(the same as `lnrepro-profile`; `-m model=a,b model.width=0.5,1.0` gives one row per job)."""

from lnrepro.cli import profile

if __name__ == "__main__":
    profile()
