"""The ``dmtg`` command line.

    dmtg search SPEC [--out DIR] [--set KEY=VALUE ...]   run a grouping search
    dmtg search --resume DIR                             continue an interrupted search
    dmtg validate SPEC [--set KEY=VALUE ...]             check a spec without running it
    dmtg retrain DIR [--init scratch|search]             train a finished search's groups to completion
    dmtg benchmark SPEC [--methods ...] [--seeds N]      DMTG against the baselines, side by side
    dmtg tune SPEC [--study NAME] [--storage URL]        tune K and the temperature schedule with Optuna
    dmtg portal SPEC [--tuner T] [--port P]              the same trials as an NNI experiment (web portal)
    dmtg list                                            shipped search spaces, strategies, names

User mistakes (bad specs, missing files) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import DmtgError, SearchInterrupted

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2

_EPILOG = """\
examples:
  dmtg search planted                                  shipped search space, outputs in runs/
  dmtg search my_space.yaml --out runs/a --set branches=4 --set strategy.epochs=20
  dmtg search --resume runs/a                          continue after an interruption
  dmtg validate my_space.yaml
  dmtg retrain runs/a --init scratch                   the found groups, trained from fresh weights
  dmtg benchmark planted6 --seeds 3 --out runs/bench           DMTG vs TAG, HOA, naive, STL, random
  dmtg tune planted --trials 30                        Optuna over K, tau schedule, learning rates
  dmtg portal planted --trials 10                      the same trials as an NNI experiment, in NNI's web portal
  dmtg list

