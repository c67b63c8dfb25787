"""The image data sets a spec can name, as the spec layer sees them: ``celeba`` and ``taskonomy``
(their options and the checks of their folders and task names; :mod:`dmtg_nas.data` loads them)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ..errors import DataError, SpecError, allowed, file_problem, suggest
from ..schema import StrictModel, TaskConfig

__all__ = [
    "DOMAIN_TYPES",
    "FILE_DOMAINS",
    "REFERENCE_STATS",
    "STATS_DOMAINS",
    "STATS_TYPES",
    "TASKONOMY_LAYOUTS",
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
    "domain_folder",
    "file_domains",
    "file_suffixes",
    "partition_file",
    "resolve_layout",
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
    # imagenet: (x / 255 - ImageNet mean) / std per channel; unit: x / 255 in [0, 1] (the DMTG code's inputs)
    inputs: Literal["imagenet", "unit"] = "imagenet"


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

# the task types whose 16-bit maps are standardised by (mean, std) (see TaskonomyOptions.normalize),
# and their domains (those target_stats may name)
STATS_TYPES = ("keypoints", "edges")
STATS_DOMAINS = tuple(domain for domain, kind in DOMAIN_TYPES.items() if kind in STATS_TYPES)

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


# How the folders of a Taskonomy copy are arranged (``auto``: found from the root, see :func:`resolve_layout`):
# building: <root>/<building>/<domain>/ (one building of the release, e.g. the sample building)
# domain: <root>/<domain>/<building>/ (the layout Standley et al.'s loader walks: <root>/rgb/<building>/)
# omnidata: <root>/<domain>/taskonomy/<building>/ (what ``omnitools.download --components taskonomy`` writes)
TASKONOMY_LAYOUTS = ("building", "domain", "omnidata")

# The name a domain has inside its file names where it differs from the folder's: the release names
# the segmentation files point_<i>_view_<j>_domain_segmentsemantic.png (folder segment_semantic).
# Every spelling listed is read (the release's first); other domains use the folder's name.
FILE_DOMAINS: dict[str, tuple[str, ...]] = {"segment_semantic": ("segmentsemantic", "segment_semantic")}

# (mean, std) of the 16-bit maps in the reference code (Standley et al.'s taskonomy_loader.py, also
# DMTG's preprocess_taskonomy.py): the target is (value - mean) / std
REFERENCE_STATS: dict[str, tuple[float, float]] = {
    "keypoints2d": (50.0, 100.0),
    "edge_texture": (718.0, 1070.0),
    "edge_occlusion": (56.0248, 239.1265),
}
# the reference code's valid-depth rule: depth (1/512 m units) below 2**13, i.e. nearer than 16 m
REFERENCE_DEPTH_LIMIT = 2**13


def file_domains(domain: str) -> tuple[str, ...]:
    """The names ``domain`` may have in file names, the release's first."""
    return FILE_DOMAINS.get(domain, (domain,))


def file_suffixes(domain: str) -> dict[str, str]:
    """Each name of :func:`file_domains` and the end of its files' names, ``_domain_<name>.png``."""
    return {name: f"_domain_{name}.png" for name in file_domains(domain)}


