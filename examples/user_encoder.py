"""Bring your own encoder: ``backbone: {name: "package.module:factory", ...}``.

The factory is called with ``input_shape`` (one sample's shape) and the backbone's other keys as
keyword arguments, and returns an ``nn.Module`` mapping a batch (B, *input_shape) to a feature
vector (B, D), or, for dense tasks, to a list of feature maps [(B, C, H, W), ...] shallow to deep.
Feature widths are read from a dummy forward; ``dmtg validate`` builds the encoder and checks its
output. ``user_encoder.yaml`` is a spec that uses :func:`gated_mlp`; ``user_encoder`` is found next to the
spec (or in the current folder, or on ``PYTHONPATH``)::

    cd examples && dmtg validate user_encoder.yaml && dmtg search user_encoder.yaml
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class GatedMLP(nn.Module):
    """x -> Linear -> (a * sigmoid(b)) per layer: a small gated MLP over flattened inputs."""

    def __init__(self, in_features: int, hidden: list[int]) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, 2 * b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, hidden[-1])
        h = x.flatten(1)
        for layer in self.layers:
            a, b = layer(h).chunk(2, dim=1)
            h = a * torch.sigmoid(b)
        return h


def gated_mlp(input_shape: tuple[int, ...], hidden: list[int] | None = None) -> nn.Module:
    """The factory a spec names (``user_encoder:gated_mlp``): vector features of width hidden[-1]."""
    in_features = 1
    for s in input_shape:
        in_features *= s
    return GatedMLP(in_features, hidden or [16])


def tiny_maps(input_shape: tuple[int, ...], width: int = 8) -> nn.Module:
    """An image encoder for dense tasks: two conv stages, returning both feature maps."""

    class TwoStages(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.b = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            a = self.a(x)
            return [a, self.b(a)]

    return TwoStages()
