"""Train a network: `python train.py model=ghostnet data=cifar10 [key=value ...]` (the same as `lnrepro-train`)."""

from lnrepro.cli import train

if __name__ == "__main__":
    train()
