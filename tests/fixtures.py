"""Tiny data sets in the real on-disk formats (real JPEG/PNG files, real index files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


TASKONOMY_DOMAINS = ("depth_zbuffer", "normal", "segment_semantic", "keypoints2d", "edge_texture")


def write_taskonomy(
    root: Path,
    buildings: dict[str, int],
    size: int = 32,
    classes: int = 18,
    seed: int = 0,
    domains: Sequence[str] = TASKONOMY_DOMAINS,
    unique: int | None = None,
) -> Path:
    """A Taskonomy folder: ``<root>/<building>/<domain>/point_<i>_view_<j>_domain_<domain>.png`` with
    RGB PNGs (rgb, normal), 16-bit PNGs (depth_zbuffer with 65535 = missing, keypoints2d,
    edge_texture) and 8-bit label PNGs (segment_semantic). Targets are simple functions of the image
    (a bright square is near, one class, edged), so they are learnable. ``unique`` draws that many
    distinct samples per building and copies their files' bytes for the rest (fast for many samples)."""
    rng = np.random.default_rng(seed)
    for building, count in buildings.items():
        for d in ("rgb", *domains):
            (root / building / d).mkdir(parents=True, exist_ok=True)
        for s in range(count):
            prefix = f"point_{s}_view_{s % 3}"
            if unique is not None and s >= unique:
                source = f"point_{s % unique}_view_{(s % unique) % 3}"
                for d in ("rgb", *domains):
                    folder = root / building / d
                    (folder / f"{prefix}_domain_{d}.png").write_bytes(
                        (folder / f"{source}_domain_{d}.png").read_bytes()
                    )
                continue
            y0, x0 = rng.integers(0, size // 2, 2)
            square = np.zeros((size, size), bool)
            square[y0 : y0 + size // 2, x0 : x0 + size // 2] = True
            rgb = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
            rgb[square] += 150
            Image.fromarray(rgb).save(root / building / "rgb" / f"{prefix}_domain_rgb.png")
            files: dict[str, Image.Image] = {}
            depth = np.where(square, 1000, 3000).astype(np.uint16)
            depth[:2, :] = 65535  # missing depth along the top rows
            files["depth_zbuffer"] = Image.fromarray(depth)
            normal = np.full((size, size, 3), 128, np.uint8)
            normal[square] = (128, 128, 255)
            normal[~square] = (128, 255, 128)
            files["normal"] = Image.fromarray(normal)
            labels = np.where(square, 3, 1).astype(np.uint8)
            labels[-2:, :] = 0  # unlabelled bottom rows
            files["segment_semantic"] = Image.fromarray(labels)
            keypoints = np.zeros((size, size), np.uint16)
            keypoints[y0, x0] = 65535
            files["keypoints2d"] = Image.fromarray(keypoints)
            edges = (square ^ np.roll(square, 1, axis=0)).astype(np.uint16) * 65535
            files["edge_texture"] = Image.fromarray(edges)
            for d in domains:
                files[d].save(root / building / d / f"{prefix}_domain_{d}.png")
    return root
