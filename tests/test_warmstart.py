"""The warm start's pieces: attribution affinity, spectral clusters and the cluster count."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dmtg_nas.config import TaskConfig
from dmtg_nas.warmstart import attribution_affinity, cluster_count, spectral_clusters


def block_affinity(sizes: list[int], inside: float = 0.6, across: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    a = np.where(labels[:, None] == labels[None, :], inside, across) + rng.uniform(0, 0.05, (len(labels),) * 2)
    np.fill_diagonal(a, 1.0)
    return a


def test_linear_tasks_affinity_is_the_squared_cosine_of_their_directions() -> None:
    # task i reads x . v_i: its input gradient is v_i everywhere, a rank-1 subspace
    v = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])

    class Linear(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {f"t{i}": (x @ v[i]).unsqueeze(1) for i in range(3)}

    tasks = [TaskConfig(name=f"t{i}", type="regression") for i in range(3)]
    a = attribution_affinity(Linear(), tasks, torch.randn(16, 3), rank=1)
    expected = (v @ v.T).pow(2)
    assert torch.allclose(a, expected, atol=1e-5)


@pytest.mark.parametrize("sizes", [[2, 2, 2], [3, 3], [4, 2], [2, 2, 2, 2, 2]])
def test_spectral_clusters_recover_blocks(sizes: list[int]) -> None:
    a = block_affinity(sizes)
    labels = spectral_clusters(a, len(sizes))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    # same partition up to relabelling
    assert len({(int(t), int(c)) for t, c in zip(truth, labels)}) == len(sizes)


def test_cluster_counts_the_blocks_up_to_k() -> None:
    assert cluster_count(block_affinity([2, 2, 2]), 4) == 3
    assert cluster_count(block_affinity([2, 2, 2]), 6) == 3  # K >= N: at most N - 1
    assert cluster_count(block_affinity([3, 3]), 5) == 2
    assert cluster_count(block_affinity([2, 2, 2, 2, 2]), 5) == 5
    # a loosely separated third cluster still counts
    weak = block_affinity([4, 3, 2])
    weak[7:, :7] = weak[:7, 7:] = 0.3  # the pair is only loosely apart from the others
    assert cluster_count(weak, 3) == 3
    # never more than K, never fewer than 2 (one cluster would leave the search nothing to start from)
    assert cluster_count(block_affinity([2, 2, 2]), 2) == 2
    assert cluster_count(np.full((5, 5), 0.5) + np.eye(5) * 0.5, 4) == 2  # no structure at all


class _Batches(pl.Callback):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        self.sizes.append(int(batch[0].shape[0]))


@pytest.mark.parametrize(
    ("warmup", "expected"),
    [
        # 240 training samples: 4 batches of 64 (the strategy's size) per epoch, 2 epochs
        ({"epochs": 2, "min_steps": 0}, [64, 64, 64, 48] * 2),
        # warmup.batch_size 32: 8 batches per epoch
        ({"epochs": 2, "min_steps": 0, "batch_size": 32}, ([32] * 7 + [16]) * 2),
        # at least 20 steps: 3 epochs of 8
        ({"epochs": 1, "min_steps": 20, "batch_size": 32}, ([32] * 7 + [16]) * 3),
    ],
)
def test_warm_start_trains_with_its_batch_size_and_minimum_steps(warmup: dict[str, Any], expected: list[int]) -> None:
    import dmtg_nas
    from dmtg_nas.components import load_data
    from dmtg_nas.warmstart import attribution_warm_start

    from .conftest import planted_doc

    doc = planted_doc()
    doc["strategy"]["warmup"] = {"method": "attribution", **warmup}
    spec = dmtg_nas.load_spec(doc)
    batches = _Batches()
    warm = attribution_warm_start(spec, load_data(spec), callbacks=[batches])
    assert batches.sizes == expected
    assert len(warm.clusters) == 4 and len(warm.affinity) == 4


class _Parameters(pl.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.count = sum(p.numel() for p in pl_module.parameters())


def _mlp_parameters(inputs: int, hidden: list[int], outputs: int) -> int:
    widths = [inputs, *hidden, outputs]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


@pytest.mark.parametrize(("width", "hidden"), [(1.0, [8, 3]), (0.5, [4, 2]), ("auto", [8, 3])])
def test_warm_start_trains_a_proxy_of_the_encoder_at_its_width(width: Any, hidden: list[int]) -> None:
    import dmtg_nas
    from dmtg_nas.components import load_data
    from dmtg_nas.warmstart import attribution_warm_start

    from .conftest import planted_doc

    doc = planted_doc()  # mlp [8, 3] on 8 inputs, 4 regression tasks
    doc["strategy"]["warmup"] = {"method": "attribution", "epochs": 1, "min_steps": 0, "width": width}
    spec = dmtg_nas.load_spec(doc)
    params = _Parameters()
    attribution_warm_start(spec, load_data(spec), callbacks=[params])
    assert params.count == 4 * _mlp_parameters(8, hidden, 1)


def test_proxy_width_is_half_for_image_encoders_with_widths_only() -> None:
    import dmtg_nas
    from dmtg_nas.warmstart import proxy_width

    from .conftest import planted_doc

    def width(**overrides: Any) -> float:
        doc = planted_doc()
        doc["strategy"]["warmup"] = {"method": "attribution", **overrides.pop("warmup", {})}
        return proxy_width(dmtg_nas.load_spec({**doc, **overrides}))

    assert width() == 1.0  # mlp
    assert width(warmup={"width": 0.25}) == 0.25
    assert proxy_width(dmtg_nas.load_spec("digits")) == 0.5  # convnet
    assert proxy_width(dmtg_nas.load_spec("digits", ["backbone={name: celeba_resnet}"])) == 0.5
    assert proxy_width(dmtg_nas.load_spec("digits", ["backbone={name: 'timm:test_resnet'}"])) == 1.0
    assert proxy_width(dmtg_nas.load_spec("digits", ["strategy.warmup.width=1"])) == 1.0


def _singles(doc: dict[str, Any]) -> tuple[Any, Any, Any]:
    import dmtg_nas
    from dmtg_nas.components import load_data
    from dmtg_nas.nni.space import GroupingSpace

    spec = dmtg_nas.load_spec(doc)
    data = load_data(spec)
    n = len(spec.tasks)
    space = GroupingSpace(spec.tasks, n, spec.backbone, spec.heads, data.input_shape, "independent")
    return spec, data, space.freeze({t: i for i, t in enumerate(spec.task_names)})


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_stacked_singles_compute_and_train_as_the_separate_networks(norm: str) -> None:
    from dmtg_nas.engine.stacked import StackedSingles
    from dmtg_nas.engine.train import train_network

    from .conftest import planted_doc

    doc = planted_doc()
    doc["backbone"] = {"name": "mlp", "hidden": [16, 8], "norm": norm, "activation": "gelu"}
    spec, data, singles = _singles(doc)
    stacked = StackedSingles.build(singles)
    assert stacked is not None
    # one parameter per layer and per head bank, not one per network
    assert len(list(stacked.parameters())) == (10 if norm == "layer" else 6)
    x = torch.randn(9, *data.input_shape)
    before, out = singles(x), stacked(x)
    assert set(out) == set(before) and all(out[k].shape == before[k].shape == (9, 1) for k in out)
    assert all(torch.allclose(out[k], before[k], atol=1e-6) for k in out)
    # the same training (data order, optimizer) gives the same networks, up to float rounding
    pl.seed_everything(0, workers=True, verbose=False)
    train_network(singles, data, spec.tasks, spec.strategy, 2)
    pl.seed_everything(0, workers=True, verbose=False)
    train_network(stacked, data, spec.tasks, spec.strategy, 2)
    after, trained = singles(x), stacked(x)
    assert all(not torch.allclose(after[k], before[k], atol=1e-3) for k in after)  # both trained
    assert all(torch.allclose(trained[k], after[k], atol=1e-4) for k in after)


def test_stacked_singles_pad_heads_of_different_widths_and_refuse_other_encoders() -> None:
    from dmtg_nas.engine.stacked import StackedSingles

    from .conftest import planted_doc

    doc = planted_doc()
    spec, data, singles = _singles(doc)
    singles.heads[1] = torch.nn.Linear(singles.branches[1].out_features, 3)  # a 3-wide output
    stacked = StackedSingles.build(singles)
    assert stacked is not None
    x = torch.randn(5, *data.input_shape)
    out = stacked(x)
    assert out[spec.task_names[1]].shape == (5, 3)
    assert torch.allclose(out[spec.task_names[1]], singles(x)[spec.task_names[1]], atol=1e-6)
    # batch norm keeps running statistics per network: the networks train separately
    doc["backbone"] = {"name": "mlp", "hidden": [16, 8], "norm": "batch"}
    assert StackedSingles.build(_singles(doc)[2]) is None
    # a head with a hidden layer is not one linear layer
    doc["backbone"] = {"name": "mlp", "hidden": [16, 8]}
    doc["heads"] = {"hidden": [4]}
    assert StackedSingles.build(_singles(doc)[2]) is None


def test_auto_warm_start_runs_where_the_merge_check_trains_batched_only(tmp_path: Any) -> None:
    import dmtg_nas
    from dmtg_nas.components import load_data
    from dmtg_nas.warmstart import AUTO_SKIPPED, warm_start_method

    from .conftest import planted_doc

    vector = dmtg_nas.load_spec(planted_doc())  # mlp on in-memory vectors
    assert vector.strategy.warmup.method == "auto"  # the default preset's
    assert warm_start_method(vector, load_data(vector)) == "attribution"
    image_doc = planted_doc(
        dataset={"name": "planted", "group_sizes": [2, 2], "input_dim": 36, "image_size": 6, "samples": 200},
        backbone={"name": "convnet", "channels": [4]},  # batch norm
    )
    image = dmtg_nas.load_spec(image_doc)
    image_data = load_data(image)
    assert warm_start_method(image, image_data) == "none"
    forced = dmtg_nas.load_spec(image_doc, ["strategy.warmup.method=attribution"])
    assert warm_start_method(forced, image_data) == "attribution"
    off = dmtg_nas.load_spec(planted_doc(), ["strategy.warmup.method=none"])
    assert warm_start_method(off, load_data(off)) == "none"

    result = dmtg_nas.search(image, out_dir=tmp_path / "image")
    assert result.metrics["warmup"] == {"method": "none", "skipped": AUTO_SKIPPED}
    assert result.metrics["search"]["warm_start_seconds"] == 0
    assert not (tmp_path / "image" / "warmstart.json").exists()
    assert "warm_start" not in [stage["stage"] for stage in result.metrics["stages"]]
    result = dmtg_nas.search(forced, out_dir=tmp_path / "forced")
    assert result.metrics["warmup"]["method"] == "attribution" and result.metrics["search"]["warm_start_seconds"] > 0
    assert (tmp_path / "forced" / "warmstart.json").is_file() and result.metrics["stages"][0]["stage"] == "warm_start"
    vector_result = dmtg_nas.search(vector)
    assert (
        vector_result.metrics["warmup"]["method"] == "attribution"
        and len(vector_result.metrics["warmup"]["clusters"]) == 2
    )