SPEC is a shipped search-space name (see 'dmtg list') or a YAML file. --set overrides any key of
the merged document with a YAML value, e.g. --set dataset.split.seed=3 --set strategy=paper-celeba.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmtg",
        description="Find which tasks should share an encoder and train the grouped multi-task model, "
        "in one run (DMTG one-shot differentiable multi-task grouping on NNI).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dmtg-nas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    search = sub.add_parser(
        "search",
        help="run a grouping search and train the grouped network",
        description="Train the DMTG supernet on the spec's data, export the task groups, prune to the "
        "grouped network (with the default strategy: after an affinity warm start, and followed by a merge "
        "check that merges groups where networks trained on the merged groups have a lower validation loss; "
        "strategy=dmtg-oneshot skips it), evaluate it and write the outputs (grouping.json, metrics.json, "
        "probabilities.png, config.yaml, model.pt, checkpoints/) to --out. A checkpoint is saved after every "
        "epoch; Ctrl-C or SIGTERM saves one and stops after the current step (exit code 130 or 143), and "
        "--resume continues exactly where the run stopped. One run at a time per output folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("spec", nargs="?", help="search-space name or YAML file (omit with --resume)")
    search.add_argument("--out", "-o", type=Path, help="output folder (default: runs/<name>-<time>)")
    _add_set(search)
    search.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the interrupted search in DIR from checkpoints/last.ckpt (last.prev.ckpt if that one is "
        "damaged)",
    )
    search.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    _add_trust_code(search, "--resume DIR")
    search.add_argument("--quiet", "-q", action="store_true", help="no progress lines, only the result")
    search.add_argument("--json", action="store_true", help="print the grouping as JSON instead of a table")
    _add_verbose(search)
    _add_trainer_flags(search)

    validate = sub.add_parser(
        "validate",
        help="check a spec (keys, types, names, files) without running it",
        description="Validate a search-space spec and the files it names; exit 0 if it is valid, 2 if not.",
    )
    validate.add_argument("spec", help="search-space name or YAML file")
    _add_set(validate)

    retrain = sub.add_parser(
        "retrain",
        help="train the grouped network of a finished search to completion",
        description="Train the groups found by a search, from fresh weights (--init scratch) or from the "
        "search's pruned network (--init search), and report test metrics. Writes DIR/retrain/metrics.json "
        "and DIR/retrain/model.pt (or under --out).",
    )
    retrain.add_argument("run", type=Path, help="a search output folder")
    retrain.add_argument("--init", choices=["scratch", "search"], default="scratch", help="starting weights")
    retrain.add_argument("--epochs", type=int, help="training epochs (default: the search's budget)")
    retrain.add_argument("--out", "-o", type=Path, help="output folder (default: RUN/retrain)")
    retrain.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _add_trust_code(retrain, "RUN")
    _add_verbose(retrain)
    _add_trainer_flags(retrain)

    bench = sub.add_parser(
        "benchmark",
        help="run DMTG and the baselines on the same data and budget; print who wins at what cost",
        description="Methods: dmtg, tag, hoa (exhaustive), hoa-pairs, hoa-cover (HOA's overlapping rule), "
        "naive (all tasks in one network), stl (one network per task), random (random partition into K "
        "groups). Writes results.md, results.csv, results.json and results.png to --out; an interrupted "
        "benchmark continues with --resume.",
    )
    bench.add_argument("spec", help="search-space name or YAML file")
    bench.add_argument(
        "--methods", default="dmtg,tag,hoa,naive,stl,random", help="comma-separated (default: %(default)s)"
    )
    bench.add_argument("--seeds", type=int, default=3, help="training seeds per method (default: %(default)s)")
    bench.add_argument("--out", "-o", type=Path, help="output folder (default: runs/bench-<name>-<time>)")
    bench.add_argument("--affinity-every", type=int, default=1, help="TAG: measure affinity every k-th step")
    bench.add_argument("--resume", action="store_true", help="skip (method, seed) runs already in --out")
    bench.add_argument("--overwrite", action="store_true", help="allow a non-empty --out folder")
    bench.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _add_verbose(bench)
    _add_report(bench, "docs/results/benchmark-planted6.md")
    _add_set(bench)

    from .shapes import SHAPE_GROUPS, SHAPES

    suite = sub.add_parser(
        "suite",
        help="score a strategy on the benchmark suite (ARI, merges, gap to the exhaustive optimum)",
        description="Runs the strategy on planted shapes (group sizes, K, noise, task types, opposed tasks, "
        "images) and real-data shapes (scikit-learn's digits as images or a pixel table, no planted "
        "partition) over seeds and writes suite.md, suite.json and suite.png. Shapes with at most 6 tasks "
        "are compared with the exhaustive optimum (one network per task subset) and the median random "
        "partition; the larger planted ones with the planted partition trained from scratch. "
        f"Shapes: {', '.join(SHAPES)}.",
    )
    suite.add_argument("--strategy", action="append", help="strategy preset or file (repeatable; default: dmtg)")
    suite.add_argument(
        "--method",
        action="append",
        default=[],
        help="also score a baseline grouping method with the first strategy's budget, side by side "
        "(repeatable): tag, hoa (exhaustive, from its own trainings), hoa-pairs, random, naive, stl",
    )
    suite.add_argument(
        "--reference-trainings",
        type=int,
        default=1,
        metavar="R",
        help="train every subset network of the exhaustive reference R times and average their losses: "
        "less training noise in the optimum and the gaps; with --resume, earlier runs are scored "
        "again against it (default: %(default)s)",
    )
    suite.add_argument(
        "--shapes",
        help="comma-separated shape names or a set: 'exhaustive' (the planted shapes compared with the "
        f"exhaustive optimum: {', '.join(SHAPE_GROUPS['exhaustive'])}), 'real' (the real-data shapes: "
        f"{', '.join(SHAPE_GROUPS['real'])}), 'all' (default: the short set {','.join(SHAPE_GROUPS['short'])})",
    )
    suite.add_argument(
        "--seeds", default="3", help="a count (3: seeds 0-2), a range (3-5) or a list (0,4,7) (default: %(default)s)"
    )
    suite.add_argument(
        "--start",
        choices=("swapped", "random"),
        help="start each strategy's search from a wrong grouping (strategy.init.groups): the optimum (or "
        "the planted partition) with two tasks of different groups swapped, or a random partition into K "
        "groups; the report says whether the search left it for a better one (default: the strategy's own start)",
    )
    suite.add_argument("--out", "-o", type=Path, help="output folder (default: runs/suite-<time>)")
    suite.add_argument("--resume", action="store_true", help="skip runs already in --out")
    suite.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _add_verbose(suite)
    _add_report(suite, "docs/results/suite-short.md")
    _add_set(suite)

    tune = sub.add_parser(
        "tune",
        help="tune K and the temperature schedule with Optuna (one DMTG search per trial)",
        description="An Optuna study over the spec's tuning: section (K range, tau init/final ranges, "
        "schedules, learning rates, per-trial epochs). Each trial is a full search in OUT/trials/trial-NNNN, "
        "scored on the validation total loss of its pruned grouped network; per-epoch validation losses feed "
        "the pruner. Run the same command on other machines with the same --storage URL and --study name to "
        "share the study; run it again to resume. Writes OUT/best.json and OUT/plots/*.png. "
        "--objectives val_loss,branches (or parameters, step_time) makes it a multi-objective study: no "
        "pruning, and the Pareto front printed and written to OUT/pareto.json and OUT/plots/pareto.png.",
    )
    tune.add_argument("spec", help="search-space name or YAML file")
    tune.add_argument("--out", "-o", type=Path, help="output folder (default: runs/tune-<study>)")
    tune.add_argument("--study", help="study name (default: the spec's name); an existing study is resumed")
    tune.add_argument(
        "--storage", help="sqlite:///FILE.db (default: OUT/study.db), postgresql://..., or a journal FILE.log"
    )
    tune.add_argument("--trials", type=int, help="total trials of the study (default: tuning.trials)")
    tune.add_argument("--jobs", type=int, help="parallel workers here, one GPU each (default: number of GPUs)")
    tune.add_argument(
        "--pruner",
        choices=["median", "hyperband", "none"],
        help="default: tuning.pruner (only none with several objectives)",
    )
    tune.add_argument(
        "--objectives",
        default="val_loss",
        help="val_loss (default), or val_loss then any of branches, parameters, step_time, comma-separated: "
        "a multi-objective study and its Pareto front",
    )
    tune.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _add_verbose(tune)
    tune.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --jobs N
    _add_set(tune)

    portal = sub.add_parser(
        "portal",
        help="run the tuning trials (or groupings) as an NNI experiment, watched in NNI's web portal",
        description="Starts an NNI experiment whose trials each run one DMTG search with the trial's values "
        "(--space hparams: K, tau, learning rates from the tuning: section) or train one grouping "
        "(--space grouping: NNI multi-trial search over groupings), reporting per-epoch and final results. "
        "Prints the portal URL and waits; Ctrl-C stops the experiment. Experiment files go under --out.",
    )
    portal.add_argument("spec", nargs="?", help="search-space name or YAML file (omit with --stop or --view)")
    portal.add_argument("--out", "-o", type=Path, help="output folder (default: runs/portal-<name>-<time>)")
    portal.add_argument("--trials", type=int, help="number of trials (default: tuning.trials)")
    portal.add_argument("--concurrency", type=int, default=1, help="trials at once (default: %(default)s)")
    portal.add_argument("--port", type=_port, default=8080, help="web portal port, 1 to 65535 (default: %(default)s)")
    portal.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the portal listens on (default: %(default)s); anything else exposes experiment control "
        "without authentication",
    )
    portal.add_argument(
        "--tuner",
        default="tpe",
        help="tpe, random, evolution, grid (grouping space), or optuna (an Optuna study behind NNI; "
        "default: %(default)s)",
    )
    portal.add_argument("--space", choices=["hparams", "grouping"], default="hparams", help="what the trials vary")
    portal.add_argument("--storage", help="Optuna storage for --tuner optuna (default: OUT/study.db)")
    portal.add_argument("--study", help="Optuna study name for --tuner optuna (default: the spec's name)")
    portal.add_argument("--no-wait", action="store_true", help="start the experiment and return at once")
    portal.add_argument("--stop-when-done", action="store_true", help="stop the experiment when all trials ended")
    portal.add_argument("--stop", type=Path, metavar="DIR", help="stop the detached experiment of run folder DIR")
    portal.add_argument(
        "--view",
        type=Path,
        metavar="DIR",
        help="reopen the finished experiment of run folder DIR in the web portal (view only) on 127.0.0.1, --port, "
        "until Ctrl-C (use it instead of nnictl view, which listens on every interface)",
    )
    _add_set(portal)

    sub.add_parser("list", help="list shipped search spaces, strategy presets, data sets, encoders, schedules")
    return parser


