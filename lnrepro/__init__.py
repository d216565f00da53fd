"""lnrepro: train, evaluate, profile and reproduce lightweight CNNs."""

__version__ = "0.1.0"
