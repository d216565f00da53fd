from lnrepro.training.module import ClassificationModule

__all__ = ["ClassificationModule"]
