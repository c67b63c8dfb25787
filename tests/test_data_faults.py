"""Data faults: missing columns, non-finite values, missing and corrupt image files. Each one gives
an error that names the item (column and rows, or file path), and the command line prints it in one
line with exit code 2."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmtg_nas import DataError, SpecError, load_spec
from dmtg_nas.cli import main
from dmtg_nas.components import load_data
from dmtg_nas.data.table import read_table

from .conftest import planted_doc
from .fixtures import write_celeba

TASKS = [{"name": "y", "type": "regression"}, {"name": "z", "type": "binary"}]


def _table(path: Path, **dataset) -> dict:
    return planted_doc(tasks=TASKS, dataset={"name": "table", "path": str(path), **dataset}, groups=1)


def _write_csv(path: Path, n: int = 40, bad: dict[int, tuple[str, str]] | None = None) -> None:
    """Columns a, b (features), y (regression), z (binary); ``bad`` = {row: (column, cell text)}."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        cells = {"a": f"{rng.normal():.4f}", "b": f"{rng.normal():.4f}", "y": f"{rng.normal():.4f}", "z": str(i % 2)}
        if bad and i in bad:
            column, text = bad[i]
            cells[column] = text
        rows.append(",".join(cells.values()))
    path.write_text("a,b,y,z\n" + "\n".join(rows) + "\n")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def test_missing_task_column_is_named_with_its_key_path(tmp_path: Path) -> None:
    _write_csv(tmp_path / "t.csv")
    doc = _table(tmp_path / "t.csv")
    doc["tasks"] = [TASKS[0], {"name": "w", "type": "regression"}]
    with pytest.raises(SpecError, match=r"task 'w' has no column in .*t\.csv; columns: a, b, y, z") as info:
        load_spec(doc)
    assert info.value.key == "tasks[1].name"
    np.savez(tmp_path / "t.npz", a=np.zeros(5), y=np.zeros(5))
    with pytest.raises(SpecError, match=r"task 'z' has no column") as info:
        load_spec(_table(tmp_path / "t.npz"))
    assert info.value.key == "tasks[1].name"
    with pytest.raises(SpecError, match=r"feature 'c' is not a column") as info:
        load_spec(_table(tmp_path / "t.csv", features=["a", "c"]))
    assert info.value.key == "dataset.features"


def test_duplicate_csv_column_names_are_refused(tmp_path: Path) -> None:
    """A CSV header naming a column twice would make the task or feature silently the last of them."""
    (tmp_path / "t.csv").write_text("a,y,b,y,z, a\n1,2,3,4,0,5\n")
    with pytest.raises(SpecError) as info:
        load_spec(_table(tmp_path / "t.csv"))
    assert info.value.key == "dataset.path"
    assert info.value.message == (
        f"{tmp_path / 't.csv'}: duplicate column names in the header: 'a' (columns 1, 6), 'y' (columns 2, 4)"
    )
    with pytest.raises(DataError, match=r"t\.csv: duplicate column names in the header: 'a' \(columns 1, 6\), 'y'"):
        read_table(tmp_path / "t.csv")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({3: ("y", "nan")}, "column 'y' has a missing or non-finite value (NaN, inf) at line 5;"),
        (
            {3: ("y", "inf"), 9: ("y", "-inf")},
            "column 'y' has a missing or non-finite value (NaN, inf) at line 5, line 11;",
        ),
        ({7: ("a", "")}, "column 'a' has a missing or non-finite value (NaN, inf) at line 9;"),
        ({i: ("z", "nan") for i in range(10, 17)}, "line 12, line 13, line 14, line 15, line 16 and 2 more;"),
    ],
)
def test_nonfinite_values_are_errors_naming_column_and_rows(tmp_path: Path, bad: dict, fragment: str) -> None:
    _write_csv(tmp_path / "t.csv", bad=bad)
    spec = load_spec(_table(tmp_path / "t.csv"))
    with pytest.raises(DataError) as info:
        load_data(spec)
    assert fragment in str(info.value)
    assert "dataset.nonfinite: drop" in str(info.value)  # the way out is named


def test_nonfinite_in_npz_names_the_row(tmp_path: Path) -> None:
    y = np.arange(20, dtype=np.float64)
    y[4] = np.inf
    np.savez(tmp_path / "t.npz", a=np.ones((20, 3)), y=y, z=np.arange(20) % 2)
    with pytest.raises(DataError, match=r"column 'y' has a missing or non-finite value \(NaN, inf\) at row 4;"):
        load_data(load_spec(_table(tmp_path / "t.npz")))


