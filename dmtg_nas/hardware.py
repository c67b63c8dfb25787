"""Devices, processes and precision: what every Lightning Trainer of the package is built with.

A :class:`~dmtg_nas.config.TrainerConfig` (``strategy.trainer`` in a spec) becomes the Trainer's
``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision`` and ``sync_batchnorm``. With
more than one process Lightning's ``ddp`` strategy launches the other processes by running the same command again (its
subprocess launcher); each process then runs the whole pipeline on its share of every batch
(:class:`~dmtg_nas.data.ShardedBatchSampler`), DDP averages the gradients, and only the process of
global rank 0 writes files (:func:`is_global_zero`).

``strategy.trainer.extra`` adds Trainer keyword arguments (every Trainer; the ones the package sets
are refused by the schema, unknown ones by :func:`check_trainer`), ``strategy.trainer.callbacks``
adds Lightning callbacks by import path (fresh instances for every Trainer,
:func:`user_callbacks`), and ``strategy.trainer.logger`` picks the search's logger
(:func:`search_logger`; local files only).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .config import TrainerConfig
from .errors import DmtgError, SpecError, suggest
from .registry import import_object
from .runlock import launcher_rank_zero

__all__ = [
    "trainer_kwargs",
    "check_trainer",
    "sync_batchnorm",
    "user_callbacks",
    "search_logger",
    "is_global_zero",
    "eval_device",
    "use_pinned_memory",
    "barrier",
]

# the packages each logger needs (any one of them), as pip installs them
LOGGER_PACKAGES = {
    "csv": (),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
}


def _on_gpu(cfg: TrainerConfig) -> bool:
    return cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())


def _check(cfg: TrainerConfig) -> None:
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise DmtgError("strategy.trainer.accelerator is 'gpu' but no CUDA device is available; use 'auto' or 'cpu'")
    on_gpu = _on_gpu(cfg)
    if on_gpu and cfg.devices > torch.cuda.device_count():
        raise DmtgError(
            f"strategy.trainer.devices is {cfg.devices} but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    if cfg.sync_batchnorm is True and not on_gpu:
        raise DmtgError("strategy.trainer.sync_batchnorm is true but training runs on the CPU; use 'auto' or false")


def sync_batchnorm(cfg: TrainerConfig) -> bool:
    """Whether Lightning turns the batch-norm layers into SyncBatchNorm for the training (``auto``:
    with more than one process on GPUs; networks without batch norm are unchanged either way)."""
    if cfg.sync_batchnorm == "auto":
        return cfg.world_size > 1 and _on_gpu(cfg)
    return bool(cfg.sync_batchnorm)


def trainer_kwargs(cfg: TrainerConfig) -> dict[str, Any]:
    """Keyword arguments for ``pl.Trainer`` (or NNI's traced ``Trainer``) from the spec's settings.

    The loaders shard batches themselves, so Lightning's own sampler replacement is turned off.
    """
    _check(cfg)
    distributed = cfg.world_size > 1
    return {
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "num_nodes": cfg.num_nodes,
        "strategy": "ddp" if distributed or cfg.strategy == "ddp" else "auto",
        "precision": cfg.precision,
        "sync_batchnorm": sync_batchnorm(cfg),
        "use_distributed_sampler": False,
        **cfg.extra,
    }


def check_trainer(cfg: TrainerConfig) -> None:
    """Check what only the libraries can tell: ``extra`` names arguments ``pl.Trainer`` takes, the
    callbacks import and build, the logger's package is installed. One-line
    :class:`~dmtg_nas.errors.SpecError` naming the key."""
    import pytorch_lightning as pl

    known = [n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"]
    for key in cfg.extra:
        if key not in known:
            raise SpecError(
                f"unknown Lightning Trainer argument {key!r}{suggest(key, known)}", key=f"strategy.trainer.extra.{key}"
            )
    user_callbacks(cfg)
    packages = LOGGER_PACKAGES[cfg.logger]
    if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
        raise SpecError(
            f"logger {cfg.logger!r} needs the {packages[0]!r} package: pip install {packages[0]}",
            key="strategy.trainer.logger",
        )


def user_callbacks(cfg: TrainerConfig) -> list[Any]:
    """Fresh instances of ``strategy.trainer.callbacks`` (each Trainer gets its own: callbacks keep
    state)."""
    import pytorch_lightning as pl

    built = []
    for i, item in enumerate(cfg.callbacks):
        path, kwargs = (
            (item, {}) if isinstance(item, str) else (item["name"], {k: v for k, v in item.items() if k != "name"})
        )
        key = f"strategy.trainer.callbacks[{i}]"
        try:
            cls = import_object(path, "callback")
        except SpecError as exc:
            raise SpecError(exc.message, key=key) from None
        try:
            callback = cls(**kwargs)  # type: ignore[operator]
        except Exception as exc:  # the user's code: one line naming it
            first = (str(exc).strip().splitlines() or [""])[0]
            raise SpecError(f"{path!r} cannot be built: {type(exc).__name__}: {first}", key=key) from None
        if not isinstance(callback, pl.Callback):
            raise SpecError(f"{path!r} gives a {type(callback).__name__}, not a Lightning Callback", key=key)
        built.append(callback)
    return built


def search_logger(cfg: TrainerConfig, out_dir: Path, version: str, name: str) -> Any:
    """The search's Lightning logger, writing under ``out_dir`` only: ``csv`` (``out_dir/version/
    metrics.csv``), ``tensorboard`` (event files in ``out_dir/version``), ``mlflow`` (a file store,
    ``out_dir/mlruns``, experiment ``name``, run ``version``) or ``wandb`` (offline, ``out_dir/wandb``)."""
    check_trainer(cfg)
    from pytorch_lightning import loggers

    if cfg.logger == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=str(out_dir), name="", version=version, default_hp_metric=False)
    if cfg.logger == "mlflow":
        uri = (out_dir / "mlruns").resolve().as_uri()
        return loggers.MLFlowLogger(experiment_name=name, run_name=version, tracking_uri=uri)
    if cfg.logger == "wandb":
        return loggers.WandbLogger(name=f"{name}-{version}", project=name, save_dir=str(out_dir), offline=True)
    return loggers.CSVLogger(save_dir=str(out_dir), name="", version=version)


def is_global_zero() -> bool:
    """True in the process that writes outputs and checkpoints (the only one outside a distributed run).

    Known from the start of the process: Lightning's launcher sets ``NODE_RANK``/``LOCAL_RANK`` (and
    ``torchrun`` sets ``RANK``) before the other processes run the command.
    """
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()) == 0
    return launcher_rank_zero()


def eval_device(cfg: TrainerConfig) -> torch.device:
    """Where evaluation outside Lightning runs: this process's GPU when training used GPUs, else the CPU."""
    if cfg.accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(torch.cuda.device_count(), 1))


def use_pinned_memory(cfg: TrainerConfig) -> bool:
    """Pin loader batches in page-locked memory (asynchronous host-to-GPU copies) when training on a GPU."""
    return eval_device(cfg).type == "cuda"


def barrier() -> None:
    """Wait for every process of a distributed run (no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