class TaskonomyOptions(StrictModel):
    root: str = Field(min_length=1)
    split: str = "tiny"  # 'tiny' (shipped lists) or a split CSV (name,is_train,is_val,is_test)
    buildings: BuildingLists | None = None  # explicit lists (override split)
    layout: Literal["auto", "building", "domain", "omnidata"] = "auto"  # see TASKONOMY_LAYOUTS
    size: int = Field(default=256, ge=16, le=2048)
    depth_scale: float = Field(default=512.0, gt=0)  # file units per metre
    depth_missing: int = Field(default=65535, ge=0, le=65535)  # depth file value meaning "no data"
    # depth file values at or above this are missing too (the reference: 2**13, 16 m); null: only depth_missing
    depth_limit: int | None = Field(default=REFERENCE_DEPTH_LIMIT, ge=1, le=65535)
    normal_mask: Literal["depth", "none"] = "depth"
    segment_ignore: list[Annotated[int, Field(ge=0, le=65535)]] = Field(default_factory=lambda: [0, 255])
    # keypoints and edges: reference: (value - mean) / std with the reference code's statistics
    # (REFERENCE_STATS, overridden or extended by target_stats); unit: value / 65535 in [0, 1]
    normalize: Literal["reference", "unit"] = "reference"
    target_stats: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(default_factory=dict)
    # imagenet: (rgb / 255 - ImageNet mean) / std; unit: rgb / 255 in [0, 1] (the reference code's inputs)
    inputs: Literal["imagenet", "unit"] = "imagenet"
    flip: bool = False  # training images and their targets mirrored left-right at random (p = 0.5)
    limit: int | None = Field(default=None, ge=1, le=1_000_000_000)  # at most this many samples per split

    def stats(self, domain: str) -> tuple[float, float] | None:
        """(mean, std) that standardise ``domain``'s 16-bit map; None: scaled by 1/65535."""
        if self.normalize == "unit":
            return None
        if domain in self.target_stats:
            mean, std = self.target_stats[domain]
            return mean, std
        return REFERENCE_STATS.get(domain)

    @field_validator("target_stats")
    @classmethod
    def _positive_std(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, (_, std) in value.items():
            if not std > 0:
                raise ValueError(f"{name}: the std (second value) must be > 0, got {std}")
        return value


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


def resolve_layout(root: Path, layout: str) -> str:
    """The layout of the copy under ``root``: ``layout`` itself, or for ``auto`` ``omnidata`` when
    ``root/rgb/taskonomy`` is a folder, ``domain`` when ``root/rgb`` is, else ``building``."""
    if layout != "auto":
        return layout
    if (root / "rgb" / "taskonomy").is_dir():
        return "omnidata"
    if (root / "rgb").is_dir():
        return "domain"
    return "building"


def domain_folder(root: Path, layout: str, building: str, domain: str) -> Path:
    """The folder holding ``building``'s files of ``domain`` in ``layout`` (a resolved layout)."""
    if layout == "building":
        return root / building / domain
    if layout == "domain":
        return root / domain / building
    return root / domain / "taskonomy" / building


def _has_named_file(folder: Path, domain: str) -> bool:
    """Whether ``folder`` holds at least one ``point_<i>_view_<j>_domain_<name>.png`` for a name of
    ``domain`` (stops at the first)."""
    suffixes = tuple(file_suffixes(domain).values())
    with os.scandir(folder) as entries:
        return any(e.name.startswith("point_") and e.name.endswith(suffixes) for e in entries)


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
    dense_16bit = [t.name for t in tasks if t.type in STATS_TYPES]
    for name in options.target_stats:
        if name not in STATS_DOMAINS:
            raise SpecError(
                f"target_stats applies to the keypoints and edges domains, not {name!r}",
                key=f"dataset.target_stats.{name}",
            )
    for name in dense_16bit:
        if options.normalize == "reference" and options.stats(name) is None:
            raise SpecError(
                f"the reference code has no statistics for {name!r}: give dataset.target_stats.{name}: "
                "[mean, std] (of its 16-bit values), or normalize: unit",
                key="dataset.normalize",
            )
    root = Path(options.root)
    if not root.is_dir():
        raise SpecError(f"Taskonomy root folder not found: {root}", key="dataset.root")
    layout = resolve_layout(root, options.layout)
    for split, buildings in building_lists(options).items():
        if not buildings:
            raise SpecError(f"the {split} split lists no buildings", key="dataset.buildings")
        for building in buildings:
            if layout == "building" and not (root / building).is_dir():
                raise DataError(f"{root / building}: building folder not found ({split} split)")
            for domain in ("rgb", *(t.name for t in tasks)):
                folder = domain_folder(root, layout, building, domain)
                if not folder.is_dir():
                    raise DataError(f"{folder}: building {building!r} has no {domain} folder ({layout} layout)")
                if not _has_named_file(folder, domain):
                    spelled = " or ".join(f"point_<i>_view_<j>_domain_{n}.png" for n in file_domains(domain))
                    raise DataError(f"{folder}: no file named {spelled}")
