"""Data sets: the table reader (CSV, NPZ), target encoding, the planted generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dmtg_nas import DataError, SpecError, load_spec
from dmtg_nas.components import load_data
from dmtg_nas.data.planted import planted_partition

from .conftest import planted_doc


def _table_spec(path: Path, tasks: list[dict], **dataset) -> dict:
    return planted_doc(tasks=tasks, dataset={"name": "table", "path": str(path), **dataset}, groups=1)


def _write_csv(path: Path, n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "a": rng.normal(5, 3, n),
        "b": rng.normal(-2, 0.5, n),
        "price": rng.normal(100, 10, n),
        "churn": rng.choice([-1, 1], n),
        "kind": rng.integers(0, 3, n),
    }
    lines = [",".join(cols)] + [",".join(str(cols[c][i]) for c in cols) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return cols


TASKS = [
    {"name": "price", "type": "regression"},
    {"name": "churn", "type": "binary"},
    {"name": "kind", "type": "multiclass", "num_classes": 3},
]


def test_csv_table_splits_standardizes_and_encodes(tmp_path: Path) -> None:
    cols = _write_csv(tmp_path / "t.csv", n=100)
    spec = load_spec(_table_spec(tmp_path / "t.csv", TASKS, split={"val": 0.2, "test": 0.1, "seed": 1}))
    data = load_data(spec)
    assert data.sizes() == {"train": 70, "val": 20, "test": 10}
    assert data.input_shape == (2,)
    x, y = data.train[list(range(len(data.train)))]  # type: ignore[index]
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert abs(float(y["price"].mean())) < 1e-5  # regression targets standardised on train
    assert set(torch.unique(y["churn"]).tolist()) <= {0.0, 1.0}  # -1/1 mapped to 0/1
    assert y["kind"].dtype == torch.int64
    # every row lands in exactly one split
    all_churn = torch.cat([data.train.targets["churn"], data.val.targets["churn"], data.test.targets["churn"]])  # type: ignore[attr-defined]
    assert int(all_churn.sum()) == int((cols["churn"] > 0).sum())


def test_npz_table_with_explicit_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "t.npz",
        img=rng.normal(size=(40, 3, 2)),
        extra=rng.normal(size=40),
        ignored=np.zeros(40),
        price=rng.normal(size=40),
    )
    spec = load_spec(_table_spec(tmp_path / "t.npz", TASKS[:1], features=["img", "extra"]))
    data = load_data(spec)
    assert data.input_shape == (7,)


def test_table_errors_name_the_file_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,price\n1,2\n3,oops\n")
    spec = load_spec(_table_spec(path, TASKS[:1]))
    with pytest.raises(DataError, match=r"bad\.csv: line 3, column 'price': 'oops' is not a number"):
        load_data(spec)


def test_table_task_without_column_suggests(tmp_path: Path) -> None:
    _write_csv(tmp_path / "t.csv")
    with pytest.raises(SpecError, match=r"task 'prise' has no column .*did you mean 'price'"):
        load_spec(_table_spec(tmp_path / "t.csv", [{"name": "prise", "type": "regression"}]))


def test_binary_task_with_other_values_is_refused(tmp_path: Path) -> None:
    _write_csv(tmp_path / "t.csv")
    spec = load_spec(_table_spec(tmp_path / "t.csv", [{"name": "price", "type": "binary"}]))
    with pytest.raises(DataError, match="binary task 'price' needs targets in"):
        load_data(spec)


def test_planted_partition_is_seeded_and_complete() -> None:
    names = [f"t{i}" for i in range(9)]
    a = planted_partition(names, [2, 3, 4], seed=0)
    assert a == planted_partition(names, [2, 3, 4], seed=0)
    assert a != planted_partition(names, [2, 3, 4], seed=1)
    assert [len(g) for g in a] == [2, 3, 4]
    assert sorted(t for g in a for t in g) == sorted(names)


def test_planted_tasks_share_signal_within_groups_only() -> None:
    spec = load_spec("planted", ["dataset.noise=0.0", "dataset.samples=3000"])
    data = load_data(spec)
    assert data.ground_truth is not None
    y = data.train.targets  # type: ignore[attr-defined]
    x = data.train.x  # type: ignore[attr-defined]
    # a linear probe of one task from all other tasks of its group beats one from another group
    group = {t: i for i, g in enumerate(data.ground_truth) for t in g}

    def r2(target: str, sources: list[str]) -> float:
        a = torch.stack([y[s] for s in sources] + [torch.ones(len(x))], 1)
        coef = torch.linalg.lstsq(a, y[target].unsqueeze(1)).solution
        resid = y[target] - (a @ coef).squeeze(1)
        return 1 - float(resid.var() / y[target].var())

    big = max(data.ground_truth, key=len)
    target = big[0]
    same = [t for t in big[1:]]
    other = [t for t in spec.task_names if group[t] != group[target]][: len(same)]
    assert r2(target, same) > r2(target, other) + 0.1


def test_binary_planted_targets_are_balanced() -> None:
    spec = load_spec(planted_doc(tasks=[{"name": f"t{i}", "type": "binary"} for i in range(4)]))
    y = load_data(spec).train.targets  # type: ignore[attr-defined]
    for t in y.values():
        assert 0.3 < float(t.mean()) < 0.7