def _port(text: str) -> int:
    """A TCP port the portal can listen on and announce: 1 to 65535 (0 would bind a random one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1 to 65535, got {port}")
    return port


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the merged spec (repeatable), e.g. branches=4 or strategy.epochs=20",
    )


def _add_trust_code(parser: argparse.ArgumentParser, folder: str) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help=f"import and run the code that {folder}/config.yaml names (a package.module:function data set); "
        "without it such a folder is refused: it may come from someone else",
    )


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show everything: Lightning's and NNI's notices and warnings (silenced otherwise) and INFO logs",
    )


def _add_report(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE.md",
        help="also publish the report as a documentation page: the markdown with a line saying which command, "
        f"version, date and machine produced it, and its figure beside it as FILE.png (e.g. {example})",
    )


def _add_trainer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "devices and precision",
        "shortcuts for --set strategy.trainer.KEY=VALUE; with devices x nodes > 1 Lightning's DDP runs the command "
        "once per process, each on its share of every batch (strategy.batch_size stays the global batch), and "
        "rank 0 writes the outputs",
    )
    group.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], help="default: auto (a GPU when there is one)")
    group.add_argument(
        "--devices", type=int, metavar="N", help="processes per node: GPUs, or CPU processes (default: 1)"
    )
    group.add_argument("--num-nodes", type=int, metavar="N", help="machines (default: 1; see docs/devices.md on DDP)")
    group.add_argument(
        "--precision", choices=["32-true", "bf16-mixed", "16-mixed"], help="Lightning precision (default: 32-true)"
    )


def _trainer_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` strings for the devices-and-precision flags that were given."""
    out = []
    for flag, key in (("accelerator", "accelerator"), ("devices", "devices"), ("num_nodes", "num_nodes")):
        value = getattr(args, flag, None)
        if value is not None:
            if key != "accelerator" and value < 1:
                raise DmtgError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
            out.append(f"strategy.trainer.{key}={value}")
    if getattr(args, "precision", None) is not None:
        out.append(f"strategy.trainer.precision={args.precision}")
    return out


