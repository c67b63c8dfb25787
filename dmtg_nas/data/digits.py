"""``digits``: scikit-learn's bundled 8x8 handwritten digits as a CelebA-like multi-attribute problem.

The 1,797 real images ship inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is
downloaded. Each image gets binary attributes derived from its digit; a task's name picks one:

| attribute         | true for digits | what it asks                                  |
|-------------------|-----------------|-----------------------------------------------|
| ``even``          | 0 2 4 6 8       | parity                                        |
| ``greater_than_4``| 5 6 7 8 9       | magnitude                                     |
| ``prime``         | 2 3 5 7         | primality                                     |
| ``multiple_of_3`` | 0 3 6 9         | divisibility by 3                             |
| ``closed_loop``   | 0 4 6 8 9       | the glyph encloses an area                    |
| ``straight``      | 1 4 7           | drawn with straight strokes only              |
| ``symmetric``     | 0 1 8           | left-right mirror symmetry                    |
| ``top_bar``       | 5 7             | a horizontal stroke along the top             |
| ``round_bottom``  | 0 3 5 6 8 9     | the bottom of the glyph is a curve            |

The shape attributes (``closed_loop``, ``straight``, ``symmetric``, ``top_bar``, ``round_bottom``)
read local strokes and agree with one another (``straight`` is nearly the complement of
``round_bottom``), while the arithmetic ones (``even``, ``prime``, ``multiple_of_3``,
``greater_than_4``) each cut the ten digits differently and need the digit's full identity: a
narrow encoder serving all nine at once is pulled in conflicting directions, which is what a
grouping search can exploit. ``digit`` (multiclass, 10 classes) is available as a task too.

Images (pixel values 0-16) are scaled to [0, 1], standardised with the training mean and std,
bilinearly upsampled to ``size`` x ``size`` and repeated to ``channels`` channels. With ``layout:
table`` the 64 raw pixels are a vector instead (shape (64,), for an ``mlp``), scaled to [0, 1] and
each pixel standardised with its training mean and std (pixels blank in every training image stay
0); ``size`` and ``channels`` are not used. The split is a seeded random split (``split``);
``samples`` keeps a seeded random subset (quick experiments).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from ..catalog.tabular import DIGIT_ATTRIBUTES, DigitsOptions, check_digits
from ..schema import TaskConfig
from .base import TaskData, TensorTaskDataset, random_split

__all__ = ["DigitsDataset", "DigitsOptions", "DIGIT_ATTRIBUTES"]


class DigitsDataset:
    """The scikit-learn digits with derived binary attributes (see the module docstring)."""

    Options: ClassVar[type[BaseModel]] = DigitsOptions

    def check(self, options: DigitsOptions, tasks: Sequence[TaskConfig]) -> None:
        check_digits(options, tasks)

    def load(self, options: DigitsOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        from sklearn.datasets import load_digits

        self.check(options, tasks)
        bunch = load_digits()
        images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (n, 8, 8)
        labels = np.asarray(bunch.target, dtype=np.int64)
        if options.samples is not None and options.samples < len(labels):
            keep = np.sort(np.random.default_rng([options.split.seed, 7]).permutation(len(labels))[: options.samples])
            images, labels = images[keep], labels[keep]
        train_idx, val_idx, test_idx = random_split(len(labels), options.split)
        if options.layout == "table":
            pixels = images.reshape(len(labels), 64)  # (n, 64)
            mean_p, std_p = pixels[train_idx].mean(axis=0), pixels[train_idx].std(axis=0)
            std_p = np.where(std_p > 0, std_p, 1.0)  # pixels blank in every training image stay 0
            x = torch.as_tensor(((pixels - mean_p) / std_p).astype(np.float32))
            normalisation: list[float] | str = "per pixel"
            shape: tuple[int, ...] = (64,)
        else:
            mean, std = float(images[train_idx].mean()), float(images[train_idx].std())
            x = torch.as_tensor((images - mean) / std).unsqueeze(1)  # (n, 1, 8, 8)
            if options.size != 8:
                x = F.interpolate(x, size=(options.size, options.size), mode="bilinear", align_corners=False)
            x = x.repeat(1, options.channels, 1, 1).contiguous()
            normalisation = [mean, std]
            shape = (options.channels, options.size, options.size)
        targets: dict[str, torch.Tensor] = {}
        for task in tasks:
            if task.name == "digit":
                targets[task.name] = torch.as_tensor(labels)
            else:
                members = DIGIT_ATTRIBUTES[task.name]
                targets[task.name] = torch.as_tensor([float(d in members) for d in labels], dtype=torch.float32)

        def part(idx: np.ndarray) -> TensorTaskDataset:
            index = torch.as_tensor(idx)
            return TensorTaskDataset(x[index], {k: v[index] for k, v in targets.items()})

        info = {"samples": len(labels), "normalisation": normalisation, "layout": options.layout}
        if options.layout == "image":
            info["size"] = options.size
        return TaskData(part(train_idx), part(val_idx), part(test_idx), shape, info=info)