def test_drop_policy_leaves_bad_rows_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = {3: ("y", "nan"), 9: ("y", "inf"), 20: ("a", ""), 21: ("z", "nan")}
    _write_csv(tmp_path / "t.csv", n=40, bad=bad)
    spec = load_spec(_table(tmp_path / "t.csv", nonfinite="drop", split={"val": 0.25, "test": 0.25, "seed": 0}))
    with caplog.at_level(logging.WARNING, logger="dmtg_nas.data.table"):
        data = load_data(spec)
    assert sum(data.sizes().values()) == 36  # 40 rows, 4 bad
    assert data.info["dropped_rows"] == 4 and data.info["samples"] == 36
    assert "4 of 40 rows have missing or non-finite values; dropped" in caplog.text
    for split in (data.train, data.val, data.test):
        assert torch.isfinite(split.x).all()  # type: ignore[attr-defined]
        assert all(torch.isfinite(t).all() for t in split.targets.values())  # type: ignore[attr-defined]
    # the kept rows are the good ones, in any split: their raw y values survive standardisation order
    scale = data.info["regression_scale"]["y"]
    kept = torch.cat([s.targets["y"] for s in (data.train, data.val, data.test)]) * scale[1] + scale[0]  # type: ignore[attr-defined]
    raw = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1, usecols=2)
    good = np.delete(raw, list(bad))
    assert np.allclose(np.sort(kept.numpy()), np.sort(good), atol=1e-3)


def test_drop_policy_with_no_row_left_is_an_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "t.csv", n=5, bad={i: ("y", "nan") for i in range(5)})
    with pytest.raises(DataError, match="every row has a missing or non-finite value"):
        load_data(load_spec(_table(tmp_path / "t.csv", nonfinite="drop")))
    with pytest.raises(SpecError, match=r"dataset\.nonfinite: bad value 'mask'"):
        load_spec(_table(tmp_path / "t.csv", nonfinite="mask"))


