"""``celeba``: CelebA face attributes from a local copy in the standard on-disk layout.

Reads, under ``root``:

- ``img_align_celeba/*.jpg``: the aligned 178x218 JPEGs (``000001.jpg`` ...);
- ``list_attr_celeba.txt``: line 1 the image count, line 2 the 40 attribute names, then one line per
  image: file name and 40 values of 1 or -1, separated by spaces;
- ``list_eval_partition.txt``: file name and 0/1/2 (train/valid/test) per line.

The identity, bounding-box and landmark files are not needed (``torchvision.datasets.CelebA``
insists on them and on their MD5 sums; this reader does not, so partial copies work). Nothing is
ever downloaded.

Tasks are attribute names (any subset of the 40, as binary tasks; did-you-mean on typos). Images
are resized to ``size`` x ``size`` (64 in the TAG/DMTG setup; ``crop`` first takes a centred square
of that side) and normalised with ImageNet's mean and std (``inputs: unit``: scaled to [0, 1] only, as
DMTG's code feeds them).

Memory: the index is two numpy arrays (file names as fixed-width bytes and the attribute matrix as
int8: about 10 MB for all 202,599 images) and images stream from disk in ``__getitem__``, so
DataLoader workers share the index copy-on-write and memory does not grow with the number of images.
``cache: DIR`` builds, once, a uint8 array of every resized image in ``DIR`` (12 KB per image at
64x64: 2.5 GB for CelebA) and then reads images from it through a memory map instead of decoding
JPEGs (file-backed pages that the OS can reclaim; see the README for the measured speed-up).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import Dataset

from ..catalog.images import (
    CelebAOptions,
    attr_file,
    attribute_names,
    check_celeba,
    check_celeba_layout,
    partition_file,
)
from ..errors import DataError, suggest
from ..schema import TaskConfig
from .base import TaskData

__all__ = ["CelebADataset", "CelebAOptions", "CelebAImages", "read_celeba_index", "CELEBA_ATTRIBUTES"]

_logger = logging.getLogger(__name__)

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]

CELEBA_IMAGES = 202_599  # images in the release (its three partitions together)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = {"train": 0, "val": 1, "test": 2}


def read_celeba_index(root: Path, attributes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse the attribute and partition files.

    Returns ``files`` (n,) fixed-width bytes, ``labels`` (n, len(attributes)) int8 in {0, 1} and
    ``partition`` (n,) int8 in {0, 1, 2}. Errors name the file and line.
    """
    check_celeba_layout(root)
    attr_path, part_path = attr_file(root), partition_file(root)
    names = attribute_names(attr_path)
    columns = []
    for a in attributes:
        if a not in names:
            raise DataError(f"{attr_path}: no attribute {a!r}{suggest(a, names)}")
        columns.append(names.index(a))
    files: list[str] = []
    rows: list[list[int]] = []
    with attr_path.open(encoding="utf-8") as handle:
        count = int(handle.readline().split()[0])
        handle.readline()
        for line_no, line in enumerate(handle, start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise DataError(f"{attr_path}: line {line_no} has {len(parts) - 1} values, expected {len(names)}")
            try:
                values = [int(parts[1 + c]) for c in columns]
            except ValueError:
                raise DataError(f"{attr_path}: line {line_no}: values must be 1 or -1") from None
            if any(v not in (1, -1) for v in values):
                raise DataError(f"{attr_path}: line {line_no}: values must be 1 or -1")
            files.append(parts[0])
            rows.append(values)
    if count != len(files):
        raise DataError(f"{attr_path}: line 1 announces {count} images, the file lists {len(files)}")
    partition_of: dict[str, int] = {}
    with part_path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{part_path}: line {line_no} must be '<file name> 0|1|2', got {line.strip()[:60]!r}")
            partition_of[parts[0]] = int(parts[1])
    missing = [f for f in files if f not in partition_of]
    if missing:
        raise DataError(f"{part_path}: no partition for {len(missing)} images of {attr_path.name}, e.g. {missing[0]}")
    labels = (np.asarray(rows, dtype=np.int8).reshape(len(files), len(columns)) > 0).astype(np.int8)
    partition = np.fromiter((partition_of[f] for f in files), dtype=np.int8, count=len(files))
    return np.asarray(files, dtype="S"), labels, partition


def load_image(path: str, size: int, crop: int | None) -> np.ndarray:
    """Read one image as uint8 (3, size, size): optional centred square crop, then bilinear resize."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as source:
            img = source.convert("RGB")
            if crop is not None:
                w, h = img.size
                side = min(crop, w, h)
                left, top = (w - side) // 2, (h - side) // 2
                img = img.crop((left, top, left + side, top + side))
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return array.transpose(2, 0, 1)


class CelebAImages(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """One CelebA split: yields ``(x (3, size, size) float, {attribute: 0./1.})``.

    Holds only numpy arrays (file names, labels), never decoded images; with ``cache_file`` set,
    images come from a uint8 memory map of shape (N, 3, size, size) indexed by ``rows``.
    """

    def __init__(
        self,
        image_dir: Path,
        files: np.ndarray,
        labels: np.ndarray,
        tasks: Sequence[str],
        size: int,
        crop: int | None,
        cache_file: Path | None = None,
        rows: np.ndarray | None = None,
        inputs: str = "imagenet",
    ) -> None:
        self.image_dir = str(image_dir)
        self.files = files
        self.labels = labels.astype(np.float32)
        self.tasks = tuple(tasks)
        self.size = size
        self.crop = crop
        self.cache_file = str(cache_file) if cache_file is not None else None
        self.rows = rows
        self._cache: np.ndarray | None = None
        if inputs == "unit":  # x / 255 in [0, 1], as DMTG's code feeds CelebA
            self.mean = np.zeros((3, 1, 1), dtype=np.float32)
            self.std = np.full((3, 1, 1), 255.0, dtype=np.float32)
        else:
            self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1) * 255.0
            self.std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1) * 255.0

    def __len__(self) -> int:
        return int(self.files.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # reopen the memory map in each worker
        return state

    def image(self, index: int) -> np.ndarray:
        """uint8 (3, size, size)."""
        if self.cache_file is not None and self.rows is not None:
            if self._cache is None:
                self._cache = np.load(self.cache_file, mmap_mode="r")
            return np.asarray(self._cache[int(self.rows[index])])
        name = self.files[index].decode()
        return load_image(os.path.join(self.image_dir, name), self.size, self.crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = (self.image(index).astype(np.float32) - self.mean) / self.std
        y = self.labels[index]
        return torch.from_numpy(x), {name: torch.tensor(y[j]) for j, name in enumerate(self.tasks)}


def _cache_path(folder: Path, files: np.ndarray, size: int, crop: int | None) -> tuple[Path, str]:
    digest = hashlib.sha1(b"\n".join(files.tolist())).hexdigest()[:12]
    suffix = f"-crop{crop}" if crop else ""
    return folder / f"celeba-{size}x{size}{suffix}-{digest}.npy", digest


def build_cache(image_dir: Path, files: np.ndarray, size: int, crop: int | None, folder: Path) -> Path:
    """Write every image of ``files``, resized, to one uint8 ``.npy`` (N, 3, size, size) in ``folder``
    (once; later calls find it). Returns its path."""
    path, _ = _cache_path(folder, files, size, crop)
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == (len(files), 3, size, size):
            return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the cache folder ({exc.strerror})") from None
    tmp = path.with_name(path.stem + ".partial.npy")
    _logger.info("building the CelebA cache %s (%d images)", path, len(files))
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size))
    source = CelebAImages(image_dir, files, np.zeros((len(files), 0), np.int8), (), size, crop)
    workers = min(8, os.cpu_count() or 1) if len(files) > 5000 else 0
    loader = torch.utils.data.DataLoader(
        _RawImages(source), batch_size=256, num_workers=workers, collate_fn=lambda b: np.stack(b)
    )
    start = 0
    for batch in loader:
        out[start : start + len(batch)] = batch
        start += len(batch)
    out.flush()
    del out
    tmp.replace(path)
    return path


class _RawImages(Dataset[np.ndarray]):
    def __init__(self, source: CelebAImages) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.source.image(index)


def _check_images_present(image_dir: Path, files: np.ndarray, index: Path) -> None:
    """Fail before training when image files listed in the index are missing (one directory listing,
    cheap even for all of CelebA). Unreadable or corrupt files are found when they are decoded."""
    try:
        present = set(os.listdir(image_dir))
    except OSError as exc:
        raise DataError(f"{image_dir}: cannot list the image folder ({exc.strerror})") from None
    missing = [name for name in (f.decode() for f in files) if name not in present]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{image_dir}: {len(missing)} image files listed in {index.name} are missing: {shown}")


class CelebADataset:
    """CelebA attributes as binary tasks (see the module docstring)."""

    Options: ClassVar[type[BaseModel]] = CelebAOptions

    def check(self, options: CelebAOptions, tasks: Sequence[TaskConfig]) -> None:
        check_celeba(options, tasks)

    def load(self, options: CelebAOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        root = Path(options.root)
        names = [t.name for t in tasks]
        files, labels, partition = read_celeba_index(root, names)
        image_dir = root / "img_align_celeba"
        chosen: dict[str, np.ndarray] = {}
        for split, code in SPLITS.items():
            idx = np.flatnonzero(partition == code)
            if options.limit is not None:
                idx = idx[: options.limit]
            if len(idx) == 0:
                raise DataError(f"{partition_file(root)}: the {split} partition ({code}) has no images")
            chosen[split] = idx
        cache_file = None
        if options.cache is not None:
            cached, _ = _cache_path(Path(options.cache), files, options.size, options.crop)
            if not cached.is_file():
                _check_images_present(image_dir, files, attr_file(root))
            cache_file = build_cache(image_dir, files, options.size, options.crop, Path(options.cache))
        else:
            _check_images_present(image_dir, files[np.concatenate(list(chosen.values()))], attr_file(root))
        parts: dict[str, CelebAImages] = {}
        for split, idx in chosen.items():
            parts[split] = CelebAImages(
                image_dir,
                files[idx],
                labels[idx],
                names,
                options.size,
                options.crop,
                cache_file,
                rows=idx,
                inputs=options.inputs,
            )
        info = {
            "root": str(root),
            "size": options.size,
            "images": len(files),
            "positive_rate": {n: float(labels[:, j].mean()) for j, n in enumerate(names)},
            "cache": str(cache_file) if cache_file else None,
        }
        return TaskData(parts["train"], parts["val"], parts["test"], (3, options.size, options.size), info=info)
