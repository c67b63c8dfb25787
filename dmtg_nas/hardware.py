"""Devices, processes and precision: what every Lightning Trainer of the package is built with.

A :class:`~dmtg_nas.config.TrainerConfig` (``strategy.trainer`` in a spec) becomes the Trainer's
``accelerator``, ``devices``, ``num_nodes``, ``strategy`` and ``precision``. With more than one process
Lightning's ``ddp`` strategy launches the other processes by running the same command again (its
subprocess launcher); each process then runs the whole pipeline on its share of every batch
(:class:`~dmtg_nas.data.ShardedBatchSampler`), DDP averages the gradients, and only the process of
global rank 0 writes files (:func:`is_global_zero`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from .config import TrainerConfig
from .errors import DmtgError
from .runlock import launcher_rank_zero

__all__ = ["trainer_kwargs", "is_global_zero", "eval_device", "use_pinned_memory", "barrier"]


def _check(cfg: TrainerConfig) -> None:
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise DmtgError("strategy.trainer.accelerator is 'gpu' but no CUDA device is available; use 'auto' or 'cpu'")
    on_gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and cfg.devices > torch.cuda.device_count():
        raise DmtgError(
            f"strategy.trainer.devices is {cfg.devices} but this machine has {torch.cuda.device_count()} GPU(s)"
        )


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
        "use_distributed_sampler": False,
    }


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
