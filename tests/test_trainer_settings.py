"""strategy.trainer: the search's logger, extra Lightning Trainer arguments, callbacks by import path."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl

import dmtg_nas
from dmtg_nas import SpecError, load_spec
from dmtg_nas.cli import main
from dmtg_nas.components import validate_components

from .conftest import planted_doc

PROBS = [f"prob/t{i}/{k}" for i in range(4) for k in range(2)]


class Recorder(pl.Callback):
    """Records what the Trainers it was given to saw (class level: the package builds the instances)."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, tag: str = "plain") -> None:
        self.tag = tag

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Recorder.seen.append({"tag": self.tag, "limit": trainer.limit_train_batches, "steps": trainer.global_step})


class NotACallback:
    pass


def _spec(**trainer: Any) -> dmtg_nas.SearchSpec:
    doc = planted_doc()
    doc["strategy"] = {**doc["strategy"], "trainer": {"accelerator": "cpu", **trainer}, "warmup": {"method": "none"}}
    return load_spec(doc)


def _search(spec: dmtg_nas.SearchSpec, out: Path) -> None:
    dmtg_nas.search(spec, out, progress=False)


def test_csv_logger_keeps_loss_tau_and_grouping_probabilities(tmp_path: Path) -> None:
    _search(_spec(), tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    epochs = [r for r in rows if r.get("tau")]
    assert len(epochs) == 2 and {"train_loss", "val_loss", "tau", *PROBS} <= set(rows[0])
    for row in epochs:
        for i in range(4):
            assert float(row[f"prob/t{i}/0"]) + float(row[f"prob/t{i}/1"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("logger", "package"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")]
)
def test_a_logger_without_its_package_is_one_line(
    logger: str, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec(package) is not None or (
        logger == "tensorboard" and importlib.util.find_spec("tensorboardX")
    ):
        pytest.skip(f"{package} is installed")
    assert main(["validate", "planted", "--set", f"strategy.trainer.logger={logger}"]) == 2
    needs = f"logger {logger!r} needs the {package!r} package: pip install {package}"
    assert capsys.readouterr().err == f"dmtg: error: strategy.trainer.logger: {needs}\n"


def test_tensorboard_events_hold_the_probabilities(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _search(_spec(logger="tensorboard"), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    assert {"train_loss", "tau", *PROBS} <= set(events.Tags()["scalars"])


def test_mlflow_metrics_hold_the_probabilities(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    _search(_spec(logger="mlflow"), tmp_path / "run")
    folders = list((tmp_path / "run" / "mlruns").glob("*/*/metrics"))  # experiment/run/metrics/<name>
    names = {f.relative_to(d).as_posix() for d in folders for f in d.rglob("*") if f.is_file()}
    assert {"train_loss", "tau", *PROBS} <= names


def test_extra_trainer_arguments_and_callbacks_reach_every_trainer(tmp_path: Path) -> None:
    Recorder.seen.clear()
    spec = _spec(
        extra={"limit_train_batches": 2},
        callbacks=[f"{__name__}:Recorder", {"name": f"{__name__}:Recorder", "tag": "kw"}],
    )
    _search(spec, tmp_path / "run")
    assert [r["tag"] for r in Recorder.seen] == ["plain", "kw"]  # the search's Trainer
    assert all(r["limit"] == 2 and r["steps"] == 2 * 2 for r in Recorder.seen)  # 2 epochs of 2 batches


@pytest.mark.parametrize(
    ("trainer", "key", "message"),
    [
        (
            {"extra": {"detect_anomali": True}},
            "strategy.trainer.extra.detect_anomali",
            "unknown Lightning Trainer argument 'detect_anomali' (did you mean 'detect_anomaly'?)",
        ),
        (
            {"extra": {"max_epochs": 3}},
            "strategy.trainer.extra",
            "'max_epochs' is set by the package: use strategy.epochs",
        ),
        ({"callbacks": ["no_such_module:X"]}, "strategy.trainer.callbacks[0]", "cannot import module 'no_such_module'"),
        (
            {"callbacks": [f"{__name__}:NotACallback"]},
            "strategy.trainer.callbacks[0]",
            f"'{__name__}:NotACallback' gives a NotACallback, not a Lightning Callback",
        ),
        (
            {"callbacks": [{"name": f"{__name__}:Recorder", "tga": "x"}]},
            "strategy.trainer.callbacks[0]",
            "cannot be built: TypeError: Recorder.__init__() got an unexpected keyword argument 'tga'",
        ),
        ({"callbacks": [{"tag": "x"}]}, "strategy.trainer.callbacks", "callbacks[0] must be 'package.module:Class'"),
    ],
)
def test_trainer_settings_are_checked_naming_the_key(trainer: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_components(_spec(**trainer))
    assert info.value.key == key and message in info.value.message and "\n" not in str(info.value)