def test_search_on_nonfinite_targets_exits_2_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_csv(tmp_path / "t.csv", bad={5: ("y", "nan")})
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_table(Path("t.csv"))))
    out = tmp_path / "run"
    code, err = _cli(["search", str(spec), "--out", str(out), "-q"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "t.csv: column 'y' has a missing or non-finite value (NaN, inf) at line 7" in err
    assert not out.exists()  # data is checked before the output folder is made


def test_a_split_that_rounds_to_no_rows_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 rows with val 0.1 leave the validation split empty: refused when the data loads, not
    answered with NaN metrics after the training."""
    _write_csv(tmp_path / "t.csv", n=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_table(Path("t.csv"), split={"val": 0.1, "test": 0.25})))
    out = tmp_path / "run"
    code, err = _cli(["search", str(spec), "--out", str(out), "-q"], capsys)
    assert code == 2
    assert err == (
        "dmtg: error: dataset 'table': the val split is empty (train 3, val 0, test 1 samples): "
        "dataset.split.val = 0.1 of 4 samples rounds to none; a run needs samples in train, val and test\n"
    )
    assert not out.exists()
    code, err = _cli(
        ["search", str(spec), "--out", str(out), "-q", "--set", "dataset.split={val: 0.5, test: 0.01}"], capsys
    )
    assert code == 2 and "the test split is empty (train 2, val 2, test 0 samples): dataset.split.test = 0.01 " in err
    assert not out.exists()


@pytest.mark.parametrize("part", ["val", "test"])
def test_a_zero_split_fraction_is_a_spec_error(tmp_path: Path, part: str) -> None:
    _write_csv(tmp_path / "t.csv")
    with pytest.raises(SpecError, match=rf"^<spec>: dataset\.split\.{part}: input should be greater than 0, got 0$"):
        load_spec(_table(tmp_path / "t.csv", split={part: 0}))


def test_user_data_with_an_empty_test_split_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty_test_data.py").write_text(
        textwrap.dedent(
            """
            import torch
            from dmtg_nas.data import TaskData, TensorTaskDataset

            def data():
                part = lambda n: TensorTaskDataset(torch.zeros(n, 3), {"y": torch.zeros(n)})
                return TaskData(part(8), part(2), part(0), (3,), tasks=[{"name": "y", "type": "regression"}])
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = load_spec(planted_doc(tasks=TASKS[:1], dataset={"name": "empty_test_data:data"}, groups=1))
    with pytest.raises(DataError, match=r"^dataset 'empty_test_data:data': the test split is empty \(train 8, val 2, "):
        load_data(spec)


def test_a_run_with_non_finite_final_metrics_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs that are all NaN: with nonfinite: skip every batch is skipped and the metrics are NaN.
    The run fails naming them (it used to exit 0 and print 'nan'); the outputs stay to look at."""
    (tmp_path / "nan_inputs.py").write_text(
        textwrap.dedent(
            """
            import torch
            from dmtg_nas.data import TaskData, TensorTaskDataset

            def data(n=32):
                part = lambda: TensorTaskDataset(torch.full((n, 3), float("nan")), {"y": torch.zeros(n)})
                return TaskData(part(), part(), part(), (3,), tasks=[{"name": "y", "type": "regression"}])
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = planted_doc(tasks=TASKS[:1], dataset={"name": "nan_inputs:data"}, groups=1, backbone={"name": "mlp"})
    doc["strategy"] = {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 8, "nonfinite": "skip"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    code, err = _cli(["search", str(spec), "--out", str(out), "-q", "--set", "strategy.finetune.epochs=0"], capsys)
    assert code == 2
    assert err.splitlines()[-1] == (
        "dmtg: error: the final metrics are not finite (NaN or inf): val y.loss, val y.mse, val y.mae, test y.loss, "
        "test y.mse and 5 more; 4 training batches were skipped as non-finite (strategy.nonfinite: skip); "
        f"the outputs are kept in {out}"
    )
    assert (out / "metrics.json").is_file()


# ----------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------


def _celeba_spec(root: Path, workers: int) -> dict:
    return {
        "name": "celeba-faults",
        "tasks": [{"name": "Smiling", "type": "binary"}],
        "dataset": {"name": "celeba", "root": str(root), "size": 16},
        "backbone": {"name": "celeba_resnet", "width": 4},
        "groups": 1,
        "strategy": {
            "_base_": "dmtg-plain",
            "epochs": 1,
            "batch_size": 4,
            "num_workers": workers,
            "finetune": {"epochs": 0},
        },
    }


def test_missing_celeba_image_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_celeba(tmp_path / "celeba", n=12)
    (root / "img_align_celeba" / "000004.jpg").unlink()
    (root / "img_align_celeba" / "000011.jpg").unlink()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_celeba_spec(root, 0)))
    code, err = _cli(["search", str(spec), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "2 image files listed in list_attr_celeba.txt are missing: 000004.jpg, 000011.jpg" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_celeba_image_is_named_during_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    root = write_celeba(tmp_path / "celeba", n=12)
    image = root / "img_align_celeba" / "000002.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_celeba_spec(root, workers)))
    code, err = _cli(["search", str(spec), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("dmtg: error: ") and f"{image}: cannot read image" in err


_USER_MODULE = textwrap.dedent(
    """
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import Dataset

    class Files(Dataset):
        def __init__(self, paths):
            self.paths = paths

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            with Image.open(self.paths[i]) as img:
                x = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            return torch.from_numpy(x)[None], {"bright": torch.tensor(float(x.mean()))}

    def images(folder, count=8):
        paths = [f"{folder}/{i}.png" for i in range(count)]
        return {
            "train": Files(paths), "val": Files(paths[:2]), "test": Files(paths[:2]),
            "input_shape": (1, 8, 8), "tasks": [{"name": "bright", "type": "regression"}],
        }
    """
)


@pytest.fixture()
def user_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "faulty_images.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mod"))
    folder = tmp_path / "png"
    folder.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _user_spec(folder: Path) -> dict:
    return {
        "name": "user-images",
        "dataset": {"name": "faulty_images:images", "folder": str(folder)},
        "backbone": {"name": "convnet", "channels": [4]},
        "groups": 1,
        "strategy": {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 4, "finetune": {"epochs": 0}},
    }


def test_user_data_missing_file_names_split_and_item(
    user_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (user_images / "0.png").unlink()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_user_spec(user_images)))
    code, err = _cli(["search", str(spec), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "dataset 'faulty_images:images', train item 0: [Errno 2] No such file or directory" in err
    assert str(user_images / "0.png") in err
    assert not (tmp_path / "run").exists()  # the first training item is read before anything is written


def test_user_data_corrupt_file_names_split_and_item(
    user_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (user_images / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_user_spec(user_images)))
    code, err = _cli(["search", str(spec), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "dataset 'faulty_images:images', train item 5: cannot identify image file" in err
    assert "5.png" in err
