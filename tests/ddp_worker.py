"""A search run as its own process, for the distributed tests: ``python -m tests.ddp_worker OUT DEVICES BATCH``.

With DEVICES > 1 Lightning's DDP launcher runs this same command again for the other ranks; every
rank writes its final grouping logits to ``OUT/logits-rank<r>.json`` (a test-only callback), and
rank 0 writes the usual search outputs to ``OUT/run``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


class DumpLogits(pl.Callback):
    """Writes this rank's grouping logits (and global step) when training ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        bank = pl_module.bank
        rows = dict(zip(bank.task_names, bank.logits.detach().cpu().tolist()))
        path = self.folder / f"logits-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, "step": trainer.global_step, "logits": rows}))


def spec_doc(devices: int, batch_size: int) -> dict[str, Any]:
    """Two planted groups of three regression tasks; K=2; no warm start, no fine-tuning."""
    return {
        "name": "ddp",
        "tasks": [{"name": f"t{i}", "type": "regression"} for i in range(6)],
        "dataset": {"name": "planted", "group_sizes": [3, 3], "input_dim": 8, "latent_dim": 3, "samples": 640},
        "backbone": {"name": "mlp", "hidden": [16, 4]},
        "groups": 2,
        "strategy": {
            "_base_": "dmtg",
            "epochs": 3,
            "batch_size": batch_size,
            "warmup": {"method": "none"},
            "finetune": {"epochs": 0},
            "optimizer": {"lr": 0.01},
            "trainer": {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto"},
        },
    }


def main(argv: list[str]) -> int:
    from dmtg_nas import load_spec
    from dmtg_nas.pipeline.run import run_search

    out, devices, batch = Path(argv[0]), int(argv[1]), int(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    spec = load_spec(spec_doc(devices, batch))
    run_search(spec, out / "run", progress=False, overwrite=True, callbacks=[DumpLogits(out)])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    raise SystemExit(main(sys.argv[1:]))
