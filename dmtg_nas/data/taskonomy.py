"""``taskonomy``: Taskonomy dense tasks from a local copy, in the release's layout and file names.

Three folder layouts are read under ``root`` (nothing is ever downloaded; ``layout: auto`` tells them
apart, see :func:`~dmtg_nas.catalog.images.resolve_layout`)::

    building:  <root>/<building>/<domain>/point_<i>_view_<j>_domain_<name>.png   (one building of the release)
    domain:    <root>/<domain>/<building>/point_<i>_view_<j>_domain_<name>.png   (Standley et al.'s loader)
    omnidata:  <root>/<domain>/taskonomy/<building>/point_<i>_view_<j>_domain_<name>.png  (omnitools.download)

``<name>`` is the domain's own name, except for the segmentation files, which the release names
``..._domain_segmentsemantic.png`` in the folder ``segment_semantic`` (both spellings are read).

A sample is a (building, point, view) with an ``rgb`` image and a file for every task's domain
(samples missing one are skipped, and the count is logged); a building without the folder of a
task is an error naming the folder. Task names are domain names:

| task (domain)      | type         | file                  | target (``normalize: reference``, the default)    |
|--------------------|--------------|-----------------------|---------------------------------------------------|
| ``depth_zbuffer``  | depth        | 16-bit PNG            | metres = value / ``depth_scale`` (512: 1/512 m    |
| ``depth_euclidean``|              |                       | units); values >= ``depth_limit`` (8192) or equal |
|                    |              |                       | to ``depth_missing`` (65535) -> NaN               |
| ``normal``         | normals      | 8-bit RGB PNG         | value / 127.5 - 1 in [-1, 1] per channel; pixels  |
|                    |              |                       | without depth are NaN (``normal_mask: depth``)    |
| ``segment_semantic``| segmentation| 8-bit label PNG       | class ids; values in ``segment_ignore`` -> the    |
|                    |              |                       | task's ``ignore_index`` (see below)               |
| ``keypoints2d``, ``keypoints3d`` | keypoints | 16-bit PNG | (value - mean) / std: keypoints2d (50, 100)      |
| ``edge_texture``, ``edge_occlusion`` | edges | 16-bit PNG | edge_texture (718, 1070), edge_occlusion          |
|                    |              |                       | (56.0248, 239.1265); ``normalize: unit``: / 65535 |

The statistics and the depth rule are the reference code's (Standley et al.'s
``taskonomy_loader.py``, which DMTG's ``preprocess_taskonomy.py`` repeats): keypoints and edges
standardised, so that their L1 losses are of the size of the other tasks' (scaled by 1/65535 they
were 100 to 1000 times smaller), and depth valid below 2**13 (16 m). ``target_stats: {domain:
[mean, std]}`` sets the statistics of a domain (``keypoints3d`` has none in the reference).

Segmentation labels: the PNG holds class ids ``0 .. num_classes - 1`` (18 for the Taskonomy-5
benchmark); 0 is "uncertain" in the release (1 is background), and the code of Standley et al., TAG
and DMTG skips it (``cross_entropy(..., ignore_index=0)``); some copies also use 255. Both are
ignored by default (``segment_ignore: [0, 255]``). Any other value at or above ``num_classes`` is an
error naming the file.

Masks: missing depth pixels are NaN targets, skipped by the masked L1 loss and the metrics. With
``normal_mask: depth`` the normals of those pixels are masked too (the ``depth_zbuffer`` file is
read for the mask even when depth is not a task, if its folder exists).

Images are resized to ``size`` x ``size`` (bilinear for rgb, keypoints and edges; nearest for depth,
normals and labels); rgb is normalised with ImageNet's mean and std (``inputs: unit``: kept in
[0, 1], as the reference code feeds it). ``flip: true`` mirrors a training sample left-right with
probability 1/2 (rgb and every target; the normals' x component changes sign), the reference
code's augmentation. Building lists: ``split: tiny`` (shipped: 25 train, 5 val, 5 test buildings),
or a CSV in Taskonomy's split format (``name,is_train,is_val,is_test`` per line), or ``buildings:
{train: [...], val: [...], test: [...]}``.
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

from ..catalog.images import (
    DOMAIN_TYPES,
    STATS_TYPES,
    TINY_SPLIT,
    TaskonomyOptions,
    building_lists,
    check_taskonomy,
    domain_folder,
    file_domains,
    file_suffixes,
    read_split_csv,
    resolve_layout,
)
from ..errors import DataError
from ..schema import TaskConfig
from .base import TaskData
from .celeba import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TaskonomyDataset", "TaskonomyOptions", "TaskonomyImages", "TINY_SPLIT", "DOMAIN_TYPES", "read_split_csv"]

_logger = logging.getLogger(__name__)

_SAMPLE = re.compile(r"^(point_\d+_view_\d+)_domain_rgb\.png$")

# building id -> {domain: (folder, the domain's name in its file names)}
Folders = list[dict[str, tuple[str, str]]]


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

    Holds only the index (building number and sample prefix per sample, as numpy arrays, and each
    building's folder per domain) and reads every file in ``__getitem__``. ``flip``: mirror a sample
    left-right with probability 1/2 (torch's random stream: a loader worker's own, seeded by the
    loader).
    """

    def __init__(
        self,
        folders: Folders,
        building_ids: np.ndarray,
        prefixes: np.ndarray,
        tasks: Sequence[TaskConfig],
        options: TaskonomyOptions,
        mask_from_depth: bool,
        flip: bool = False,
    ) -> None:
        self.folders = folders
        self.building_ids = building_ids
        self.prefixes = prefixes
        self.tasks = [(t.name, t.type, t.out_features, t.ignore_index) for t in tasks]
        self.stats = {t.name: options.stats(t.name) for t in tasks if t.type in STATS_TYPES}
        self.size = options.size
        self.depth_scale = options.depth_scale
        self.depth_missing = options.depth_missing
        self.depth_limit = options.depth_limit
        self.segment_ignore = list(options.segment_ignore)
        self.mask_from_depth = mask_from_depth
        self.flip = flip
        unit = options.inputs == "unit"
        self.mean = torch.zeros(3, 1, 1) if unit else torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.ones(3, 1, 1) if unit else torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return int(self.prefixes.shape[0])

    def path(self, index: int, domain: str) -> str:
        folder, name = self.folders[int(self.building_ids[index])][domain]
        prefix = self.prefixes[index].decode()
        return os.path.join(folder, f"{prefix}_domain_{name}.png")

    def missing_depth(self, raw: np.ndarray) -> np.ndarray:
        """bool, True where a depth file holds no depth: ``depth_missing``, or ``depth_limit`` and above."""
        values = raw.astype(np.int64)
        missing = values == self.depth_missing
        if self.depth_limit is not None:
            missing |= values >= self.depth_limit
        return missing

    def _invalid(self, index: int, depth: np.ndarray | None) -> torch.Tensor | None:
        """(1, S, S) bool: pixels without depth (None when no mask applies)."""
        if depth is None and self.mask_from_depth:
            depth = _read_png(self.path(index, "depth_zbuffer"))
        if depth is None:
            return None
        missing = torch.from_numpy(self.missing_depth(depth)[None].astype(np.float32))
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
                if raw.ndim != 2:
                    raise DataError(f"{path}: expected a single-channel 16-bit image, got shape {raw.shape}")
                depth_raw = raw if name == "depth_zbuffer" else depth_raw
                value = raw.astype(np.float32)
                value[self.missing_depth(raw)] = np.nan
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
                value = raw.astype(np.float32)
                stats = self.stats[name]
                value = (value - stats[0]) / stats[1] if stats is not None else value / 65535.0
                t = _resize(torch.from_numpy(value)[None], self.size, "bilinear")
            targets[name] = t
        if "normal" in targets:
            invalid = self._invalid(index, depth_raw)
            if invalid is not None:
                targets["normal"] = targets["normal"].masked_fill(invalid.expand(3, -1, -1), float("nan"))
        if self.flip and bool(torch.rand(()) < 0.5):
            x, targets = mirror(x, targets)
        return x, targets


