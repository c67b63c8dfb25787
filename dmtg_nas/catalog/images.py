"""The image data sets a spec can name, as the spec layer sees them: ``celeba`` and ``taskonomy``
(their options and the checks of their folders and task names; :mod:`dmtg_nas.data` loads them)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..errors import DataError, SpecError, allowed, file_problem, suggest
from ..schema import StrictModel, TaskConfig

__all__ = [
    "DOMAIN_TYPES",
    "TINY_SPLIT",
    "BuildingLists",
    "CelebAOptions",
    "TaskonomyOptions",
    "attr_file",
    "attribute_names",
    "building_lists",
    "check_celeba",
    "check_celeba_layout",
    "check_taskonomy",
    "partition_file",
    "read_split_csv",
]


# ----------------------------------------------------------------------------------------------
# celeba: CelebA attributes
# ----------------------------------------------------------------------------------------------


class CelebAOptions(StrictModel):
    root: str = Field(min_length=1)
    size: int = Field(default=64, ge=8, le=1024)  # images are resized to size x size
    crop: int | None = Field(default=None, ge=8, le=65_536)  # centred square crop of this side before resizing
    cache: str | None = None  # folder for a one-time resized uint8 cache (memory-mapped)
    limit: int | None = Field(default=None, ge=1, le=1_000_000_000)  # use at most this many images per split


def attr_file(root: Path) -> Path:
    return root / "list_attr_celeba.txt"


def partition_file(root: Path) -> Path:
    return root / "list_eval_partition.txt"


def check_celeba_layout(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: CelebA root folder not found")
    for path in (attr_file(root), partition_file(root)):
        if (what := file_problem(path)) == "file not found":
            raise DataError(f"{path}: missing CelebA file (expected under the root: {path.name})")
        if what is not None:
            raise DataError(f"{path}: CelebA file {what}")
    if not (root / "img_align_celeba").is_dir():
        raise DataError(f"{root / 'img_align_celeba'}: missing CelebA image folder")


def attribute_names(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        first, second = handle.readline(), handle.readline()
    try:
        int(first.split()[0])
    except (IndexError, ValueError):
        raise DataError(f"{path}: line 1 must be the image count, got {first.strip()[:40]!r}") from None
    names = second.split()
    if not names:
        raise DataError(f"{path}: line 2 must list the attribute names")
    return names


def check_celeba(options: CelebAOptions, tasks: Sequence[TaskConfig]) -> None:
    for i, task in enumerate(tasks):
        if task.type != "binary":
            raise SpecError(f"CelebA attributes are binary tasks, not {task.type}", key=f"tasks[{i}].type")
    root = Path(options.root)
    if not root.is_dir():
        raise SpecError(f"CelebA root folder not found: {root}", key="dataset.root")
    try:
        check_celeba_layout(root)
        names = attribute_names(attr_file(root))
    except DataError as exc:
        raise SpecError(str(exc), key="dataset.root") from None
    for i, task in enumerate(tasks):
        if task.name not in names:
            raise SpecError(
                f"CelebA has no attribute {task.name!r}{suggest(task.name, names)}; allowed: {allowed(names)}",
                key=f"tasks[{i}].name",
            )


# ----------------------------------------------------------------------------------------------
# taskonomy: Taskonomy dense tasks
# ----------------------------------------------------------------------------------------------

DOMAIN_TYPES = {
    "depth_zbuffer": "depth",
    "depth_euclidean": "depth",
    "normal": "normals",
    "segment_semantic": "segmentation",
    "keypoints2d": "keypoints",
    "keypoints3d": "keypoints",
    "edge_texture": "edges",
    "edge_occlusion": "edges",
}

# The "tiny" split of Taskonomy (Zamir et al. 2018), as used by Standley et al. 2020, TAG and DMTG.
TINY_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "allensville",
        "beechwood",
        "benevolence",
        "coffeen",
        "cosmos",
        "forkland",
        "hanson",
        "hiteman",
        "klickitat",
        "lakeville",
        "leonardo",
        "lindenwood",
        "marstons",
        "merom",
        "mifflinburg",
        "newfields",
        "onaga",
        "pinesdale",
        "pomaria",
        "ranchester",
        "shelbyville",
        "stockman",
        "tolstoy",
        "wainscott",
        "woodbine",
    ),
    "val": ("collierville", "corozal", "darden", "markleeville", "wiconisco"),
    "test": ("ihlen", "mcdade", "muleshoe", "noxapater", "uvalda"),
}


class BuildingLists(StrictModel):
    train: list[str] = Field(min_length=1)
    val: list[str] = Field(min_length=1)
    test: list[str] = Field(min_length=1)


class TaskonomyOptions(StrictModel):
    root: str = Field(min_length=1)
    split: str = "tiny"  # 'tiny' (shipped lists) or a split CSV (name,is_train,is_val,is_test)
    buildings: BuildingLists | None = None  # explicit lists (override split)
    size: int = Field(default=256, ge=16, le=2048)
    depth_scale: float = Field(default=512.0, gt=0)  # file units per metre
    depth_missing: int = Field(default=65535, ge=0, le=65535)  # depth file value meaning "no data"
    normal_mask: Literal["depth", "none"] = "depth"
    segment_ignore: list[Annotated[int, Field(ge=0, le=65535)]] = Field(default_factory=lambda: [0, 255])
    limit: int | None = Field(default=None, ge=1, le=1_000_000_000)  # at most this many samples per split


def read_split_csv(path: Path) -> dict[str, list[str]]:
    """Taskonomy's split CSV: ``name,is_train,is_val,is_test`` (a header line is skipped)."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].strip().lower() in ("", "id", "name", "building"):
                    continue
                if len(row) < 4:
                    raise DataError(f"{path}: line {line_no} must be 'name,is_train,is_val,is_test'")
                for split, flag in zip(("train", "val", "test"), row[1:4]):
                    if flag.strip() in ("1", "True", "true"):
                        out[split].append(row[0].strip())
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: the split file is not UTF-8 text") from None
    return out


