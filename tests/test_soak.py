"""Soak: many short searches in one process, some of them failing on a corrupt image with DataLoader
workers, leak neither memory, nor open files, nor child processes."""

from __future__ import annotations

import contextlib
import gc
import io
import os
from pathlib import Path

import pytest
import yaml

from dmtg_nas.cli import main

from .conftest import planted_doc
from .fixtures import write_celeba

RUNS = 18
WARMUP = 4


def resident_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_pids() -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process().children(recursive=True)]
    except ImportError:
        me, out = str(os.getpid()), []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as handle:
                    if handle.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(entry))
        return out


def _search(spec: Path, out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["search", str(spec), "--out", str(out), "-q"])
    return code, err.getvalue()


@pytest.mark.slow
def test_many_searches_leak_no_memory_files_or_processes(tmp_path: Path) -> None:
    celeba = write_celeba(tmp_path / "celeba", n=24)
    corrupt = celeba / "img_align_celeba" / "000005.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    failing = {
        "name": "corrupt",
        "tasks": [{"name": "Smiling", "type": "binary"}],
        "dataset": {"name": "celeba", "root": str(celeba), "size": 16},
        "backbone": {"name": "celeba_resnet", "width": 4},
        "groups": 1,
        "strategy": {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 4, "num_workers": 2, "finetune": {"epochs": 0}},
    }
    samples: list[tuple[int, int, int, int]] = []  # (run, rss, fds, children) after each run
    for i in range(RUNS):
        spec = tmp_path / f"spec{i}.yaml"
        out = tmp_path / f"run{i}"
        if i % 3 == 2:  # a search that dies in its first epoch, inside DataLoader workers
            spec.write_text(yaml.safe_dump(failing))
            code, err = _search(spec, out)
            assert code == 2 and f"{corrupt}: cannot read image" in err, err
        else:
            strategy = {"_base_": "dmtg-plain", "epochs": 2, "batch_size": 64, "seed": i}
            strategy |= {"num_workers": i % 2, "finetune": {"epochs": 1}}
            spec.write_text(yaml.safe_dump(planted_doc(strategy=strategy)))
            code, err = _search(spec, out)
            assert code == 0, err
            assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
        gc.collect()
        samples.append((i, resident_bytes(), open_fds(), len(child_pids())))
    _, warm_rss, warm_fds, _ = samples[WARMUP - 1]
    _, end_rss, end_fds, end_children = samples[-1]
    print("run, RSS MiB, open fds, children:", [(i, r >> 20, f, c) for i, r, f, c in samples])
    assert end_rss <= 1.10 * warm_rss, (warm_rss >> 20, end_rss >> 20)
    assert max(r for _, r, _, _ in samples[WARMUP:]) <= 1.10 * warm_rss
    assert end_fds <= warm_fds, (warm_fds, end_fds)
    assert end_children == 0 and all(c == 0 for *_, c in samples), samples