def mirror(x: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A sample mirrored left-right: every map flipped along its width; the normals' x component (the
    first channel, pointing right in the camera frame) changes sign, as in the reference code."""
    out = {name: t.flip(-1) for name, t in targets.items()}  # flip copies: the targets are left as they are
    if "normal" in out:
        out["normal"][0].neg_()
    return x.flip(-1), out


class TaskonomyDataset:
    """Taskonomy dense tasks (see the module docstring)."""

    Options: ClassVar[type[BaseModel]] = TaskonomyOptions

    def check(self, options: TaskonomyOptions, tasks: Sequence[TaskConfig]) -> None:
        check_taskonomy(options, tasks)

    def _index(
        self, root: Path, layout: str, buildings: Sequence[str], domains: Sequence[str], mask_domain: str | None
    ) -> tuple[np.ndarray, np.ndarray, Folders]:
        ids: list[int] = []
        prefixes: list[str] = []
        folders: Folders = []
        for b, building in enumerate(buildings):
            if layout == "building" and not (root / building).is_dir():
                raise DataError(f"{root / building}: building folder not found")
            rgb_dir = domain_folder(root, layout, building, "rgb")
            if not rgb_dir.is_dir():
                raise DataError(f"{rgb_dir}: building {building!r} has no rgb folder ({layout} layout)")
            found = sorted(m.group(1) for f in os.listdir(rgb_dir) if (m := _SAMPLE.match(f)))
            if not found:
                raise DataError(f"{rgb_dir}: no images named point_<i>_view_<j>_domain_rgb.png")
            where = {"rgb": (str(rgb_dir), "rgb")}
            keep = set(found)
            for domain in [*domains, *([mask_domain] if mask_domain else [])]:
                task_dir = domain_folder(root, layout, building, domain)
                if not task_dir.is_dir():
                    raise DataError(f"{task_dir}: building {building!r} has no {domain} folder ({layout} layout)")
                name, present = _named_files(task_dir, domain)
                where[domain] = (str(task_dir), name)
                lacking = keep - present
                if lacking:
                    _logger.warning(
                        "%s: %d samples have no %s file (e.g. %s_domain_%s.png); skipped",
                        task_dir,
                        len(lacking),
                        domain,
                        sorted(lacking)[0],
                        name,
                    )
                keep &= present
            chosen = [p for p in found if p in keep]
            ids += [b] * len(chosen)
            prefixes += chosen
            folders.append(where)
        return np.asarray(ids, dtype=np.int32), np.asarray(prefixes, dtype="S"), folders

    def load(self, options: TaskonomyOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        self.check(options, tasks)
        root = Path(options.root)
        layout = resolve_layout(root, options.layout)
        lists = building_lists(options)
        domains = [t.name for t in tasks]
        needs_mask = "normal" in domains and options.normal_mask == "depth" and "depth_zbuffer" not in domains
        parts: dict[str, TaskonomyImages] = {}
        counts: dict[str, dict[str, int]] = {}
        for split in ("train", "val", "test"):
            buildings = lists[split]
            if not buildings:
                raise DataError(f"the Taskonomy {split} split lists no buildings")
            mask_from_depth = needs_mask and all(
                domain_folder(root, layout, b, "depth_zbuffer").is_dir() for b in buildings
            )
            mask = "depth_zbuffer" if mask_from_depth else None
            ids, prefixes, folders = self._index(root, layout, buildings, domains, mask)
            if options.limit is not None:
                ids, prefixes = ids[: options.limit], prefixes[: options.limit]
            if len(prefixes) == 0:
                raise DataError(f"{root}: the {split} buildings hold no complete sample")
            counts[split] = {b: int((ids == i).sum()) for i, b in enumerate(buildings)}
            flip = options.flip and split == "train"
            parts[split] = TaskonomyImages(folders, ids, prefixes, tasks, options, mask_from_depth, flip)
        info: dict[str, Any] = {
            "root": str(root),
            "layout": layout,
            "size": options.size,
            "samples_per_building": counts,
            "targets": {t.name: _target_rule(options, t) for t in tasks},
        }
        return TaskData(parts["train"], parts["val"], parts["test"], (3, options.size, options.size), info=info)


def _named_files(folder: Path, domain: str) -> tuple[str, set[str]]:
    """The name ``domain`` has in ``folder``'s file names and the sample prefixes it holds a file for.

    Every spelling of :func:`~dmtg_nas.catalog.images.file_domains` is looked for; a folder mixing two
    is an error (one copy, one naming)."""
    spellings = file_domains(domain)
    suffixes = file_suffixes(domain)
    present: dict[str, set[str]] = {name: set() for name in spellings}
    for f in os.listdir(folder):
        for name, suffix in suffixes.items():
            if f.endswith(suffix) and _SAMPLE.match(f[: -len(suffix)] + "_domain_rgb.png"):
                present[name].add(f[: -len(suffix)])
    used = [name for name in spellings if present[name]]
    if len(used) > 1:
        raise DataError(
            f"{folder}: mixes file names ..._domain_{used[0]}.png and ..._domain_{used[1]}.png; keep one naming"
        )
    name = used[0] if used else spellings[0]
    return name, present[name]


def _target_rule(options: TaskonomyOptions, task: TaskConfig) -> str:
    """How a task's target is made from its file (recorded in the run's data info)."""
    if task.type == "depth":
        limit = f" or >= {options.depth_limit}" if options.depth_limit is not None else ""
        return f"value / {options.depth_scale:g} (metres); {options.depth_missing}{limit} missing"
    if task.type in STATS_TYPES:
        stats = options.stats(task.name)
        return f"(value - {stats[0]:g}) / {stats[1]:g}" if stats is not None else "value / 65535"
    if task.type == "normals":
        return "value / 127.5 - 1"
    return f"class ids; {options.segment_ignore} ignored"
