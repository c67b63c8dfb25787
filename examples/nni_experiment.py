"""Drive the DMTG search through NNI's own experiment API.

The grouping search space is an NNI ``ModelSpace`` and DMTG is an NNI one-shot strategy, so the
standard NNI recipe works: model space + Lightning evaluator + strategy -> ``NasExperiment``.
``DMTG.from_preset("dmtg")`` runs the whole pipeline of the preset (warm start, one-shot search,
fine-tune, merge check): the same grouping and metrics as ``dmtg search`` on the same spec and seed.

    python examples/nni_experiment.py --epochs 20 --workdir runs/nni
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")

from nni.nas.experiment import NasExperiment

import dmtg_nas
from dmtg_nas.nni import DMTG, experiment_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="planted", help="search-space name or YAML file")
    parser.add_argument("--strategy", default="dmtg", help="strategy preset (name or YAML file)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("runs/nni-experiment"))
    args = parser.parse_args()

    spec = dmtg_nas.load_spec(args.spec, [f"strategy={args.strategy}", f"strategy.epochs={args.epochs}"])
    space, evaluator = experiment_inputs(spec)  # K branches, K*N heads; NNI's Lightning evaluator
    print("search space:", {label: list(m.values) for label, m in space.simplify().items()})  # type: ignore[attr-defined]
    strategy = DMTG.from_config(spec.strategy)  # or DMTG.from_preset("dmtg", ["epochs=20"])

    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(args.workdir.resolve())  # not ~/nni-experiments
    experiment.run()

    sample = experiment.export_top_models(formatter="dict")[0]
    print("grouping (task -> branch):", sample)
    network = experiment.export_top_models(formatter="instance")[0]  # the final grouped network
    print("parameters:", sum(p.numel() for p in network.parameters()))
    result = strategy.result  # everything `dmtg search` reports (metrics.json's contents)
    assert result is not None
    print("groups:", result.groups)
    print("test total loss:", round(result.test_loss, 4))
    experiment.stop()


if __name__ == "__main__":
    main()
