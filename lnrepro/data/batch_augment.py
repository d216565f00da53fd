"""Augmentation of whole uint8 batches on the training device.

Written by hand because torchvision's v2 transforms draw one set of random parameters per call (so a batched call
crops every image the same way) and per-image calls cost Python work per image. Here one gather does a different
random crop and flip for every image of the batch, with the default torch RNG of the batch's device.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int = 4, flip_prob: float = 0.5) -> torch.Tensor:
    """Zero-pad by `padding`, crop back to the original size at a random offset, flip horizontally with
    `flip_prob`; independently per image. `images`: (B, C, H, W), any dtype. Returns the same shape and dtype."""
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding > 0 else images
    padded_width = width + 2 * padding
    offset_y = torch.randint(0, 2 * padding + 1, (batch, 1), device=device)
    offset_x = torch.randint(0, 2 * padding + 1, (batch, 1), device=device)
    rows = offset_y + torch.arange(height, device=device)
    cols = offset_x + torch.arange(width, device=device)
    # A horizontal flip is the crop's columns read right to left: no extra pass over the pixels.
    flip = torch.rand(batch, 1, device=device) < flip_prob
    cols = torch.where(flip, cols.flip(1), cols)
    # One gather over the flattened pixels of each (image, channel): about 4x faster on CPU than advanced indexing
    # with three index tensors, and the result is contiguous NCHW.
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(batch, 1, height * width)
    flat = padded.reshape(batch, channels, -1)
    return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


@functools.lru_cache(maxsize=8)
def _normalization(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would be two host-to-device copies, each a stream sync on a GPU.
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
    return scale, shift


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [0, 255] -> float32 normalised per channel, contiguous in NCHW."""
    scale, shift = _normalization(tuple(mean), tuple(std), images.device)
    return torch.addcmul(shift, images.float(), scale).contiguous()


def cutout(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one `size` x `size` square per image at a random centre (DeVries & Taylor 2017); the square may be
    clipped by the border. Applied after normalisation, so zero is the dataset mean."""
    if size <= 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    top = torch.randint(0, height, (batch, 1, 1), device=device) - size // 2
    left = torch.randint(0, width, (batch, 1, 1), device=device) - size // 2
    ys = torch.arange(height, device=device).view(1, -1, 1)
    xs = torch.arange(width, device=device).view(1, 1, -1)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images * (~inside).unsqueeze(1).to(images.dtype)
