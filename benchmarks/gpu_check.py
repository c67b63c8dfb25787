"""A one-GPU check of the search at real scale: CelebA-40 and Taskonomy-5 shaped problems on
generated data at full resolution, with torch.compile and mixed precision on and off.

    python benchmarks/gpu_check.py                        # one GPU, full sizes (meant to take under 10 minutes)
    python benchmarks/gpu_check.py --compile off          # skip the compiled settings
    python benchmarks/gpu_check.py --problems taskonomy --steps 50 --out runs/t5.json
    python benchmarks/gpu_check.py --tiny                 # tiny sizes on the CPU (what the test runs)

Problems, as the shipped search spaces define them (``search_spaces/celeba40.yaml``,
``search_spaces/taskonomy5.yaml``), on files written in the real on-disk formats by the test
fixtures (``tests/fixtures.py``) and read by the real loaders:

- ``celeba``: the 40 attributes as binary tasks, 64x64 images decoded from CelebA-layout JPEGs,
  the ``celeba_resnet`` encoder, K = 8 branches, batch 256 (the paper's CelebA recipe).
- ``taskonomy``: the five dense tasks (depth, normals, 18-class segmentation, 2D keypoints, texture
  edges) at 256x256 from Taskonomy-layout PNGs, timm's ``xception41`` with the shipped decoders,
  K = 3 branches, batch 32 (the paper's Taskonomy recipe).

Each problem runs the one-shot search (the supernet's Lightning fit with the strategy's own Trainer,
warm start, fine-tuning and merge check off) for ``--warmup`` + ``--steps`` optimisation steps in
every setting: compile off/on x AMP off/on (AMP: ``bf16-mixed`` where the GPU supports bfloat16 and
on the CPU, else ``16-mixed``). Over the ``--steps`` after the warm-up (compilation happens there):

- ``step_ms``: wall time per step (the GPU is synchronised only at both ends of the window);
- ``samples_per_s``: batch x steps / window;
- ``data_wait_ms`` and ``data_wait_fraction``: time the training process spent blocked in the
  loader's ``next()`` (waiting for the workers' decoded batches), per step and as a share of the window;
- ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` over the search (null on the CPU);
- ``warmup_s``: the warm-up steps (with compilation when compile is on);
- ``vs_plain``: the plain setting's (compile off, AMP off) step time over this one's, same problem.

A setting that fails (out of memory, a compiler error) is recorded with its error and the others go
on. One markdown table on stdout, the JSON in ``--out`` (default ``runs/gpu_check.json``), progress
on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBLEMS = ("celeba", "taskonomy")
TINY_CELEBA_WIDTH = 8  # --tiny: celeba_resnet's width (the shipped space's encoder otherwise)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Meter(pl.Callback):
    """Step time, data wait and peak GPU memory of one fit: the window runs from the start of batch
    ``warmup`` to the end of batch ``warmup + steps - 1``; the loader's ``next()`` is timed while the
    window is open (use as a context manager around the fit)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.cuda = torch.cuda.is_available()
        self.started = self.t0 = self.t1 = 0.0
        self.waits: list[float] = []
        self.measuring = False
        self.peak_mb: float | None = None
        self.reserved_mb: float | None = None
        self._next: Any = None

    def __enter__(self) -> Meter:
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        original = self._next = _BaseDataLoaderIter.__next__

        def timed(iterator: Any) -> Any:
            if not self.measuring:
                return original(iterator)
            t0 = time.perf_counter()
            try:
                return original(iterator)
            finally:
                self.waits.append(time.perf_counter() - t0)

        _BaseDataLoaderIter.__next__ = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        _BaseDataLoaderIter.__next__ = self._next  # type: ignore[method-assign]

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._sync()
        self.started = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()
            self.measuring = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if idx == self.warmup + self.steps - 1:
            self._sync()
            self.t1 = time.perf_counter()
            self.measuring = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.measuring = False
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            self.reserved_mb = torch.cuda.max_memory_reserved() / 2**20

    def result(self, batch: int) -> dict[str, Any]:
        window = self.t1 - self.t0
        if self.t1 <= 0 or window <= 0:
            raise RuntimeError(f"the fit ended before {self.warmup + self.steps} steps")
        wait = sum(self.waits)
        return {
            "step_ms": 1000 * window / self.steps,
            "samples_per_s": batch * self.steps / window,
            "data_wait_ms": 1000 * wait / self.steps,
            "data_wait_fraction": wait / window,
            "peak_gpu_mb": self.peak_mb,
            "reserved_gpu_mb": self.reserved_mb,
            "warmup_s": self.t0 - self.started,
        }


# ----------------------------------------------------------------------------------------------
# The problems: generated files in the real formats, the shipped search spaces
# ----------------------------------------------------------------------------------------------


