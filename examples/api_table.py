"""Search task groups on your own CSV table with the Python API.

The script writes a small customer table (features plus six targets of three kinds) to
``runs/customers.csv`` so it runs anywhere; point ``dataset.path`` at your own file instead. Each
task is one column; every other column is a feature (or list them in ``dataset.features``).

    python examples/api_table.py
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")

import dmtg_nas


def write_customers(path: Path, n: int = 3000, seed: int = 0) -> None:
    """Two hidden customer traits drive two families of targets (spend-like and risk-like)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12))
    wealth = np.tanh(x[:, :6] @ rng.standard_normal(6) / 2)
    risk = np.tanh(x[:, 6:] @ rng.standard_normal(6) / 2)
    columns = {f"f{i}": x[:, i] for i in range(12)}
    columns["price"] = 3 * wealth + 0.2 * rng.standard_normal(n)
    columns["basket"] = 2 * wealth**2 + wealth + 0.2 * rng.standard_normal(n)
    columns["premium"] = (wealth + 0.3 * rng.standard_normal(n) > 0.3).astype(int)
    columns["churn"] = (risk + 0.3 * rng.standard_normal(n) > 0).astype(int)
    columns["late_payments"] = 2 * risk + 0.2 * rng.standard_normal(n)
    columns["segment"] = np.digitize(risk + 0.2 * rng.standard_normal(n), [-0.3, 0.3])  # 0, 1, 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))


def main() -> None:
    table = Path("runs/customers.csv")
    write_customers(table)
    spec = dmtg_nas.load_spec(
        {
            "name": "customers",
            "tasks": [
                {"name": "price", "type": "regression"},
                {"name": "basket", "type": "regression"},
                {"name": "premium", "type": "binary"},
                {"name": "churn", "type": "binary"},
                {"name": "late_payments", "type": "regression"},
                {"name": "segment", "type": "multiclass", "num_classes": 3},
            ],
            "dataset": {"name": "table", "path": str(table.resolve()), "split": {"val": 0.2, "test": 0.2}},
            "backbone": {"name": "mlp", "hidden": [16, 4]},
            "groups": 2,
            "strategy": {"_base_": "dmtg", "epochs": 30},
        }
    )
    result = dmtg_nas.search(spec, out_dir="runs/customers", overwrite=True, progress=False)
    print("groups:", result.groups)
    for task, row in result.metrics["test"].items():
        print(f"  {task:<14} " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    print("test total loss:", round(result.metrics["totals"]["test"]["total_loss"], 4))
    model = dmtg_nas.load_model("runs/customers/model.pt")  # plain torch module, no NNI needed
    print("reloaded grouped network with", len(model.branches), "branches")


if __name__ == "__main__":
    main()
