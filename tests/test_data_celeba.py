"""CelebA: the standard layout read directly, errors naming paths, streaming memory, the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmtg_nas import DataError, SpecError, load_spec
from dmtg_nas.components import load_data
from dmtg_nas.data import make_loader
from dmtg_nas.data.celeba import CELEBA_ATTRIBUTES, read_celeba_index

from .conftest import ROOT
from .fixtures import celeba_doc, write_celeba


def _spec(root: Path, attributes=("Black_Hair", "Smiling"), **dataset):
    return celeba_doc(root, attributes, dataset=dataset)


def test_reads_partition_attributes_and_images(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba", n=50)
    data = load_data(load_spec(_spec(root)))
    assert data.sizes() == {"train": 30, "val": 10, "test": 10}
    assert data.input_shape == (3, 32, 32)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert set(y) == {"Black_Hair", "Smiling"} and float(y["Smiling"]) in (0.0, 1.0)
    # labels follow the attribute file (-1 -> 0, 1 -> 1), in file order within each partition
    files, labels, partition = read_celeba_index(root, ["Black_Hair", "Smiling"])
    raw = [line.split() for line in (root / "list_attr_celeba.txt").read_text().splitlines()[2:]]
    col = CELEBA_ATTRIBUTES.index("Smiling") + 1
    assert labels[:, 1].tolist() == [int(r[col] == "1") for r in raw]
    assert files[0] == b"000001.jpg" and sorted(set(partition.tolist())) == [0, 1, 2]
    test_labels = [float(data.test[i][1]["Black_Hair"]) for i in range(len(data.test))]  # type: ignore[arg-type]
    assert test_labels == labels[partition == 2, 0].astype(float).tolist()


def test_loader_with_workers_batches_dicts(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba", n=40)
    data = load_data(load_spec(_spec(root)))
    x, y = next(iter(make_loader(data.train, 8, shuffle=True, num_workers=2)))
    assert x.shape == (8, 3, 32, 32) and y["Black_Hair"].shape == (8,)


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"tasks": [{"name": "Black_Hiar", "type": "binary"}]}, "tasks[0].name", "did you mean 'Black_Hair'"),
        ({"tasks": [{"name": "Smiling", "type": "regression"}]}, "tasks[0].type", "binary tasks, not regression"),
        ({"dataset": {"name": "celeba", "root": "/nonexistent/celeba"}}, "dataset.root", "root folder not found"),
        ({"dataset": {"name": "celeba", "root": "{root}", "sise": 64}}, "dataset.sise", "did you mean 'size'"),
    ],
)
def test_spec_errors(tmp_path: Path, change, key, fragment) -> None:
    root = write_celeba(tmp_path / "celeba", n=10)
    doc = _spec(root)
    doc.update(change)
    if doc["dataset"].get("root") == "{root}":
        doc["dataset"]["root"] = str(root)
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    assert info.value.key == key and fragment in str(info.value)


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba", n=10)
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(SpecError, match=r"list_eval_partition\.txt: missing CelebA file"):
        load_spec(_spec(root))

    root = write_celeba(tmp_path / "c2", n=10)
    (root / "list_attr_celeba.txt").write_text("10\n" + " ".join(CELEBA_ATTRIBUTES) + "\n000001.jpg 1 -1\n")
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt: line 3 has 2 values, expected 40"):
        load_data(load_spec(_spec(root)))

    # a missing image fails when the data is loaded (before any training), naming the file
    root = write_celeba(tmp_path / "c3", n=10)
    (root / "img_align_celeba" / "000001.jpg").unlink()
    with pytest.raises(DataError, match=r"1 image files listed in list_attr_celeba\.txt are missing: 000001\.jpg"):
        load_data(load_spec(_spec(root)))
    # with limit, only the images in use must be there (000001.jpg is the first training image)
    (root / "img_align_celeba" / "000002.jpg").rename(root / "img_align_celeba" / "000001.jpg")
    data = load_data(load_spec(_spec(root, limit=1)))
    assert data.sizes() == {"train": 1, "val": 1, "test": 1}
    # a corrupt one when it is decoded
    root = write_celeba(tmp_path / "c4", n=10)
    (root / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    data = load_data(load_spec(_spec(root)))
    with pytest.raises(DataError, match=r"000003\.jpg: cannot read image"):
        data.train[2]
    (root / "img_align_celeba" / "000001.jpg").unlink()  # removed after loading: named when read
    with pytest.raises(DataError, match=r"000001\.jpg: image file not found"):
        data.train[0]


def test_cache_matches_decoding_and_is_reused(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba", n=30)
    plain = load_data(load_spec(_spec(root)))
    cached = load_data(load_spec(_spec(root, cache=str(tmp_path / "cache"))))
    (cache_file,) = (tmp_path / "cache").glob("celeba-32x32-*.npy")
    for split in ("train", "val", "test"):
        a, b = getattr(plain, split), getattr(cached, split)
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0])
            assert a[i][1] == b[i][1]
    stamp = cache_file.stat().st_mtime_ns
    load_data(load_spec(_spec(root, cache=str(tmp_path / "cache"))))
    assert cache_file.stat().st_mtime_ns == stamp  # built once


_RSS_PROBE = """
import sys, gc
import torch
from dmtg_nas import load_spec
from dmtg_nas.components import load_data
from dmtg_nas.data import make_loader
torch.set_num_threads(1)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

