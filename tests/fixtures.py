"""Tiny data sets in the real on-disk formats (real JPEG/PNG files, real index files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dmtg_nas.data.celeba import CELEBA_ATTRIBUTES


def write_celeba(
    root: Path, n: int = 60, partition: Sequence[int] = (0.6, 0.2, 0.2), seed: int = 0, unique_images: int | None = None
) -> Path:
    """A CelebA folder: ``img_align_celeba/*.jpg`` (178x218), ``list_attr_celeba.txt`` and
    ``list_eval_partition.txt``. ``Black_Hair`` darkens the top of the image and ``Smiling`` brightens
    its bottom, so both are learnable; other attributes are random. ``unique_images`` writes that many
    distinct JPEGs and copies their bytes for the rest (fast for big indices)."""
    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    labels = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRIBUTES)))
    black, smiling = CELEBA_ATTRIBUTES.index("Black_Hair"), CELEBA_ATTRIBUTES.index("Smiling")
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    distinct = n if unique_images is None else min(unique_images, n)
    blobs: list[bytes] = []
    for i, name in enumerate(names):
        path = images / name
        if i < distinct:
            pixels = rng.integers(90, 160, size=(218, 178, 3)).astype(np.uint8)
            if labels[i, black] > 0:
                pixels[:80] //= 4
            if labels[i, smiling] > 0:
                pixels[150:] = np.minimum(255, pixels[150:].astype(int) + 90).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
            blobs.append(path.read_bytes())
        else:
            path.write_bytes(blobs[i % distinct])
            labels[i] = labels[i % distinct]
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, labels)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    cuts = np.cumsum([round(f * n) for f in partition])
    part = np.searchsorted(cuts, np.arange(n), side="right").clip(0, 2)
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {p}\n" for name, p in zip(names, part)))
    return root


def celeba_doc(
    root: Path, tasks: Sequence[str], *, dataset: Mapping[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A CelebA spec as a mapping: the attributes ``tasks`` as binary tasks on the folder ``root`` at
    32x32, ``celeba_resnet`` of width 8, K=2, one epoch of ``dmtg`` without fine-tuning. ``dataset``
    entries are added to the dataset's; ``overrides`` replace top-level keys."""
    doc: dict[str, Any] = {
        "name": "celeba-test",
        "tasks": [{"name": t, "type": "binary"} for t in tasks],
        "dataset": {"name": "celeba", "root": str(root), "size": 32, **(dataset or {})},
        "backbone": {"name": "celeba_resnet", "width": 8},
        "branches": 2,
        "strategy": {"_base_": "dmtg", "epochs": 1, "batch_size": 16, "finetune": {"epochs": 0}},
    }
    doc.update(overrides)
    return doc


TASKONOMY_DOMAINS = ("depth_zbuffer", "normal", "segment_semantic", "keypoints2d", "edge_texture")
# the five dense tasks of those domains, as a spec declares them
TASKONOMY_TASKS = [
    {"name": "depth_zbuffer", "type": "depth"},
    {"name": "normal", "type": "normals"},
    {"name": "segment_semantic", "type": "segmentation", "num_classes": 18},
    {"name": "keypoints2d", "type": "keypoints"},
    {"name": "edge_texture", "type": "edges"},
]

# the release's name of a domain inside file names, where it differs from the folder's (the sample
# building github.com/alexsax/taskonomy-sample-model-1 has segment_semantic/point_0_view_0_domain_segmentsemantic.png)
RELEASE_FILE_NAMES = {"segment_semantic": "segmentsemantic"}

# keypoint and edge values of the fixture's 16-bit maps: of the size the release's maps have (the
# reference code standardises keypoints2d with (50, 100) and edge_texture with (718, 1070))
KEYPOINT_PEAK = 450
EDGE_VALUE = 2500


def taskonomy_folder(root: Path, layout: str, building: str, domain: str) -> Path:
    """Where a building's domain folder is in each layout of a Taskonomy copy."""
    if layout == "building":  # one building as released: <building>/<domain>/
        return root / building / domain
    if layout == "domain":  # Standley et al.'s loader: <root>/<domain>/<building>/
        return root / domain / building
    return root / domain / "taskonomy" / building  # omnitools.download: <root>/<domain>/taskonomy/<building>/


def write_taskonomy(
    root: Path,
    buildings: dict[str, int],
    size: int = 32,
    classes: int = 18,
    seed: int = 0,
    domains: Sequence[str] = TASKONOMY_DOMAINS,
    layout: str = "building",
    names: str = "release",
    unique: int | None = None,
) -> Path:
    """A Taskonomy folder with the release's file names: ``point_<i>_view_<j>_domain_<name>.png``
    where ``<name>`` is the domain, except ``segmentsemantic`` in the ``segment_semantic`` folder
    (``names="legacy"``: ``segment_semantic`` there too). ``layout``: ``building``
    (``<root>/<building>/<domain>/``), ``domain`` (``<root>/<domain>/<building>/``) or ``omnidata``
    (``<root>/<domain>/taskonomy/<building>/``).

    RGB PNGs (rgb, normal), 16-bit PNGs (depth_zbuffer in 1/512 m: 1000 and 3000, 65535 = missing
    along the top rows and 9000 (beyond the reference's 8192 limit) along the third row; keypoints2d
    with one peak of ``KEYPOINT_PEAK``; edge_texture ``EDGE_VALUE`` on the square's top and bottom
    edges) and 8-bit label PNGs (segment_semantic: 3 in the square, 1 elsewhere, 0 = uncertain along
    the bottom rows). Targets are simple functions of the image (a bright square is near, one class,
    edged), so they are learnable. ``unique`` draws that many distinct samples per building and copies
    their files' bytes for the rest (fast for many samples)."""
    rng = np.random.default_rng(seed)
    for building, count in buildings.items():
        for d in ("rgb", *domains):
            taskonomy_folder(root, layout, building, d).mkdir(parents=True, exist_ok=True)
        for s in range(count):
            prefix = f"point_{s}_view_{s % 3}"
            if unique is not None and s >= unique:
                source = f"point_{s % unique}_view_{(s % unique) % 3}"
                for d in ("rgb", *domains):
                    folder = taskonomy_folder(root, layout, building, d)
                    name = RELEASE_FILE_NAMES.get(d, d) if names == "release" else d
                    (folder / f"{prefix}_domain_{name}.png").write_bytes(
                        (folder / f"{source}_domain_{name}.png").read_bytes()
                    )
                continue
            y0, x0 = rng.integers(0, size // 2, 2)
            square = np.zeros((size, size), bool)
            square[y0 : y0 + size // 2, x0 : x0 + size // 2] = True
            rgb = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
            rgb[square] += 150
            Image.fromarray(rgb).save(taskonomy_folder(root, layout, building, "rgb") / f"{prefix}_domain_rgb.png")
            files: dict[str, Image.Image] = {}
            depth = np.where(square, 1000, 3000).astype(np.uint16)
            depth[:2, :] = 65535  # missing depth along the top rows
            depth[2, :] = 9000  # farther than 16 m: no depth by the reference's rule (< 2**13)
            files["depth_zbuffer"] = Image.fromarray(depth)
            normal = np.full((size, size, 3), 128, np.uint8)
            normal[square] = (128, 128, 255)
            normal[~square] = (255, 128, 128)
            files["normal"] = Image.fromarray(normal)
            labels = np.where(square, 3, 1).astype(np.uint8)
            labels[-2:, :] = 0  # uncertain bottom rows
            files["segment_semantic"] = Image.fromarray(labels)
            keypoints = np.zeros((size, size), np.uint16)
            keypoints[y0, x0] = KEYPOINT_PEAK
            files["keypoints2d"] = Image.fromarray(keypoints)
            edges = (square ^ np.roll(square, 1, axis=0)).astype(np.uint16) * EDGE_VALUE
            files["edge_texture"] = Image.fromarray(edges)
            for d in domains:
                name = RELEASE_FILE_NAMES.get(d, d) if names == "release" else d
                files[d].save(taskonomy_folder(root, layout, building, d) / f"{prefix}_domain_{name}.png")
    return root


def taskonomy_doc(
    root: Path,
    tasks: Sequence[Mapping[str, Any]] = TASKONOMY_TASKS,
    *,
    dataset: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Taskonomy spec as a mapping: ``tasks`` (the five dense tasks by default) on the folder
    ``root`` at 16x16 with buildings b1, b2 and b3 as train, val and test, a two-stage convnet, K=2,
    one epoch of ``dmtg`` without fine-tuning. ``dataset`` entries are added to the dataset's;
    ``overrides`` replace top-level keys."""
    doc: dict[str, Any] = {
        "name": "taskonomy-test",
        "tasks": [dict(t) for t in tasks],
        "dataset": {
            "name": "taskonomy",
            "root": str(root),
            "size": 16,
            "buildings": {"train": ["b1"], "val": ["b2"], "test": ["b3"]},
            **(dataset or {}),
        },
        "backbone": {"name": "convnet", "channels": [8, 8]},
        "branches": 2,
        "strategy": {"_base_": "dmtg", "epochs": 1, "batch_size": 4, "finetune": {"epochs": 0}},
    }
    doc.update(overrides)
    return doc
