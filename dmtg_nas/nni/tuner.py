"""An NNI tuner backed by an Optuna study: NNI's experiments (and web portal) with Optuna's
samplers and storages, so the same trials show in NNI's portal and in optuna-dashboard.

Neither NNI nor Optuna ships this bridge. NNI's dispatcher imports this module and must connect
to the NNI manager within 10 seconds, so it imports only NNI's tuner base class and Optuna (the
packages ``dmtg_nas`` and ``dmtg_nas.nni`` import their names on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nni.tuner import Tuner

__all__ = ["OptunaTuner", "to_distribution"]


def to_distribution(spec: Mapping[str, Any]) -> Any:
    import optuna

    kind, value = spec["_type"], spec["_value"]
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(value))
    if kind == "randint":
        return optuna.distributions.IntDistribution(int(value[0]), int(value[1]) - 1)
    if kind in ("uniform", "loguniform"):
        return optuna.distributions.FloatDistribution(float(value[0]), float(value[1]), log=kind == "loguniform")
    if kind in ("quniform", "qloguniform"):
        return optuna.distributions.FloatDistribution(
            float(value[0]),
            float(value[1]),
            step=float(value[2]) if kind == "quniform" else None,
            log=kind != "quniform",
        )
    raise ValueError(f"OptunaTuner: unsupported NNI search-space type {kind!r}")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class OptunaTuner(Tuner):
    """An NNI tuner backed by an Optuna study (ask/tell), stored in any Optuna storage.

    NNI asks for parameters -> ``study.ask(distributions)``; a final result ->
    ``study.tell(trial, value)``; a failed trial -> ``tell(FAIL)``. Each Optuna trial carries the
    NNI parameter id (user attribute ``nni_parameter_id``), so the NNI trial process adds its
    per-epoch values and its final value to the same Optuna trial (visible in optuna-dashboard).

    Args:
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql://...``).
        study_name: created, or resumed when it exists.
        optimize_mode: ``minimize`` or ``maximize``.
        sampler: ``tpe`` or ``random``.
        seed: the sampler's seed.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        optimize_mode: str = "minimize",
        sampler: str = "tpe",
        seed: int = 0,
    ) -> None:
        import optuna

        smp = optuna.samplers.RandomSampler(seed=seed) if sampler == "random" else optuna.samplers.TPESampler(seed=seed)
        self.study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction="maximize" if optimize_mode == "maximize" else "minimize",
            sampler=smp,
            load_if_exists=True,
        )
        self.distributions: dict[str, Any] = {}
        self.trials: dict[int, Any] = {}

    def update_search_space(self, search_space: Mapping[str, Any]) -> None:
        self.distributions = {name: to_distribution(spec) for name, spec in search_space.items()}

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        trial = self.study.ask(self.distributions)
        trial.set_user_attr("nni_parameter_id", int(parameter_id))
        self.trials[int(parameter_id)] = trial
        return {name: _plain(value) for name, value in trial.params.items()}

    def receive_trial_result(self, parameter_id: int, parameters: Any, value: Any, **kwargs: Any) -> None:
        from nni.utils import extract_scalar_reward

        trial = self.trials.pop(int(parameter_id), None)
        if trial is not None:  # (the trial process may already have stored its value)
            self.study.tell(trial, float(extract_scalar_reward(value)), skip_if_finished=True)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        import optuna

        if success:  # NNI may deliver the final result after the end of the trial
            return
        trial = self.trials.pop(int(parameter_id), None)
        if trial is not None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def import_data(self, data: Any) -> None:  # resuming: Optuna's storage already holds the history
        pass