def _single_process(spec: Any, command: str) -> None:
    """The commands that write shared result files run as one process (one device each)."""
    if spec.strategy.trainer.world_size > 1:
        raise DmtgError(
            f"dmtg {command} runs each training on one device; strategy.trainer.devices x num_nodes is "
            f"{spec.strategy.trainer.world_size} (use dmtg search / dmtg retrain for multi-device runs)"
        )


@contextlib.contextmanager
def _display(quiet: bool, unit: str) -> Iterator[Any]:
    """The progress line of a command that runs many trainings (``benchmark``, ``suite``, ``tune``):
    a :class:`~dmtg_nas.progress.Display` on stderr counting ``unit``, or None with ``--quiet``;
    ended on the way out, also by an error or Ctrl-C (whose message then starts a line of its own).
    Log records printed meanwhile (a warning about the data) go above the line, not into it."""
    if quiet:
        yield None
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .progress import Display

    display = Display(unit)
    try:
        with logging_redirect_tqdm():
            yield display
    finally:
        display.close()


def _configure_output(verbose: bool) -> None:
    """What a command shows besides its result and its progress.

    The package silences the libraries' known-harmless notices around its own calls
    (:mod:`dmtg_nas.quiet`); ``--verbose`` turns that off and shows INFO logs too. Otherwise NNI's log
    is kept to critical messages: NNI logs every failed training with its traceback before re-raising,
    and the error itself reaches main() (one line for user errors, a full traceback for bugs).
    """
    from .quiet import set_verbose

    set_verbose(verbose)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("nni").setLevel(logging.NOTSET if verbose else logging.CRITICAL)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .components import validate_components
    from .config import load_spec

    spec = load_spec(args.spec, args.overrides)
    validate_components(spec, build_user=True)  # a timm model, a weights file, your own encoder
    s = spec.strategy
    print(
        f"ok: {spec.name}: {len(spec.tasks)} tasks, K={spec.groups}, dataset {spec.dataset.name}, "
        f"backbone {spec.backbone.name}, strategy {s.name} ({s.epochs} epochs, tau {s.temperature.schedule} "
        f"{s.temperature.init})"
    )
    return 0


def _cmd_list() -> int:
    from .catalog import DATASETS
    from .config import _read_yaml
    from .presets import find_preset, list_presets
    from .schedules import SCHEDULES

    for kind, title in (("search_spaces", "search spaces"), ("strategies", "strategy presets")):
        print(f"{title}:")
        for name in list_presets(kind):  # type: ignore[arg-type]
            path = find_preset(kind, name)  # type: ignore[arg-type]
            desc = str(_read_yaml(path).get("description", "")) if path else ""
            print(f"  {name:<16} {desc}")
    from .catalog import ENCODERS
    from .config import TASK_LOSSES

    print(f"data sets: {', '.join(DATASETS.names())} (or package.module:function)")
    plain = [n for n in ENCODERS.names() if not ENCODERS.lookup(n).model_name]
    named = [f"{n}:<model name>" for n in ENCODERS.names() if ENCODERS.lookup(n).model_name]
    print(f"encoders: {', '.join([*plain, *named])} (any timm model, e.g. timm:resnet10t; or package.module:factory)")
    print("task types (losses, default first):")
    for kind, losses in TASK_LOSSES.items():
        print(f"  {kind:<13} {', '.join(losses)}")
    print(f"temperature schedules: {', '.join(SCHEDULES.names())}")
    return 0


