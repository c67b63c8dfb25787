"""The registries of data sets and encoders a spec can name (see :mod:`dmtg_nas.catalog`)."""

from __future__ import annotations

from ..registry import Registry
from . import encoders, images, tabular
from .base import DatasetEntry, EncoderEntry

__all__ = ["DATASETS", "ENCODERS"]

DATASETS: Registry[DatasetEntry] = Registry("dataset")
DATASETS.add("table", DatasetEntry(tabular.TableOptions, tabular.check_table, "a CSV or NPZ file"))
DATASETS.add("planted", DatasetEntry(tabular.PlantedOptions, tabular.check_planted, "synthetic, known groups"))
DATASETS.add("digits", DatasetEntry(tabular.DigitsOptions, tabular.check_digits, "scikit-learn's digits"))
DATASETS.add("celeba", DatasetEntry(images.CelebAOptions, images.check_celeba, "CelebA attributes"))
DATASETS.add("taskonomy", DatasetEntry(images.TaskonomyOptions, images.check_taskonomy, "Taskonomy dense tasks"))

ENCODERS: Registry[EncoderEntry] = Registry("backbone")
ENCODERS.add("mlp", encoders.MLP)
ENCODERS.add("convnet", encoders.CONVNET)
ENCODERS.add("celeba_resnet", encoders.CELEBA_RESNET)
ENCODERS.add("timm", encoders.TIMM)
