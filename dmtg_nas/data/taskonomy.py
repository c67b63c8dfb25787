"""``taskonomy``: Taskonomy dense tasks from a local copy in the standard per-building layout.

Layout read under ``root`` (nothing is ever downloaded)::

    <root>/<building>/rgb/point_<i>_view_<j>_domain_rgb.png
    <root>/<building>/<domain>/point_<i>_view_<j>_domain_<domain>.png

A sample is a (building, point, view) with an ``rgb`` image and a file for every task's domain
(samples missing one are skipped, and the count is logged); a building without the folder of a
task is an error naming the folder. Task names are domain names:

| task (domain)      | type         | file                  | target                                            |
|--------------------|--------------|-----------------------|---------------------------------------------------|
| ``depth_zbuffer``  | depth        | 16-bit PNG            | metres = value / ``depth_scale`` (512: Taskonomy's|
| ``depth_euclidean``|              |                       | 1/512 m units); ``depth_missing`` (65535) -> NaN  |
| ``normal``         | normals      | 8-bit RGB PNG         | value / 127.5 - 1 in [-1, 1] per channel; pixels  |
|                    |              |                       | without depth are NaN (``normal_mask: depth``)    |
| ``segment_semantic``| segmentation| 8-bit label PNG       | class ids; values in ``segment_ignore`` -> the    |
|                    |              |                       | task's ``ignore_index`` (see below)               |
| ``keypoints2d``, ``keypoints3d`` | keypoints | 16-bit PNG | value / 65535 in [0, 1]                       |
| ``edge_texture``, ``edge_occlusion`` | edges | 16-bit PNG | value / 65535 in [0, 1]                       |

Segmentation labels: we assume the PNG holds class ids ``0 .. num_classes - 1`` (18 for the
Taskonomy-5 benchmark) and that 0 means "unlabelled", as in the code of Standley et al. and TAG
(``cross_entropy(..., ignore_index=0)``); some releases also use 255. Both are ignored by default
(``segment_ignore: [0, 255]``); set ``segment_ignore: [255]`` to train class 0 as background. Any
other value at or above ``num_classes`` is an error naming the file.

Masks: depth pixels equal to ``depth_missing`` are missing (NaN targets, skipped by the masked L1
loss and the metrics). With ``normal_mask: depth`` the normals of those pixels are masked too (the
``depth_zbuffer`` file is read for the mask even when depth is not a task, if the folder exists).

Images are resized to ``size`` x ``size`` (bilinear for rgb, keypoints and edges; nearest for depth,
normals and labels) and rgb is normalised with ImageNet's mean and std. Building lists: ``split:
tiny`` (shipped: 25 train, 5 val, 5 test buildings), or a CSV in Taskonomy's split format
(``name,is_train,is_val,is_test`` per line), or ``buildings: {train: [...], val: [...], test: [...]}``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch.utils.data import Dataset

from ..catalog.images import DOMAIN_TYPES, TINY_SPLIT, TaskonomyOptions, building_lists, check_taskonomy, read_split_csv
from ..errors import DataError
from ..schema import TaskConfig
from .base import TaskData
from .celeba import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TaskonomyDataset", "TaskonomyOptions", "TaskonomyImages", "TINY_SPLIT", "DOMAIN_TYPES", "read_split_csv"]

_logger = logging.getLogger(__name__)

_SAMPLE = re.compile(r"^(point_\d+_view_\d+)_domain_rgb\.png$")


def _read_png(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L") if img.mode == "P" else img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(C, H, W) -> (C, size, size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x.unsqueeze(0), size=(size, size), mode="nearest").squeeze(0)
    return F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


class TaskonomyImages(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """One Taskonomy split: ``(rgb (3, S, S), {domain: target})`` (targets in the module docstring).

    Holds only the index (building number and sample prefix per sample, as numpy arrays) and reads
    every file in ``__getitem__``.
    """

    def __init__(
        self,
        root: Path,
        buildings: Sequence[str],
        building_ids: np.ndarray,
        prefixes: np.ndarray,
        tasks: Sequence[TaskConfig],
        options: TaskonomyOptions,
        mask_from_depth: bool,
    ) -> None:
        self.root = str(root)
        self.buildings = tuple(buildings)
        self.building_ids = building_ids
        self.prefixes = prefixes
        self.tasks = [(t.name, t.type, t.out_features, t.ignore_index) for t in tasks]
        self.size = options.size
        self.depth_scale = options.depth_scale
        self.depth_missing = options.depth_missing
        self.segment_ignore = list(options.segment_ignore)
        self.mask_from_depth = mask_from_depth
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return int(self.prefixes.shape[0])

    def path(self, index: int, domain: str) -> str:
        building = self.buildings[int(self.building_ids[index])]
        prefix = self.prefixes[index].decode()
        return os.path.join(self.root, building, domain, f"{prefix}_domain_{domain}.png")

    def _invalid(self, index: int, depth: np.ndarray | None) -> torch.Tensor | None:
        """(1, S, S) bool: pixels without depth (None when no mask applies)."""
        if depth is None and self.mask_from_depth:
            depth = _read_png(self.path(index, "depth_zbuffer"))
        if depth is None:
            return None
        missing = torch.from_numpy((depth.astype(np.int64) == self.depth_missing)[None].astype(np.float32))
        return _resize(missing, self.size, "nearest") > 0.5

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rgb_path = self.path(index, "rgb")
        rgb = _read_png(rgb_path)
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise DataError(f"{rgb_path}: expected an RGB image, got shape {rgb.shape}")
        x = torch.from_numpy(np.ascontiguousarray(rgb[:, :, :3].transpose(2, 0, 1))).float() / 255.0
        x = (_resize(x, self.size, "bilinear") - self.mean) / self.std
        targets: dict[str, torch.Tensor] = {}
        depth_raw: np.ndarray | None = None
        for name, kind, channels, ignore_index in self.tasks:
            path = self.path(index, name)
            raw = _read_png(path)
            if kind == "depth":
                depth_raw = raw if name == "depth_zbuffer" else depth_raw
                value = raw.astype(np.float32)
                value[raw.astype(np.int64) == self.depth_missing] = np.nan
                t = _resize(torch.from_numpy(value / self.depth_scale)[None], self.size, "nearest")
            elif kind == "normals":
                if raw.ndim != 3 or raw.shape[2] < 3:
                    raise DataError(f"{path}: expected an RGB normals image, got shape {raw.shape}")
                t = torch.from_numpy(np.ascontiguousarray(raw[:, :, :3].transpose(2, 0, 1))).float() / 127.5 - 1.0
                t = _resize(t, self.size, "nearest")
            elif kind == "segmentation":
                if raw.ndim != 2:
                    raise DataError(f"{path}: expected a single-channel label image, got shape {raw.shape}")
                labels = raw.astype(np.int64)
                ignored = np.isin(labels, self.segment_ignore)
                bad = (labels >= channels) & ~ignored
                if bad.any():
                    raise DataError(
                        f"{path}: label {int(labels[bad][0])} is outside [0, {channels}) and not in segment_ignore"
                    )
                labels[ignored] = ignore_index
                t = _resize(torch.from_numpy(labels)[None].float(), self.size, "nearest")[0].long()
            else:  # keypoints, edges: 16-bit maps
                if raw.ndim != 2:
                    raise DataError(f"{path}: expected a single-channel 16-bit image, got shape {raw.shape}")
                t = _resize(torch.from_numpy(raw.astype(np.float32) / 65535.0)[None], self.size, "bilinear")
            targets[name] = t
        if "normal" in targets:
            invalid = self._invalid(index, depth_raw)
            if invalid is not None:
                targets["normal"] = targets["normal"].masked_fill(invalid.expand(3, -1, -1), float("nan"))
        return x, targets


class TaskonomyDataset:
    """Taskonomy dense tasks (see the module docstring)."""

    Options: ClassVar[type[BaseModel]] = TaskonomyOptions

    def check(self, options: TaskonomyOptions, tasks: Sequence[TaskConfig]) -> None:
        check_taskonomy(options, tasks)

    def _index(
        self, root: Path, buildings: Sequence[str], domains: Sequence[str], mask_domain: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ids: list[int] = []
        prefixes: list[str] = []
        for b, building in enumerate(buildings):
            folder = root / building
            if not folder.is_dir():
                raise DataError(f"{folder}: building folder not found")
            rgb_dir = folder / "rgb"
            if not rgb_dir.is_dir():
                raise DataError(f"{rgb_dir}: building {building!r} has no rgb folder")
            found = sorted(m.group(1) for f in os.listdir(rgb_dir) if (m := _SAMPLE.match(f)))
            if not found:
                raise DataError(f"{rgb_dir}: no images named point_<i>_view_<j>_domain_rgb.png")
            keep = set(found)
            for domain in [*domains, *([mask_domain] if mask_domain else [])]:
                task_dir = folder / domain
                if not task_dir.is_dir():
                    raise DataError(f"{task_dir}: building {building!r} has no {domain} folder")
                suffix = f"_domain_{domain}.png"
                present = {f[: -len(suffix)] for f in os.listdir(task_dir) if f.endswith(suffix)}
                lacking = keep - present
                if lacking:
                    _logger.warning(
                        "%s: %d samples have no %s file (e.g. %s%s); skipped",
                        task_dir,
                        len(lacking),
                        domain,
                        sorted(lacking)[0],
                        suffix,
                    )
                keep &= present
            chosen = [p for p in found if p in keep]
            ids += [b] * len(chosen)
            prefixes += chosen
        return np.asarray(ids, dtype=np.int32), np.asarray(prefixes, dtype="S")

    def load(self, options: TaskonomyOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        self.check(options, tasks)
        root = Path(options.root)
        lists = building_lists(options)
        domains = [t.name for t in tasks]
        needs_mask = "normal" in domains and options.normal_mask == "depth" and "depth_zbuffer" not in domains
        parts: dict[str, TaskonomyImages] = {}
        counts: dict[str, dict[str, int]] = {}
        for split in ("train", "val", "test"):
            buildings = lists[split]
            if not buildings:
                raise DataError(f"the Taskonomy {split} split lists no buildings")
            mask_from_depth = needs_mask and all((root / b / "depth_zbuffer").is_dir() for b in buildings)
            ids, prefixes = self._index(root, buildings, domains, "depth_zbuffer" if mask_from_depth else None)
            if options.limit is not None:
                ids, prefixes = ids[: options.limit], prefixes[: options.limit]
            if len(prefixes) == 0:
                raise DataError(f"{root}: the {split} buildings hold no complete sample")
            counts[split] = {b: int((ids == i).sum()) for i, b in enumerate(buildings)}
            parts[split] = TaskonomyImages(root, buildings, ids, prefixes, tasks, options, mask_from_depth)
        info: dict[str, Any] = {"root": str(root), "size": options.size, "samples_per_building": counts}
        return TaskData(parts["train"], parts["val"], parts["test"], (3, options.size, options.size), info=info)
