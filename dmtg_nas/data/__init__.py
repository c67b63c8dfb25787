"""Registered data sets (``dataset.name`` in a spec) and the data interfaces.

``table`` and ``planted`` (vectors), ``digits`` (scikit-learn's digits, no download), ``celeba`` and
``taskonomy`` (local copies in their standard layouts); ``package.module:function`` names user data
(:mod:`dmtg_nas.data.user`).
"""

from __future__ import annotations

from ..registry import Registry
from .base import DatasetPlugin, ShardedBatchSampler, TaskData, TensorTaskDataset, make_loader
from .celeba import CelebADataset
from .digits import DigitsDataset
from .planted import PlantedDataset
from .table import TableDataset
from .taskonomy import TaskonomyDataset
from .user import UserDataset

__all__ = [
    "DATASETS",
    "DatasetPlugin",
    "ShardedBatchSampler",
    "TaskData",
    "TensorTaskDataset",
    "UserDataset",
    "make_loader",
]

DATASETS: Registry[DatasetPlugin] = Registry("dataset")
DATASETS.add("table", TableDataset())
DATASETS.add("planted", PlantedDataset())
DATASETS.add("digits", DigitsDataset())
DATASETS.add("celeba", CelebADataset())
DATASETS.add("taskonomy", TaskonomyDataset())
