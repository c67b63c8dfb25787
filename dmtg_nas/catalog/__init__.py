"""The names a spec may use for its data set and its encoder, and their options (no torch).

:data:`DATASETS` and :data:`ENCODERS` map names to :class:`~dmtg_nas.catalog.base.DatasetEntry` and
:class:`~dmtg_nas.catalog.base.EncoderEntry`. :func:`encoder_entry` is the one place that reads
``timm:<model>`` (the ``timm`` family with the model name as an option), and :func:`check_spec` runs
every check a spec's names and files need before anything is loaded or built.
"""

from __future__ import annotations

from .base import DatasetEntry, EncoderEntry
from .checks import check_spec, dataset_entry, encoder_entry
from .registries import DATASETS, ENCODERS

__all__ = ["DATASETS", "ENCODERS", "DatasetEntry", "EncoderEntry", "check_spec", "dataset_entry", "encoder_entry"]
