"""Data modules: CIFAR-10 (in memory, augmented on the device), ImageNet-style folders, synthetic images."""