def _format_table(result: Any) -> str:
    lines = ["group  branch  tasks"]
    for i, group in enumerate(result.groups, start=1):
        branch = result.assignment[group[0]]
        lines.append(f"{i:<6} {branch:<7} {', '.join(group)}")
    totals = result.metrics["totals"]
    test, val = totals["test"], totals["val"]
    summary = f"test total loss {test['total_loss']:.4f} (validation {val['total_loss']:.4f})"
    if "total_error" in test:
        summary += f"; test total error {test['total_error']:.2f}%"
    ref = result.metrics.get("reference", {}).get("test")
    if ref and ref.get("delta_m") is not None:
        summary += f"; vs reference: Delta_m {ref['delta_m']:+.2f}%"
        if ref.get("normalized_gain") is not None:
            summary += f", normalized gain {ref['normalized_gain']:+.2f}%"
    truth = result.metrics.get("ground_truth")
    if truth:
        summary += f"; adjusted Rand index vs planted groups {truth['adjusted_rand_index']:.3f}"
    lines.append(summary)
    local = result.metrics.get("local_search")
    stopped = bool(local) and local.get("stopped") == "budget"
    if local and (local.get("rounds") or stopped):
        start = " | ".join(", ".join(g) for g in local["start"])
        budget = " (stopped by local_search.budget)" if stopped else ""
        if not local.get("rounds"):
            verdict = "kept: no neighbour fitted in the time budget"
        elif local["changed"]:
            change = 100.0 * (local["val_loss"] / local["rounds"][0]["val_loss"] - 1.0)
            steps = ", ".join(r["accepted_kind"] for r in local["rounds"] if r.get("accepted_kind"))
            verdict = f"changed to the groups above{' by ' + steps if steps else ''} (validation loss {change:+.1f}%)"
        else:
            first = local["rounds"][0]
            best = min(c["val_loss"] for c in first["candidates"])
            verdict = f"kept (best neighbour: validation loss {100.0 * (best / first['val_loss'] - 1.0):+.1f}%)"
        lines.append(
            f"merge check: search found {start}; {verdict}{budget}; {local['networks_trained']} group networks"
        )
    return "\n".join(lines)


def _cmd_search(args: argparse.Namespace) -> int:
    from .config import load_spec
    from .runlock import RunLock, launcher_rank_zero

    if args.resume is not None:
        if args.spec is not None or args.overrides:
            raise DmtgError("--resume continues a run with its saved config; give no SPEC or --set with it")
        config = args.resume / "config.yaml"
        if not config.is_file():
            raise DmtgError(f"{args.resume}: not a run folder (no config.yaml)")
        spec = load_spec(config, _trainer_overrides(args), trust_code=args.trust_code)
        out = args.resume
    else:
        if args.spec is None:
            raise DmtgError("give a SPEC (a shipped search-space name or a YAML file), or --resume DIR")
        spec = load_spec(args.spec, [*args.overrides, *_trainer_overrides(args)])
        out = args.out or Path("runs") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume is not None:
        from .runstate import run_finished

        # nothing to continue: its result as it stands, every file (the lock's too) left untouched
        if run_finished(out):
            print(f"{out}: this run has finished; nothing to resume, nothing changed", file=sys.stderr)
            _print_result(args, _saved_result(out), out)
            return 0
    if launcher_rank_zero():
        RunLock(out).check()  # before the slow imports: a folder in use is refused at once
    from .hardware import is_global_zero
    from .pipeline.run import run_search

    quiet = args.quiet or not is_global_zero()  # the other processes of a DDP run print nothing
    if not quiet:
        print(
            f"searching {spec.name}: {len(spec.tasks)} tasks, K={spec.groups}, {spec.backbone.name} branches -> {out}",
            file=sys.stderr,
        )
        print(f"  stages: {stage_plan(spec)}", file=sys.stderr)
    result = run_search(spec, out, progress=not quiet, resume=args.resume is not None, overwrite=args.overwrite)
    if not is_global_zero():
        return 0
    _print_result(args, result, out)
    return 0


