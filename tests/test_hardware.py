"""Devices, processes and precision: trainer settings, sharded batches, DDP on CPU processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dmtg_nas
from dmtg_nas.config import TrainerConfig
from dmtg_nas.data import ShardedBatchSampler, TensorTaskDataset, make_loader
from dmtg_nas.data.base import default_workers
from dmtg_nas.errors import SpecError
from dmtg_nas.hardware import is_global_zero, trainer_kwargs
from dmtg_nas.nni.router import gumbel_noise

from .conftest import ROOT, planted_doc, run_python


def _shards(sampler: ShardedBatchSampler, world: int, monkeypatch: pytest.MonkeyPatch) -> list[list[list[int]]]:
    per_rank = []
    for rank in range(world):
        monkeypatch.setattr(ShardedBatchSampler, "_world", staticmethod(lambda r=rank: (r, world)))
        sampler.generator.manual_seed(5)
        per_rank.append(list(sampler))
        assert len(sampler) == len(per_rank[-1])
    return per_rank


def test_sharded_batches_partition_the_one_process_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = ShardedBatchSampler(103, 10, shuffle=True, seed=5)
    single = list(sampler)  # one process: the BatchSampler(RandomSampler) order
    reference = list(
        torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(range(103), generator=torch.Generator().manual_seed(5)), 10, False
        )
    )
    assert single == reference
    for world in (2, 3, 4):
        ranks = _shards(sampler, world, monkeypatch)
        assert len({len(r) for r in ranks}) == 1  # every process takes the same number of steps
        for step, batch in enumerate(single[: len(ranks[0])]):
            parts = [ranks[r][step] for r in range(world)]
            assert [i for part in parts for i in part] == batch  # contiguous shares of the same global batch
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # the last global batch has 3 samples: too few for 4 processes, so it is dropped there
    assert len(_shards(sampler, 4, monkeypatch)[0]) == len(single) - 1
    assert len(_shards(sampler, 3, monkeypatch)[0]) == len(single)


def test_loader_uses_sharded_batches_for_tensor_and_file_datasets() -> None:
    data = TensorTaskDataset(torch.arange(20.0).unsqueeze(1), {"a": torch.arange(20.0)})
    x, y = next(iter(make_loader(data, 8, shuffle=False)))
    assert x.shape == (8, 1) and torch.equal(y["a"], torch.arange(8.0))
    seq = torch.utils.data.TensorDataset(torch.arange(20.0))  # a per-sample data set
    batches = [b[0] for b in make_loader(seq, 8, shuffle=True, seed=1)]
    assert [len(b) for b in batches] == [8, 8, 4]
    assert sorted(torch.cat(batches).tolist()) == list(range(20))
    assert default_workers(data) == 0
    assert default_workers(seq, world_size=64) == 0  # never more workers than cores


def test_trainer_settings_and_the_old_device_key() -> None:
    spec = dmtg_nas.load_spec(planted_doc())
    kwargs = trainer_kwargs(spec.strategy.trainer)
    assert kwargs == {
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
        "sync_batchnorm": False,
        "use_distributed_sampler": False,
    }
    assert trainer_kwargs(TrainerConfig(accelerator="cpu", devices=2))["strategy"] == "ddp"
    assert trainer_kwargs(TrainerConfig(accelerator="cpu", num_nodes=2))["strategy"] == "ddp"
    doc = planted_doc()
    doc["strategy"]["device"] = "cpu"  # saved run configs of earlier versions
    old = dmtg_nas.load_spec(doc).strategy
    assert old.trainer.accelerator == "cpu" and "device" not in old.model_dump()
    doc["strategy"]["trainer"] = {"accelerator": "gpu"}
    with pytest.raises(SpecError, match=r"contradicts trainer\.accelerator"):
        dmtg_nas.load_spec(doc)
    with pytest.raises(SpecError, match=r"strategy\.trainer\.precision: bad value"):
        dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.precision=16"])
    with pytest.raises(SpecError, match="did you mean 'devices'"):
        dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.device=2"])
    if not torch.cuda.is_available():
        with pytest.raises(dmtg_nas.DmtgError, match="no CUDA device"):
            trainer_kwargs(TrainerConfig(accelerator="gpu"))


def test_rank_zero_is_known_from_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert not is_global_zero()
    monkeypatch.setenv("RANK", "0")
    assert is_global_zero()


def test_gumbel_noise_depends_only_on_seed_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    a = gumbel_noise(3, 17, (5, 4))
    torch.manual_seed(123)  # global RNG state (differs between processes) plays no part
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torch.equal(a, gumbel_noise(3, 17, (5, 4)))
    assert not torch.equal(a, gumbel_noise(3, 18, (5, 4)))


def test_bf16_mixed_precision_search_on_cpu(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(
        planted_doc(),
        ["strategy.trainer.precision=bf16-mixed", "strategy.trainer.accelerator=cpu", "strategy.warmup.method=none"],
    )
    result = dmtg_nas.run_search(spec, tmp_path / "run", progress=False)
    assert sorted(result.assignment) == spec.task_names
    assert all(torch.isfinite(torch.tensor(p)).all() for p in result.probabilities.values())
    assert torch.isfinite(torch.tensor(result.metrics["totals"]["test"]["total_loss"]))
    assert (tmp_path / "run" / "config.yaml").read_text().count("bf16-mixed") == 1


def _run_worker(out: Path, devices: int, batch: int) -> dict[str, list[list[float]]]:
    drop = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    run_python(["-m", "tests.ddp_worker", str(out), str(devices), str(batch)], ROOT, 240, drop)
    return {f.stem: json.loads(f.read_text()) for f in sorted(out.glob("logits-rank*.json"))}


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path: Path) -> None:
    """2 ranks x batch 32 (gloo) against 1 process x batch 64: the same logits on every rank, the
    same steps, the same grouping, and outputs written once."""
    ddp = _run_worker(tmp_path / "ddp", 2, 64)
    single = _run_worker(tmp_path / "single", 1, 64)
    assert sorted(ddp) == ["logits-rank0", "logits-rank1"]
    r0, r1 = ddp["logits-rank0"], ddp["logits-rank1"]
    assert r0["world_size"] == 2 and r0["step"] == r1["step"] == single["logits-rank0"]["step"] > 0
    assert r0["logits"] == r1["logits"]  # bit-identical on both ranks
    one = single["logits-rank0"]["logits"]
    for task, row in r0["logits"].items():
        assert row != [1.0, 1.0]  # trained
        assert torch.allclose(torch.tensor(row), torch.tensor(one[task]), atol=2e-2)
    grouping = json.loads((tmp_path / "ddp" / "run" / "grouping.json").read_text())
    reference = json.loads((tmp_path / "single" / "run" / "grouping.json").read_text())
    assert grouping["assignment"] == reference["assignment"]
    # the merge check's group networks and the evaluation see all the data in every process (not a
    # rank's share of each batch): the same decision and final model as the one process
    metrics = json.loads((tmp_path / "ddp" / "run" / "metrics.json").read_text())
    single_metrics = json.loads((tmp_path / "single" / "run" / "metrics.json").read_text())
    check, single_check = metrics["local_search"], single_metrics["local_search"]
    assert (check["groups"], check["final_model"]) == (single_check["groups"], single_check["final_model"])
    test_loss = metrics["totals"]["test"]["total_loss"]
    assert test_loss == pytest.approx(single_metrics["totals"]["test"]["total_loss"], rel=1e-4)
    assert (tmp_path / "ddp" / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "ddp" / "run" / "logs" / "metrics.csv").is_file()
    assert not list((tmp_path / "ddp" / "run").glob("logs-*"))


def test_cli_device_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from dmtg_nas.cli import _trainer_overrides, build_parser, main

    args = build_parser().parse_args(
        ["search", "planted", "--devices", "2", "--num-nodes", "3", "--accelerator", "cpu", "--precision", "bf16-mixed"]
    )
    assert _trainer_overrides(args) == [
        "strategy.trainer.accelerator=cpu",
        "strategy.trainer.devices=2",
        "strategy.trainer.num_nodes=3",
        "strategy.trainer.precision=bf16-mixed",
    ]
    assert main(["search", "planted", "--devices", "0"]) == 2
    assert "--devices must be >= 1" in capsys.readouterr().err
    assert main(["benchmark", "planted", "--set", "strategy.trainer.devices=2"]) == 2
    assert "runs each training on one device" in capsys.readouterr().err


def test_channels_last_during_training_only() -> None:
    from dmtg_nas.config import LRScheduleConfig, OptimizerConfig, TaskConfig
    from dmtg_nas.engine.module import MultiTaskModule

    tasks = [TaskConfig(name="a", type="binary")]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    module = MultiTaskModule(tasks, OptimizerConfig(), LRScheduleConfig(), 1, channels_last=True)
    module.set_model(torch.nn.ModuleDict({"body": net}))
    weight = net[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    x = torch.randn(2, 3, 8, 8)
    expected = torch.nn.functional.conv2d(x, weight.detach().contiguous(), net[0].bias.detach()).mean((2, 3))
    module.model.forward = lambda inp: {"a": net(inp)}  # type: ignore[method-assign]
    assert torch.allclose(module(x)["a"], expected, atol=1e-5)
    module.on_fit_end()
    assert net[0].weight is weight and weight.is_contiguous()  # same parameter, ordinary layout again