def building_lists(options: TaskonomyOptions) -> dict[str, list[str]]:
    if options.buildings is not None:
        return options.buildings.model_dump()
    if options.split == "tiny":
        return {k: list(v) for k, v in TINY_SPLIT.items()}
    try:
        path = Path(options.split).expanduser()
    except RuntimeError:  # ~user without a home folder
        path = Path(options.split)
    if (what := file_problem(path)) is not None:
        raise SpecError(f"split must be 'tiny' or a split CSV file; {what}: {path}", key="dataset.split")
    return read_split_csv(path)


def check_taskonomy(options: TaskonomyOptions, tasks: Sequence[TaskConfig]) -> None:
    names = list(DOMAIN_TYPES)
    for i, task in enumerate(tasks):
        if task.name not in DOMAIN_TYPES:
            raise SpecError(
                f"Taskonomy has no domain {task.name!r}{suggest(task.name, names)}; allowed: {allowed(names)}",
                key=f"tasks[{i}].name",
            )
        expected = DOMAIN_TYPES[task.name]
        if task.type != expected:
            raise SpecError(f"Taskonomy's {task.name!r} is a {expected} task, not {task.type}", key=f"tasks[{i}].type")
    root = Path(options.root)
    if not root.is_dir():
        raise SpecError(f"Taskonomy root folder not found: {root}", key="dataset.root")
    for split, buildings in building_lists(options).items():
        if not buildings:
            raise SpecError(f"the {split} split lists no buildings", key="dataset.buildings")
        for building in buildings:
            folder = root / building
            if not folder.is_dir():
                raise DataError(f"{folder}: building folder not found ({split} split)")
            for domain in ("rgb", *(t.name for t in tasks)):
                if not (folder / domain).is_dir():
                    raise DataError(f"{folder / domain}: building {building!r} has no {domain} folder")
