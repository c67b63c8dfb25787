"""Bring your own data: a data set given as ``package.module:function``.

A search-space spec names the function instead of a registered data set; the other keys of
``dataset`` are passed to it as keyword arguments::

    name: sensors
    dataset: {name: "user_dataset:sensors", samples: 2000}   # this file, importable
    backbone: {name: mlp, hidden: [32]}
    branches: 2

The function returns the three splits (any torch ``Dataset`` yielding ``(x, {task: y})``), the
input shape and the task definitions; the spec may then leave ``tasks`` out, or list a subset.
Run from this folder, keep the spec next to this file, or put the module on ``PYTHONPATH``:

    cd examples && python user_dataset.py
    cd examples && dmtg search ../runs/sensors.yaml        # a spec like the one above
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")

from dmtg_nas.data import TensorTaskDataset


def sensors(samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Readings of 16 sensors; two hidden causes (weather, machine state) drive four targets."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 16)).astype(np.float32)
    weather = np.tanh(x[:, :8] @ rng.standard_normal(8) / 2)
    machine = np.tanh(x[:, 8:] @ rng.standard_normal(8) / 2)
    targets = {
        "temperature": torch.tensor(2 * weather + 0.1 * rng.standard_normal(samples), dtype=torch.float32),
        "humidity": torch.tensor(weather**2 - weather + 0.1 * rng.standard_normal(samples), dtype=torch.float32),
        "alarm": torch.tensor(machine > 0.2, dtype=torch.float32),
        "mode": torch.tensor(np.digitize(machine, [-0.3, 0.3]), dtype=torch.int64),
    }
    order = rng.permutation(samples)
    cut1, cut2 = int(0.6 * samples), int(0.8 * samples)
    xt = torch.from_numpy(x)

    def part(idx: np.ndarray) -> TensorTaskDataset:
        index = torch.as_tensor(idx)
        return TensorTaskDataset(xt[index], {k: v[index] for k, v in targets.items()})

    return {
        "train": part(order[:cut1]),
        "val": part(order[cut1:cut2]),
        "test": part(order[cut2:]),
        "input_shape": (16,),
        "tasks": [
            {"name": "temperature", "type": "regression"},
            {"name": "humidity", "type": "regression"},
            {"name": "alarm", "type": "binary"},
            {"name": "mode", "type": "multiclass", "num_classes": 3},
        ],
    }


def broken() -> int:
    """Returns the wrong thing (used by the tests to check the error message)."""
    return 3


def main() -> None:
    import dmtg_nas

    spec = dmtg_nas.load_spec(
        {
            "name": "sensors",
            "dataset": {"name": "user_dataset:sensors", "samples": 2000},
            "backbone": {"name": "mlp", "hidden": [32, 4]},
            "branches": 2,
            "strategy": {"_base_": "dmtg", "epochs": 20},
        }
    )
    result = dmtg_nas.search(spec, None, progress=False)
    print("groups:", result.groups)
    print("test total loss:", round(result.metrics["totals"]["test"]["total_loss"], 4))


if __name__ == "__main__":
    main()
