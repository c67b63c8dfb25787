"""What CelebA's resized-image cache (``dataset.cache``) costs at full scale, from a measured part.

Writes ``--images`` JPEGs in the release's format (``img_align_celeba/*.jpg``, 178x218, the
index files) into a temporary folder, builds the cache of them at ``--size`` (one process below
5,000 images, as ``build_cache`` does), and extrapolates the build time and the file size to all
202,599 images of the release. Prints one line of results; the temporary folder is removed.

    python benchmarks/celeba_cache.py --images 3000 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmtg_nas.data.celeba import CELEBA_IMAGES


def measure(images: int, size: int, crop: int | None) -> dict[str, float]:
    """Write ``images`` fixture JPEGs, build their cache, and extrapolate to the whole release."""
    from dmtg_nas.data.celeba import build_cache
    from tests.fixtures import write_celeba

    root = Path(tempfile.mkdtemp(prefix="celeba-cache-"))
    try:
        write_celeba(root, n=images)
        folder = root / "img_align_celeba"
        files = np.array(sorted(os.listdir(folder)), dtype="S")
        jpeg_bytes = sum((folder / f.decode()).stat().st_size for f in files) / images
        started = time.perf_counter()
        path = build_cache(folder, files, size, crop, root / "cache")
        seconds = time.perf_counter() - started
        per_image = path.stat().st_size / images
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "images": images,
        "size": size,
        "jpeg_kb": round(jpeg_bytes / 1024, 1),
        "build_seconds": round(seconds, 6),
        "ms_per_image": round(1000 * seconds / images, 3),
        "bytes_per_image": round(per_image),
        "full_scale_seconds": round(seconds / images * CELEBA_IMAGES, 1),
        "full_scale_gb": round(per_image * CELEBA_IMAGES / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="fixture JPEGs to write and cache (default 3000)")
    parser.add_argument("--size", type=int, default=64, help="the cache's image side (default 64, as celeba40)")
    parser.add_argument("--crop", type=int, default=None, help="center crop before resizing (default none)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)
    result = measure(args.images, args.size, args.crop)
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