def stage_plan(spec: Any) -> str:
    """The stages a search of ``spec`` will run and their budgets, in order (the header of ``dmtg
    search``): the warm start's N trainings can cost more than the supernet's epochs."""
    st = spec.strategy
    stages = []
    if st.warmup.method != "none":
        where = "; where the merge check's networks train batched" if st.warmup.method == "auto" else ""
        stages.append(
            f"warm start ({len(spec.tasks)} single-task networks x {st.warmup.epochs} epochs, "
            f"at least {st.warmup.min_steps} steps each{where})"
        )
    if st.affinity.enabled:
        stages.append(f"affinity scout (the supernet's first {st.affinity.epochs} epochs)")
    stop = st.supernet and st.stop_when_decided.enabled  # False, True or "auto"
    if not st.supernet:
        stages.append("no supernet")
    elif stop:
        where = "on vector data " if stop == "auto" else ""
        stages.append(f"supernet (up to {st.epochs} epochs: {where}until the grouping is decided)")
    else:
        stages.append(f"supernet ({st.epochs} epochs)")
    if st.polish:
        stages.append("polish")
    if (st.finetune.epochs or stop) and st.finetune.enabled is not False:
        unused = " and the supernet's unused ones" if stop else ""
        where = "; where no merge check follows" if st.finetune.enabled == "auto" else ""
        stages.append(f"fine-tune ({st.finetune.epochs} epochs{unused}{where})")
    check = st.local_search.enabled
    if check is True or check == "auto":
        stages.append("merge check" + (" (where its networks train batched)" if check == "auto" else ""))
    return "; ".join(stages)


def _print_result(args: argparse.Namespace, result: Any, out: Path) -> None:
    """The search's result on stdout: the table, or with ``--json`` the grouping as JSON alone."""
    if args.json:
        print(json.dumps({"groups": result.groups, "assignment": result.assignment}, indent=2))
    else:
        print(_format_table(result))
        print(f"outputs in {out}")


