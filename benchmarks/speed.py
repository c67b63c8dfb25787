"""Speed and scale of the DMTG search: supernet overhead, scaling in tasks, search wall time, data wait.

    python benchmarks/speed.py                      # everything, full sizes (minutes on 2 CPU cores)
    python benchmarks/speed.py --short              # everything, small sizes (about a minute)
    python benchmarks/speed.py overhead scaling --out runs/speed.json

Measurements (every ratio is measured side by side in one run, A and B interleaved, median over repeats):

- ``overhead``: one DMTG training step (the supernet with K branches and K*N heads, a Gumbel sample
  per task, the weighted loss, backward, Adam) divided by K x the step of one branch with its N heads
  (the same encoder, batch and heads, in the space's layout: the heads of the branch as one head
  bank), for each encoder, N and K. Target <= 1.10. Also timed: the step of the saved grouped network
  with one branch (one head module per task), and the supernet step over K x that one.
- ``scaling``: DMTG step time at N=40 over N=9 (same encoder, K), target <= 1.3; memory per step:
  bytes of the tensors autograd saves for backward plus parameters, gradients and Adam states
  (on a GPU also ``torch.cuda.max_memory_allocated``); and a CelebA-40-sized step (N=40, K=8).
- ``search``: whole ``run_search`` wall time (Lightning fit of the supernet) over K x the wall time of
  training one all-tasks network for the same epochs on the same data. Target <= 1.15.
- ``data``: share of a training step spent waiting for the next batch (inside the loader) with the
  default loader settings (``num_workers: auto``), on in-memory data and on JPEG files (CelebA
  layout). Target <= 10%. Also reported: the whole time between batches (the loader plus Lightning's
  own hooks).

Results go to ``--out`` (JSON, default ``runs/speed.json``) and a markdown summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("overhead", "scaling", "search", "data")


# ----------------------------------------------------------------------------------------------
# One training step, supernet and single branch
# ----------------------------------------------------------------------------------------------


def _tasks(n: int) -> list[Any]:
    from dmtg_nas.config import TaskConfig

    return [TaskConfig(name=f"a{i:02d}", type="binary") for i in range(n)]


ENCODERS: dict[str, tuple[dict[str, Any], tuple[int, ...], int]] = {
    # name -> (backbone config, input shape, batch size)
    "mlp": ({"name": "mlp", "hidden": [256, 128]}, (64,), 256),
    "timm:test_resnet": ({"name": "timm:test_resnet"}, (3, 32, 32), 64),
    "timm:resnet10t": ({"name": "timm:resnet10t"}, (3, 64, 64), 32),
}


class Stepper:
    """A model, its Adam optimizer (as training builds it), a fixed batch and one ``step()`` (forward, loss,
    backward, update)."""

    def __init__(self, encoder: str, n_tasks: int, k: int, *, supernet: bool, grouped: bool = False) -> None:
        from dmtg_nas.config import BackboneConfig, HeadsConfig, OptimizerConfig, TemperatureConfig
        from dmtg_nas.engine.module import make_optimizer
        from dmtg_nas.nni.router import gumbel_noise
        from dmtg_nas.nni.space import GroupingSpace
        from dmtg_nas.nni.strategy import DMTG

        backbone, shape, batch = ENCODERS[encoder]
        self.tasks = _tasks(n_tasks)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn((batch, *shape), generator=gen)
        self.y = {t.name: torch.randint(0, 2, (batch,), generator=gen).float() for t in self.tasks}
        space = GroupingSpace(self.tasks, k, BackboneConfig(**backbone), HeadsConfig(), shape)
        self.noise = torch.zeros(0)
        self.supernet = supernet
        if supernet:
            self.model: torch.nn.Module = DMTG(TemperatureConfig()).mutate_model(space)
            self.noise = gumbel_noise(0, 0, (n_tasks, k))
        elif grouped:  # the saved grouped network with one branch: one head module per task
            self.model = space.freeze({t.name: 0 for t in self.tasks})
        else:  # one branch and its N heads in the space's layout (one head bank), unmutated
            self.model = space
        self.model.train()
        self.opt = make_optimizer(self.model.parameters(), OptimizerConfig(name="adam", lr=1e-4))
        self.step_index = 0

    def loss(self) -> torch.Tensor:
        from dmtg_nas.engine.losses import head_losses, multitask_loss

        out = self.model(self.x)
        if not self.supernet:
            return multitask_loss(self.tasks, out, self.y)[0]
        bank = self.model.routers  # as DMTGLightningModule computes a step's loss
        z = bank.sample(self.noise, torch.tensor(2.5))
        return bank.loss(z, head_losses(self.tasks, out, self.y), self.tasks)[0]  # type: ignore[no-any-return]

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()

    def timed(self, steps: int, min_seconds: float = 0.0) -> float:
        """Mean seconds per step over at least ``steps`` steps and ``min_seconds``."""
        t0 = time.perf_counter()
        done = 0
        while done < steps or time.perf_counter() - t0 < min_seconds:
            self.step()
            done += 1
        return (time.perf_counter() - t0) / done

    def tensor_memory_mb(self) -> dict[str, float]:
        """Saved-for-backward activations and parameter-side state (params, grads, Adam moments), MB."""
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        self.opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        loss.backward()
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {"activations_mb": sum(storages.values()) / 2**20, "params_grads_adam_mb": 4 * params / 2**20}


def _interleaved(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[list[float], list[float]]:
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(a())
        tb.append(b())
    return ta, tb


def bench_overhead(short: bool) -> dict[str, Any]:
    encoders = ["mlp", "timm:test_resnet"] if short else list(ENCODERS)
    ks = [2, 5] if short else [2, 3, 4, 5]
    repeats, steps, floor = (3, 2, 0.1) if short else (5, 3, 0.3)
    rows = []
    for encoder in encoders:
        for n in (9, 40):
            single = Stepper(encoder, n, 1, supernet=False)
            grouped = Stepper(encoder, n, 1, supernet=False, grouped=True)
            single.step()  # warm-up (allocations, Adam state)
            grouped.step()
            for k in ks:
                sup = Stepper(encoder, n, k, supernet=True)
                sup.step()
                ts, tb, tg = [], [], []
                for _ in range(repeats):  # interleaved: supernet, branch, grouped network, ...
                    ts.append(sup.timed(steps, floor))
                    tb.append(single.timed(steps, floor))
                    tg.append(grouped.timed(steps, floor))
                ratios = [s / (k * b) for s, b in zip(ts, tb)]
                rows.append(
                    {
                        "encoder": encoder,
                        "tasks": n,
                        "k": k,
                        "dmtg_step_ms": 1000 * statistics.median(ts),
                        "branch_step_ms": 1000 * statistics.median(tb),
                        "grouped_step_ms": 1000 * statistics.median(tg),
                        "overhead": statistics.median(ratios),
                        "overhead_vs_grouped": statistics.median(s / (k * g) for s, g in zip(ts, tg)),
                    }
                )
                _say(f"overhead {encoder} N={n} K={k}: {rows[-1]['overhead']:.3f}")
    return {"target": 1.10, "repeats": repeats, "steps_per_repeat": steps, "rows": rows}


def bench_scaling(short: bool) -> dict[str, Any]:
    encoders = ["mlp", "timm:test_resnet"] if short else list(ENCODERS)
    ks = [2, 5] if short else [2, 3, 4, 5, 8]
    repeats, steps, floor = (3, 2, 0.1) if short else (5, 3, 0.3)
    rows, memory = [], []
    for encoder in encoders:
        for k in ks:
            s9, s40 = Stepper(encoder, 9, k, supernet=True), Stepper(encoder, 40, k, supernet=True)
            s9.step()
            s40.step()
            t40, t9 = _interleaved(lambda s=s40: s.timed(steps, floor), lambda s=s9: s.timed(steps, floor), repeats)
            rows.append(
                {
                    "encoder": encoder,
                    "k": k,
                    "n9_step_ms": 1000 * statistics.median(t9),
                    "n40_step_ms": 1000 * statistics.median(t40),
                    "ratio_40_over_9": statistics.median([a / b for a, b in zip(t40, t9)]),
                }
            )
            _say(f"scaling {encoder} K={k}: N40/N9 {rows[-1]['ratio_40_over_9']:.3f}")
            for n, s in ((9, s9), (40, s40)):
                memory.append({"encoder": encoder, "k": k, "tasks": n, **s.tensor_memory_mb()})
    # the CelebA-40-sized problem: 40 binary tasks, K=8, on each encoder
    celeba40 = []
    for encoder in encoders:
        s = Stepper(encoder, 40, 8, supernet=True)
        s.step()
        t = statistics.median(s.timed(steps, floor) for _ in range(repeats))
        celeba40.append({"encoder": encoder, "tasks": 40, "k": 8, "step_ms": 1000 * t, **s.tensor_memory_mb()})
        _say(f"celeba40-sized {encoder} K=8: {1000 * t:.1f} ms/step")
    out: dict[str, Any] = {"target": 1.3, "repeats": repeats, "rows": rows, "memory": memory, "celeba40": celeba40}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ----------------------------------------------------------------------------------------------
# Whole search against one all-tasks network
# ----------------------------------------------------------------------------------------------


def _planted_spec(n: int, k: int, epochs: int, samples: int, **extra: Any) -> Any:
    import dmtg_nas

    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    doc = {
        "name": "speed",
        "tasks": [{"name": f"t{i:02d}", "type": "regression"} for i in range(n)],
        "dataset": {"name": "planted", "group_sizes": sizes, "input_dim": 32, "latent_dim": 4, "samples": samples},
        "backbone": {"name": "mlp", "hidden": [128, 64]},
        "groups": k,
        "strategy": {
            "_base_": "dmtg",
            "epochs": epochs,
            "batch_size": 128,
            "warmup": {"method": "none"},
            "finetune": {"epochs": 0},
            "trainer": {"accelerator": "cpu"},
            **extra,
        },
    }
    return dmtg_nas.load_spec(doc)


def bench_search(short: bool) -> dict[str, Any]:
    from dmtg_nas.components import load_data
    from dmtg_nas.engine.train import train_network
    from dmtg_nas.nni.space import GroupingSpace
    from dmtg_nas.pipeline.run import run_search

    settings = [(9, 3)] if short else [(9, 3), (40, 8)]
    epochs, samples, repeats = (2, 4000, 2) if short else (5, 8000, 3)
    rows = []
    for n, k in settings:
        spec = _planted_spec(n, k, epochs, samples)
        data = load_data(spec)

        def search(spec: Any = spec, data: Any = data) -> float:
            return float(run_search(spec, None, progress=False, data=data).metrics["search"]["search_seconds"])

        def single(spec: Any = spec, data: Any = data) -> float:
            space = GroupingSpace(spec.tasks, 1, spec.backbone, spec.heads, data.input_shape)
            model = space.freeze({t: 0 for t in spec.task_names})
            t0 = time.perf_counter()
            train_network(model, data, spec.tasks, spec.strategy, spec.strategy.epochs)
            return time.perf_counter() - t0

        ts, tb = _interleaved(search, single, repeats)
        rows.append(
            {
                "tasks": n,
                "k": k,
                "epochs": epochs,
                "train_samples": len(data.train),
                "search_s": statistics.median(ts),
                "all_tasks_network_s": statistics.median(tb),
                "ratio": statistics.median([a / (k * b) for a, b in zip(ts, tb)]),
            }
        )
        _say(f"search N={n} K={k}: {rows[-1]['ratio']:.3f}")
    return {"target": 1.15, "repeats": repeats, "rows": rows}


# ----------------------------------------------------------------------------------------------
# Waiting for data
# ----------------------------------------------------------------------------------------------


class DataWait(pl.Callback):
    """Waiting for data in training: the time spent inside the loader's ``next()`` (fetching, decoding
    in workers, collating; ``loader``), and the whole time between the end of one training batch and
    the start of the next (the loader plus Lightning's hooks between batches; ``gap``), against the
    step period. The first batch of each epoch (worker start) and validation are left out. Use as a
    context manager around the run (it times the loader's iterator while inside)."""

    def __init__(self) -> None:
        self.wait: list[float] = []
        self.loader: list[float] = []
        self.period: list[float] = []
        self._end: float | None = None
        self._next: Any = None

    def __enter__(self) -> DataWait:
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        original = self._next = _BaseDataLoaderIter.__next__

        def timed(iterator: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(iterator)
            finally:
                if self._end is not None:  # between two training batches of an epoch
                    self.loader.append(time.perf_counter() - t0)

        _BaseDataLoaderIter.__next__ = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        _BaseDataLoaderIter.__next__ = self._next  # type: ignore[method-assign]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._end = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._end = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.wait.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.period.append(now - self._end)
        self._end = now

    def fraction(self) -> float:
        """Share of the step period spent in the loader."""
        return sum(self.loader) / max(sum(self.period), 1e-12)

    def gap_fraction(self) -> float:
        """Share of the step period between batches (the loader and Lightning's hooks)."""
        return sum(self.wait) / max(sum(self.period), 1e-12)


def bench_data(short: bool) -> dict[str, Any]:
    import dmtg_nas
    from dmtg_nas.data.base import default_workers
    from dmtg_nas.pipeline.run import run_search

    sys.path.insert(0, str(ROOT))
    from tests.fixtures import write_celeba

    rows = []
    spec = _planted_spec(9, 3, 1 if short else 3, 4000 if short else 20000)
    with DataWait() as cb:
        run_search(spec, None, progress=False, callbacks=[cb])
    rows.append(
        {
            "data": "planted (in memory)",
            "encoder": "mlp",
            "workers": 0,
            "wait_fraction": cb.fraction(),
            "gap_fraction": cb.gap_fraction(),
        }
    )
    _say(f"data wait planted: {cb.fraction():.3f} (between batches {cb.gap_fraction():.3f})")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_celeba(Path(tmp) / "celeba", n=300 if short else 1200, partition=(0.8, 0.1, 0.1), unique_images=50)
        names = ["Black_Hair", "Smiling", "Male", "Young", "Eyeglasses", "Wearing_Hat", "Bald", "Goatee", "Bangs"]
        doc = {
            "name": "speed-celeba",
            "tasks": [{"name": a, "type": "binary"} for a in names],
            "dataset": {"name": "celeba", "root": str(root), "size": 32},
            "backbone": {"name": "timm:test_resnet"},
            "branches": 3,
            "strategy": {
                "_base_": "dmtg",
                "epochs": 1 if short else 2,
                "batch_size": 32,
                "warmup": {"method": "none"},
                "finetune": {"epochs": 0},
                "trainer": {"accelerator": "cpu"},
            },
        }
        spec = dmtg_nas.load_spec(doc)
        with DataWait() as cb:
            result = run_search(spec, None, progress=False, callbacks=[cb])
        train = result.metrics["search"]["data_sizes"]["train"]
        workers = default_workers(torch.utils.data.TensorDataset(torch.zeros(1)))  # a per-sample data set
        rows.append(
            {
                "data": f"CelebA JPEG files ({train} train images, 32x32)",
                "encoder": "timm:test_resnet",
                "workers": workers,
                "wait_fraction": cb.fraction(),
                "gap_fraction": cb.gap_fraction(),
            }
        )
        _say(f"data wait celeba: {cb.fraction():.3f} (between batches {cb.gap_fraction():.3f})")
    return {"target": 0.10, "rows": rows}


# ----------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']}", ""]
    if "overhead" in results:
        lines += [
            "| encoder | N | K | DMTG step ms | branch step ms | overhead (target <= 1.10) "
            "| grouped-network step ms | DMTG / (K x grouped) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["overhead"]["rows"]:
            lines.append(
                f"| {r['encoder']} | {r['tasks']} | {r['k']} | {r['dmtg_step_ms']:.1f} | {r['branch_step_ms']:.1f} "
                f"| {r['overhead']:.3f} | {r['grouped_step_ms']:.1f} | {r['overhead_vs_grouped']:.3f} |"
            )
        lines.append("")
    if "scaling" in results:
        sc = results["scaling"]
        lines += ["| encoder | K | N=9 ms | N=40 ms | N=40 / N=9 (target <= 1.3) |", "|---|---|---|---|---|"]
        for r in sc["rows"]:
            lines.append(
                f"| {r['encoder']} | {r['k']} | {r['n9_step_ms']:.1f} | {r['n40_step_ms']:.1f} "
                f"| {r['ratio_40_over_9']:.3f} |"
            )
        lines += ["", "| encoder | K | N | saved activations MB | params+grads+Adam MB |", "|---|---|---|---|---|"]
        for r in sc["memory"]:
            lines.append(
                f"| {r['encoder']} | {r['k']} | {r['tasks']} | {r['activations_mb']:.1f} "
                f"| {r['params_grads_adam_mb']:.1f} |"
            )
        lines += ["", "| CelebA-40-sized step (N=40, K=8) | ms/step | activations MB |", "|---|---|---|"]
        for r in sc["celeba40"]:
            lines.append(f"| {r['encoder']} | {r['step_ms']:.1f} | {r['activations_mb']:.1f} |")
        lines.append("")
    if "search" in results:
        lines += [
            "| N | K | epochs | search s | all-tasks net s | ratio (target <= 1.15) |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["search"]["rows"]:
            lines.append(
                f"| {r['tasks']} | {r['k']} | {r['epochs']} | {r['search_s']:.2f} | {r['all_tasks_network_s']:.2f} "
                f"| {r['ratio']:.3f} |"
            )
        lines.append("")
    if "data" in results:
        lines += [
            "| data | encoder | workers | in the loader (target <= 0.10) | between batches (loader + Lightning) |",
            "|---|---|---|---|---|",
        ]
        for r in results["data"]["rows"]:
            lines.append(
                f"| {r['data']} | {r['encoder']} | {r['workers']} | {r['wait_fraction']:.3f} "
                f"| {r['gap_fraction']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"{', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--short", action="store_true", help="small sizes and few repeats (about a minute)")
    parser.add_argument("--out", type=Path, default=Path("runs/speed.json"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: %(default)s; on shared cores more threads mostly measure contention)",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "nni"):
        logging.getLogger(name).setLevel(logging.ERROR)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, {device}",
        "short": args.short,
        "torch": torch.__version__,
    }
    runners = {"overhead": bench_overhead, "scaling": bench_scaling, "search": bench_search, "data": bench_data}
    for name in args.sections or SECTIONS:
        t0 = time.perf_counter()
        results[name] = runners[name](args.short)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
