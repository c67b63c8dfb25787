"""Drive the DMTG search through NNI's own experiment API.

The grouping search space is an NNI ``ModelSpace`` and DMTG is an NNI one-shot strategy, so the
standard NNI recipe works: model space + Lightning evaluator + strategy -> ``NasExperiment``.

    python examples/nni_experiment.py --epochs 20 --workdir runs/nni
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")

from nni.nas.experiment import NasExperiment

import dmtg_nas
from dmtg_nas.components import load_data
from dmtg_nas.runner import build_evaluator, evaluate
from dmtg_nas.space import GroupingSpace
from dmtg_nas.strategy import DMTG
from dmtg_nas.tasks import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="planted", help="search-space name or YAML file")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("runs/nni-experiment"))
    args = parser.parse_args()

    spec = dmtg_nas.load_spec(args.spec, [f"strategy.epochs={args.epochs}"])
    data = load_data(spec)

    space = GroupingSpace.from_spec(spec, data.input_shape)  # K branches, K*N heads
    print("search space:", {label: list(m.values) for label, m in space.simplify().items()})  # type: ignore[attr-defined]
    evaluator = build_evaluator(spec, data, None, progress=True)  # NNI Lightning evaluator
    strategy = DMTG.from_config(spec.strategy)  # or DMTG(temperature=2.5, seed=0)

    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(args.workdir.resolve())  # not ~/nni-experiments
    experiment.run()

    sample = experiment.export_top_models(formatter="dict")[0]
    print("grouping (task -> branch):", sample)
    network = experiment.export_top_models(formatter="instance")[0]  # the pruned grouped network
    test = evaluate(network, data.test, spec.tasks)
    print("test total loss:", round(summarize(test, spec.tasks)["total_loss"], 4))
    experiment.stop()


if __name__ == "__main__":
    main()