def _saved_result(out: Path) -> Any:
    """What :func:`_format_table` reads of a result, from a finished run's ``grouping.json`` and
    ``metrics.json``."""
    from types import SimpleNamespace

    grouping = json.loads((out / "grouping.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return SimpleNamespace(groups=grouping["groups"], assignment=grouping["assignment"], metrics=metrics)


def _cmd_retrain(args: argparse.Namespace) -> int:
    from .hardware import is_global_zero
    from .pipeline.retrain import retrain

    metrics = retrain(
        args.run,
        init=args.init,
        epochs=args.epochs,
        out_dir=args.out,
        progress=not args.quiet and is_global_zero(),
        overrides=_trainer_overrides(args),
        trust_code=args.trust_code,
    )
    if not is_global_zero():
        return 0
    test = metrics["totals"]["test"]
    line = f"retrained ({args.init}, {metrics['retrain']['epochs']} epochs): test total loss {test['total_loss']:.4f}"
    if "total_error" in test:
        line += f", test total error {test['total_error']:.2f}%"
    print(line)
    print(f"outputs in {args.out or args.run / 'retrain'}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark
    from .config import load_spec
    from .reports import check_report_path, publish_report

    spec = load_spec(args.spec, args.overrides)
    _single_process(spec, "benchmark")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.seeds < 1:
        raise DmtgError(f"--seeds must be >= 1, got {args.seeds}")
    if args.report is not None:
        check_report_path(args.report)
    out = args.out or Path("runs") / f"bench-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _display(args.quiet, "runs") as display:
        run_benchmark(
            spec,
            methods,
            args.seeds,
            out,
            resume=args.resume,
            overwrite=args.overwrite,
            affinity_every=args.affinity_every,
            progress=display,
        )
    print((out / "results.md").read_text(encoding="utf-8"), end="")
    print(f"outputs in {out}")
    if args.report is not None:
        page = publish_report(
            out / "results.md", args.report, title="Benchmark", command=args.command_line, figure=out / "results.png"
        )
        print(f"report in {page}")
    return 0


def _cmd_suite(args: argparse.Namespace) -> int:
    from .errors import SpecError, suggest
    from .reports import check_report_path, publish_report
    from .shapes import SHAPE_GROUPS, SHAPES
    from .suite import GROUPING_METHODS, parse_seeds, run_suite

    seeds = parse_seeds(args.seeds)
    if args.report is not None:
        check_report_path(args.report)
    if args.reference_trainings < 1:
        raise DmtgError(f"--reference-trainings must be >= 1, got {args.reference_trainings}")
    for method in args.method:  # checked before anything runs
        if method not in GROUPING_METHODS:
            raise SpecError(
                f"--method: unknown method {method!r}{suggest(method, GROUPING_METHODS)}; "
                f"methods: {', '.join(GROUPING_METHODS)}"
            )
    if args.shapes in (None, ""):
        shapes: list[str] = list(SHAPE_GROUPS["short"])
    elif args.shapes in SHAPE_GROUPS:
        shapes = list(SHAPE_GROUPS[args.shapes])
    else:
        shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    out = args.out or Path("runs") / f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    strategies = args.strategy or ["dmtg"]
    runs = [(s, None) for s in strategies] + [(strategies[0], m) for m in args.method]
    with _display(args.quiet, "runs") as display:  # one line at a time: a strategy's or method's runs
        for strategy, method in runs:
            run_suite(
                strategy,
                shapes,
                seeds,
                out,
                overrides=args.overrides,
                resume=args.resume,
                progress=display,
                method=method,
                reference_trainings=args.reference_trainings,
                start=args.start if method is None else None,
            )
            args.resume = True  # later strategies and methods add to the same report
    print((out / "suite.md").read_text(encoding="utf-8"), end="")
    print(f"outputs in {out}")
    if args.report is not None:
        title = "Planted suite" if all(SHAPES[s].planted for s in shapes) else "Suite"
        page = publish_report(
            out / "suite.md", args.report, title=title, command=args.command_line, figure=out / "suite.png"
        )
        print(f"report in {page}")
    return 0


def _one_line(exc: Exception) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose text carries the
    worker's traceback), only the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.partition(": ")[2] or last
    # keys and values typed by the user may hold line breaks or control characters: escape them
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _cmd_tune(args: argparse.Namespace) -> int:
    from .config import load_spec
    from .tuning import die_with_parent, parse_objectives, search_space, tune

    if args.worker:
        die_with_parent()

    objectives = parse_objectives(args.objectives)
    multi = len(objectives) > 1
    if multi and args.pruner not in (None, "none"):
        raise DmtgError(
            f"--pruner {args.pruner}: Optuna cannot prune a multi-objective study; use --pruner none or one objective"
        )
    overrides = list(args.overrides)
    for flag, key in ((args.trials, "trials"), (args.storage, "storage"), (args.pruner, "pruner")):
        if flag is not None:
            overrides.append(f"tuning.{key}={json.dumps(flag)}")
    spec = load_spec(args.spec, overrides)
    _single_process(spec, "tune")
    if args.jobs is not None and args.jobs < 1:
        raise DmtgError(f"--jobs must be >= 1, got {args.jobs}")
    study = args.study or spec.name
    out = args.out or Path("runs") / f"tune-{study}"
    quiet = args.quiet or args.worker
    if not quiet:
        space = ", ".join(
            f"{p.name} {list(p.choices) if p.kind == 'choice' else [p.low, p.high]}" for p in search_space(spec)
        )
        trials = spec.tuning.trials if spec.tuning else 20
        print(f"tuning {spec.name}: study {study!r}, {trials} trials over {space} -> {out}", file=sys.stderr)
        if multi:
            pruner = spec.tuning.pruner if spec.tuning else "median"
            note = f"; tuning.pruner {pruner} is not used" if pruner != "none" else ""
            print(f"objectives (minimised): {', '.join(objectives)}; no pruning{note}", file=sys.stderr)
    import optuna

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would bury the bar
    with _display(quiet, "trials") as display:
        result = tune(
            spec,
            out,
            study_name=study,
            jobs=args.jobs,
            progress=display,
            report=not args.worker,
            objectives=objectives,
        )
    if args.worker:
        return 0
    if multi:
        return _print_pareto(result, objectives, out)
    best = result.best
    if best is None:
        print(f"no trial completed; see {out}")
        return 1
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    counts = ", ".join(f"{n} {s}" for s, n in best["trials"].items() if n)
    total = sum(best["trials"].values())
    line = f"best trial {best['trial']} ({total} trials: {counts}): val total loss {best['value']:.4f}"
    if "adjusted_rand_index" in best:
        line += f"; adjusted Rand index vs planted groups {best['adjusted_rand_index']:.3f}"
    print(line)
    print(f"best values: {params}")
    print("best groups: " + " | ".join(", ".join(g) for g in best["groups"] or []))
    print(f"best run (dmtg retrain accepts it): {best['run_dir']}")
    print(f"plots: {', '.join(str(p) for p in result.plots)}")
    return 0


def _print_pareto(result: Any, objectives: Sequence[str], out: Path) -> int:
    """The Pareto front as a table: one row per trial, its objective values and params."""
    front = result.pareto or []
    if not front:
        print(f"no trial completed; see {out}")
        return 1
    total = len(result.study.trials)
    print(f"Pareto front: {len(front)} of {total} trials (all objectives minimised)")
    rows = [["trial", *objectives, "params"]]
    for item in front:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in item["params"].items())
        rows.append([str(item["trial"]), *(f"{item['values'][name]:.6g}" for name in objectives), params])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.rjust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))
    print(f"front: {out / 'pareto.json'}; runs (dmtg retrain accepts them): {out / 'trials'}/trial-NNNN")
    print(f"plots: {', '.join(str(p) for p in result.plots)}")
    return 0