def problem_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Sizes of each problem (full, or --tiny, or as given); N is the shipped search space's."""
    from dmtg_nas.config import resolve_document

    def tasks(space: str) -> int:
        return len(resolve_document(space, "search_spaces")[0]["tasks"])

    tiny = args.tiny
    celeba = {
        "space": "celeba40",
        "tasks": tasks("celeba40"),
        "k": 8,
        "size": args.celeba_size or (16 if tiny else 64),
        "batch": args.celeba_batch or (8 if tiny else 256),
        "encoder": f"celeba_resnet (width {TINY_CELEBA_WIDTH})" if tiny else "celeba_resnet",
    }
    taskonomy = {
        "space": "taskonomy5",
        "tasks": tasks("taskonomy5"),
        "k": 3,
        "size": args.taskonomy_size or (32 if tiny else 256),
        "batch": args.taskonomy_batch or (4 if tiny else 32),
        "encoder": args.taskonomy_encoder or ("convnet" if tiny else "timm:xception41"),
    }
    return {"celeba": celeba, "taskonomy": taskonomy}


def write_data(problem: str, cfg: dict[str, Any], samples: int, folder: Path) -> Path:
    """Files in the problem's on-disk format with at least ``samples`` training samples."""
    from tests.fixtures import write_celeba, write_taskonomy

    if problem == "celeba":
        n = samples + 2 * max(cfg["batch"], 8)  # val and test: a batch each
        train = samples / n
        return write_celeba(
            folder / "celeba", n=n, partition=(train, (1 - train) / 2, (1 - train) / 2), unique_images=64
        )
    few = max(2, min(cfg["batch"], 8))
    return write_taskonomy(folder / "taskonomy", {"b1": samples, "b2": few, "b3": few}, size=cfg["size"], unique=64)


def spec_for(
    problem: str, cfg: dict[str, Any], root: Path, args: argparse.Namespace, *, compile: bool, amp: str | None
) -> Any:
    """The shipped search space with the check's sizes: one epoch of warmup + steps batches, the
    search stage alone."""
    import dmtg_nas

    sets = [
        f"dataset.root={root}",
        f"dataset.size={cfg['size']}",
        f"branches={cfg['k']}",
        "strategy.epochs=1",
        f"strategy.batch_size={cfg['batch']}",
        "strategy.warmup.method=none",
        "strategy.finetune.epochs=0",
        "strategy.local_search.enabled=false",
        f"strategy.trainer.compile={'true' if compile else 'false'}",
        f"strategy.trainer.precision={amp or '32-true'}",
        f"strategy.trainer.extra={{limit_train_batches: {args.warmup + args.steps}}}",
    ]
    if args.workers is not None:
        sets.append(f"strategy.num_workers={args.workers}")
    if args.cpu:
        sets.append("strategy.trainer.accelerator=cpu")
    if problem == "celeba":
        if args.tiny:
            sets.append(f"backbone={{name: celeba_resnet, width: {TINY_CELEBA_WIDTH}}}")
    else:
        sets.append("dataset.buildings={train: [b1], val: [b2], test: [b3]}")
        encoder = cfg["encoder"]
        if encoder == "convnet":
            sets += ["backbone={name: convnet, channels: [8, 8]}", "heads={decoder_width: 8, decoder_maps: 2}"]
        elif encoder != "timm:xception41":
            sets.append(f"backbone={{name: '{encoder}'}}")
    return dmtg_nas.load_spec(cfg["space"], sets)


def run_setting(
    problem: str, cfg: dict[str, Any], root: Path, args: argparse.Namespace, compile: bool, amp: str | None
) -> dict[str, Any]:
    """One search in one setting, measured."""
    import torch._dynamo

    from dmtg_nas.pipeline.run import run_search

    row: dict[str, Any] = {
        "problem": problem,
        "compile": compile,
        "amp": amp is not None,
        "precision": amp or "32-true",
        "steps": args.steps,
    }
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        spec = spec_for(problem, cfg, root, args, compile=compile, amp=amp)
        row["workers"] = spec.strategy.num_workers
        with Meter(args.warmup, args.steps) as meter:
            run_search(spec, None, progress=False, callbacks=[meter])
        row.update(meter.result(cfg["batch"]), ok=True, error=None)
    except Exception as exc:  # an out-of-memory or a compiler error: recorded, the others go on
        first = (str(exc).strip().splitlines() or [""])[0]
        row.update(ok=False, error=f"{type(exc).__name__}: {first}"[:500])
        _say(traceback.format_exc(limit=3))
    return row


def amp_precision(choice: str, cpu: bool) -> str:
    if choice != "auto":
        return choice
    if cpu or not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"


