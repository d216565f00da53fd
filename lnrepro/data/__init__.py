"""Data modules: CIFAR-10 (in memory, augmented on the device), ImageNet-style folders, synthetic images."""


def data_config_names() -> list[str]:
    """The data configs shipped in the package (`data=<name>`): conf/data/<name>.yaml."""
    from importlib.resources import files

    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in files("lnrepro.conf").joinpath("data").iterdir()
        if entry.name.endswith(".yaml")
    )
