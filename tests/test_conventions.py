"""Multiply-adds under the counting conventions papers use, and which one a published figure matches."""

from __future__ import annotations

import torch
from torch import nn

from lnrepro.profiling.conventions import convention_rows, count_conventions, matching_convention


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, bias=False)

    def forward(self, x):
        return x + self.conv(x)  # a functional add, outside any module


def test_each_convention_adds_what_it_names():
    # conv 3->4, 3x3, padding 1 on 8x8: 256 outputs x 27; 1x1 conv: 256 x 4; linear 4->2: 8 (addmm, bias included)
    # BN: 256 elements; element-wise: ReLU 256, the residual add 256, global average pooling 256 inputs.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Residual(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    counts = count_conventions(net, (3, 8, 8))
    assert counts["conv_linear"] == 256 * 27 + 256 * 4 + 8
    assert counts["with_norm"] == counts["conv_linear"] + 256
    assert counts["with_elementwise"] == counts["with_norm"] + 3 * 256
    assert net.training  # the caller's mode comes back


def test_the_closest_convention_within_tolerance_matches():
    counts = {"conv_linear": 300_000_000, "with_norm": 307_000_000, "with_elementwise": 314_000_000}
    assert matching_convention(counts, 300e6) == "conv_linear"
    assert matching_convention(counts, 313e6) == "with_elementwise"
    assert matching_convention(counts, 400e6) is None and matching_convention(counts, None) is None
    rows = convention_rows(counts, 307e6)
    assert [row["matches"] for row in rows] == [False, True, False]
    assert all(row["flops"] == 2 * row["macs"] for row in rows)


def test_channel_shuffle_counts_nothing():
    class Shuffle(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)

    assert count_conventions(Shuffle(), (4, 4, 4)) == {"conv_linear": 0, "with_norm": 0, "with_elementwise": 0}
    torch.testing.assert_close(
        Shuffle()(torch.arange(4.0).view(1, 4, 1, 1)).flatten(), torch.tensor([0.0, 2.0, 1.0, 3.0])
    )