def _choices(value: str) -> list[bool]:
    return {"on": [True], "off": [False], "both": [False, True]}[value]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"device: {results['device']}; torch {results['torch']}; {results['settings']['steps']} steps after "
        f"{results['settings']['warmup']} warm-up steps",
        "",
        "| problem | N | K | size | batch | compile | AMP | step ms | samples/s | data wait ms (share) "
        "| peak GPU MB | warm-up s | vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)

    for r in results["rows"]:
        p = results["problems"][r["problem"]]
        head = (
            f"| {r['problem']} | {p['tasks']} | {p['k']} | {p['size']} | {p['batch']} | "
            f"{'on' if r['compile'] else 'off'} | {r['precision'] if r['amp'] else 'off'} |"
        )
        if not r["ok"]:
            lines.append(f"{head} failed: {r['error']} |||||||")
            continue
        lines.append(
            f"{head} {num(r['step_ms'], '.1f')} | {num(r['samples_per_s'], '.0f')} | "
            f"{num(r['data_wait_ms'], '.1f')} ({num(r['data_wait_fraction'], '.0%')}) | "
            f"{num(r['peak_gpu_mb'], '.0f')} | "
            f"{num(r['warmup_s'], '.1f')} | {num(r.get('vs_plain'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="celeba,taskonomy", help="comma-separated: celeba, taskonomy")
    parser.add_argument("--compile", choices=["on", "off", "both"], default="both")
    parser.add_argument("--amp", choices=["on", "off", "both"], default="both")
    parser.add_argument("--amp-precision", choices=["auto", "bf16-mixed", "16-mixed"], default="auto")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per setting (default 30; tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before the measurement (default 5; tiny 1)")
    parser.add_argument("--celeba-size", type=int, default=None, help="image side (default 64)")
    parser.add_argument("--celeba-batch", type=int, default=None, help="default 256")
    parser.add_argument("--taskonomy-size", type=int, default=None, help="image side (default 256)")
    parser.add_argument("--taskonomy-batch", type=int, default=None, help="default 32")
    parser.add_argument("--taskonomy-encoder", default=None, help="default timm:xception41 (tiny: a two-stage convnet)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the search space's, 8)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 0 workers, on the CPU: a check of the script")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU (implied by --tiny)")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (default inductor; eager/aot_eager only check the compiled path quickly)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"))
    args = parser.parse_args(argv)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown or not problems:
        parser.error(f"unknown problem(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PROBLEMS)}")
    args.cpu = args.cpu or args.tiny
    args.steps = args.steps if args.steps is not None else (3 if args.tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    if args.tiny and args.workers is None:
        args.workers = 0
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.compile_backend != "inductor":
        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)  # type: ignore[assignment]
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "nni"):
        logging.getLogger(name).setLevel(logging.ERROR)
    on_gpu = torch.cuda.is_available() and not args.cpu
    amp = amp_precision(args.amp_precision, not on_gpu)
    cfgs = problem_settings(args)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or platform.machine()})",
        "cuda": on_gpu,
        "torch": torch.__version__,
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "tiny": args.tiny,
            "compile_backend": args.compile_backend,
            "amp_precision": amp,
        },
        "problems": {p: cfgs[p] for p in problems},
        "rows": [],
    }
    started = time.perf_counter()
    samples_needed = {p: cfgs[p]["batch"] * (args.warmup + args.steps) for p in problems}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for problem in problems:
            cfg = cfgs[problem]
            t0 = time.perf_counter()
            root = write_data(problem, cfg, samples_needed[problem], Path(tmp))
            cfg["data_files_s"] = round(time.perf_counter() - t0, 1)
            _say(f"[{problem}] wrote {samples_needed[problem]} training samples in {cfg['data_files_s']} s")
            plain: float | None = None
            for compile in _choices(args.compile):
                for use_amp in _choices(args.amp):
                    row = run_setting(problem, cfg, root, args, compile, amp if use_amp else None)
                    if row["ok"] and not compile and not use_amp:
                        plain = row["step_ms"]
                    results["rows"].append(row)
                    what = f"[{problem}] compile {'on' if compile else 'off'}, AMP {amp if use_amp else 'off'}"
                    if row["ok"]:
                        _say(
                            f"{what}: {row['step_ms']:.1f} ms/step, {row['samples_per_s']:.0f} samples/s, "
                            f"data wait {row['data_wait_fraction']:.0%}, warm-up {row['warmup_s']:.1f} s"
                        )
                    else:
                        _say(f"{what}: failed: {row['error']}")
            for row in results["rows"]:
                if row["problem"] == problem and row["ok"] and plain is not None:
                    row["vs_plain"] = plain / row["step_ms"]
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown(results), end="")
    _say(f"done in {results['seconds']} s; JSON in {args.out}")
    return 0 if all(r["ok"] for r in results["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