spec = load_spec({"name": "m", "tasks": [{"name": "Smiling", "type": "binary"}],
                  "dataset": {"name": "celeba", "root": sys.argv[1], "size": 64}, "groups": 1,
                  "backbone": {"name": "celeba_resnet"}})
data = load_data(spec)
loader = make_loader(data.train, 64, shuffle=False)
it = iter(loader)
for _ in range(3):
    next(it)
gc.collect()
before = rss()
n = 0
for x, y in it:
    n += x.shape[0]
gc.collect()
print(len(data.train), n, rss() - before)
"""


@pytest.mark.parametrize("sizes", [(300, 3000)])
def test_memory_stays_flat_as_the_index_grows(tmp_path: Path, sizes: tuple[int, int]) -> None:
    """Iterating every image of a 10x larger fixture does not grow the process (streaming, no
    in-memory copy: 2,700 images at 64x64 as float32 would be ~130 MB)."""
    growth = {}
    for n in sizes:
        root = write_celeba(tmp_path / f"celeba{n}", n=n, partition=(0.9, 0.05, 0.05), unique_images=50)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, str(root)], capture_output=True, text=True, timeout=300, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        size, seen, grew = map(int, proc.stdout.split()[-3:])
        assert seen + 3 * 64 == size
        growth[n] = grew
    small, big = growth[sizes[0]], growth[sizes[1]]
    assert big < 16 * 2**20, growth  # < 16 MB while streaming 2,700 images
    assert big - small < 12 * 2**20, growth
    print(f"RSS growth while iterating: {growth} bytes")


def test_index_arrays_are_compact(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba", n=200, unique_images=20)
    data = load_data(load_spec(_spec(root, attributes=CELEBA_ATTRIBUTES[:9])))
    train = data.train
    assert isinstance(train.files, np.ndarray) and train.files.dtype.kind == "S"  # type: ignore[attr-defined]
    assert train.labels.nbytes == len(train) * 9 * 4  # type: ignore[attr-defined, arg-type]


def test_inputs_imagenet_by_default_or_unit(tmp_path: Path) -> None:
    """``inputs: unit`` gives x / 255 in [0, 1] (DMTG's code feeds CelebA so); the default
    standardises that with ImageNet's mean and std."""
    root = write_celeba(tmp_path / "celeba", n=20)
    unit = load_data(load_spec(_spec(root, inputs="unit"))).train[0][0]
    imagenet = load_data(load_spec(_spec(root))).train[0][0]
    assert float(unit.min()) >= 0 and float(unit.max()) <= 1 and float(unit.max()) > 0.5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(imagenet, (unit - mean) / std, atol=1e-5)
    with pytest.raises(SpecError) as info:
        load_spec(_spec(root, inputs="raw"))
    assert info.value.key == "dataset.inputs" and "'imagenet' or 'unit'" in str(info.value)
