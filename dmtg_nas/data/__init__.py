"""Registered data sets (``dataset.name`` in a spec) and the data interfaces."""

from __future__ import annotations

from ..registry import Registry
from .base import DatasetPlugin, TaskData, TensorTaskDataset, make_loader
from .planted import PlantedDataset
from .table import TableDataset

__all__ = ["DATASETS", "DatasetPlugin", "TaskData", "TensorTaskDataset", "make_loader"]

DATASETS: Registry[DatasetPlugin] = Registry("dataset")
DATASETS.add("table", TableDataset())
DATASETS.add("planted", PlantedDataset())