def _cmd_portal(args: argparse.Namespace) -> int:
    from .config import load_spec
    from .nni.portal import run_portal, stop_portal, view_portal

    def say(message: str, main: bool) -> None:
        print(message, file=sys.stdout if main else sys.stderr, flush=True)

    if args.view is not None:
        if args.spec is not None or args.stop is not None:
            raise DmtgError("--view reopens a finished experiment; give no SPEC or --stop with it")
        return view_portal(args.view, port=args.port, say=say)
    if args.stop is not None:
        stop_portal(args.stop)
        print(f"stopped the experiment of {args.stop}")
        return 0
    if args.spec is None:
        raise DmtgError("give a SPEC (a shipped search-space name or a YAML file), --stop DIR or --view DIR")
    spec = load_spec(args.spec, args.overrides)
    _single_process(spec, "portal")
    out = args.out or Path("runs") / f"portal-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_portal(
        spec,
        out,
        trials=args.trials,
        concurrency=args.concurrency,
        port=args.port,
        host=args.host,
        tuner=args.tuner,
        space=args.space,
        storage=args.storage,
        study_name=args.study,
        wait=not args.no_wait,
        stop_when_done=args.stop_when_done,
        say=say,
    )


def _check_out(out: Path) -> None:
    """``--out`` must be a folder this process can create or write into; checked before anything
    runs (a read-only folder, a path under a regular file or in ``/proc`` would fail only after the
    data has loaded). The test: a temporary folder made and removed in ``out`` or, when it is not
    there yet, in its nearest existing parent (also right for root, whom permission bits do not stop)."""
    import os
    import tempfile

    if out.exists() and not out.is_dir():
        raise DmtgError(f"--out {out}: a file is in the way; give a folder (new or empty)")
    folder = out
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DmtgError(f"--out {out}: {folder} is not a folder")
    try:
        tempfile.TemporaryDirectory(prefix=".dmtg-probe-", dir=folder).cleanup()
    except OSError as exc:
        raise DmtgError(f"--out {out}: cannot write in {folder}: {exc.strerror or exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["dmtg", *(sys.argv[1:] if argv is None else argv)])  # for published reports
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .quiet import is_verbose, set_verbose

    verbose = is_verbose()
    _configure_output(getattr(args, "verbose", False))
    try:
        out = getattr(args, "out", None)
        if out is not None and not getattr(args, "worker", False):
            _check_out(out)
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "list":
            return _cmd_list()
        if args.command == "retrain":
            return _cmd_retrain(args)
        if args.command == "benchmark":
            return _cmd_benchmark(args)
        if args.command == "suite":
            return _cmd_suite(args)
        if args.command == "tune":
            return _cmd_tune(args)
        if args.command == "portal":
            return _cmd_portal(args)
        return _cmd_search(args)
    except SearchInterrupted as exc:
        print(f"dmtg: {_one_line(exc)}", file=sys.stderr)
        return 128 + exc.signum
    except DmtgError as exc:
        print(f"dmtg: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dmtg: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system refused a named file (permissions, read-only, removed): no bug
        if exc.filename is None:
            raise
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        print(f"dmtg: error: {_one_line(OSError(f'{names}: {exc.strerror or exc}'))}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        set_verbose(verbose)  # main() called in a process (tests, scripts) leaves the package as it was


if __name__ == "__main__":
    raise SystemExit(main())
