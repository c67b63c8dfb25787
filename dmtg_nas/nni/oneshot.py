"""The one-shot search as an NNI strategy: the supernet's training loop, and the strategy that
turns the space into the supernet.

:class:`DMTGLightningModule` runs the search: per step it sets tau (the strategy's schedule) and the
step's Gumbel noise, and trains on the method's loss (:class:`~dmtg_nas.nni.router.RouterBank`).
Unlike NNI's DARTS modules it uses Lightning's automatic optimisation with the evaluator's one
optimizer (weights and logits together, same batch) and its learning-rate schedule.

:class:`OneShotDMTG` is the relaxation alone (one stage of the pipeline); the strategy users pass
to NNI, :class:`~dmtg_nas.nni.strategy.DMTG`, runs the whole pipeline of its preset around it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from torch import Tensor, nn

from ..engine.losses import head_losses
from ..schedules import TemperatureSchedule
from ..schema import StrategyConfig, TemperatureConfig
from .router import RouterBank, gumbel_noise

__all__ = ["DMTGLightningModule", "OneShotDMTG"]

_logger = logging.getLogger(__name__)


class DMTGLightningModule(BaseOneShotLightningModule):
    """The search loop: tau and the Gumbel noise of each step, then the method's loss."""

    def __init__(
        self,
        training_module: Any,
        *,
        temperature: TemperatureSchedule,
        hard: bool = False,
        seed: int = 0,
        entropy_weight: float = 0.0,
    ) -> None:
        super().__init__(training_module)
        self.temperature = temperature
        self.hard = hard
        self.seed = seed
        self.entropy_weight = entropy_weight
        self.current_tau = temperature(0, 1)

    @property  # type: ignore[override]
    def automatic_optimization(self) -> bool:
        return True

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:  # Lightning may assign it
        pass

    @property
    def bank(self) -> RouterBank:
        """The supernet's router bank (found once: the tree is fixed once the space is mutated)."""
        found = self.__dict__.get("_bank")
        if found is None:
            banks = [m for m in self.supernet_modules() if isinstance(m, RouterBank)]
            if len(banks) != 1:
                raise RuntimeError(f"the supernet has {len(banks)} router banks; DMTG needs exactly one")
            found = self.__dict__["_bank"] = banks[0]
        return found  # type: ignore[no-any-return]

    def probabilities(self) -> dict[str, list[float]]:
        """``{task: [p_0, ..., p_{K-1}]}`` from softmax of the logits."""
        return self.bank.probabilities()

    def step_state(self, step: int) -> tuple[Tensor, Tensor]:
        """The Gumbel noise (N, K) and tau (a 0-d tensor) of optimisation step ``step``."""
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        self.current_tau = self.temperature(step, total)
        bank = self.bank
        noise = gumbel_noise(self.seed, step, (len(bank.task_names), bank.num_branches))
        tau = torch.tensor(self.current_tau, dtype=bank.logits.dtype, device=bank.logits.device)
        return noise, tau

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        noise, tau = self.step_state(int(self.trainer.global_step))
        bank, tasks = self.bank, self.training_module.tasks

        def method_loss(outputs: Any, targets: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            return bank.loss(bank.sample(noise, tau, self.hard), head_losses(tasks, outputs, targets), tasks)

        loss = self.training_module.training_step(batch, batch_idx, loss_fn=method_loss)
        if loss is None:  # a skipped non-finite batch (strategy.nonfinite: skip)
            return None
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * bank.entropy()
        return loss

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # the training module's epoch mean of the loss
        self.log("tau", self.current_tau)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self.training_module.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        return self.training_module.on_validation_epoch_end()

    def configure_optimizers(self) -> Any:
        return self.training_module.configure_optimizers()


class OneShotDMTG(OneShotStrategy):
    """The DMTG relaxation of a :class:`~dmtg_nas.nni.space.GroupingSpace` as an NNI one-shot
    strategy: ``OneShotDMTG(...)(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())``.

    Args:
        temperature: a :class:`~dmtg_nas.schema.TemperatureConfig` (or a float for a constant tau).
        sample: ``soft`` (the method) or ``hard`` (straight-through one-hot).
        logits_init: initial value of every logit (all equal: a uniform start).
        initial_logits: per-task initial logit rows ``{task: [K values]}`` (a warm start); tasks
            not listed start at ``logits_init``.
        entropy_weight: weight of the mean entropy of softmax(S) added to the loss (0: off).
        seed: seed of the Gumbel noise sequence.
    """

    def __init__(
        self,
        temperature: TemperatureConfig | float = 2.5,
        *,
        sample: str = "soft",
        logits_init: float = 1.0,
        initial_logits: dict[str, list[float]] | None = None,
        entropy_weight: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(temperature, TemperatureConfig):
            temperature = TemperatureConfig(schedule="constant", init=float(temperature))
        self.temperature = TemperatureSchedule(temperature)
        self.hard = sample == "hard"
        self.logits_init = logits_init
        self.initial_logits = dict(initial_logits or {})
        self.entropy_weight = entropy_weight
        self.seed = seed

    @classmethod
    def from_config(cls, config: StrategyConfig, initial_logits: dict[str, list[float]] | None = None) -> Any:
        """The relaxation's settings from a strategy config (its warm start's rows as ``initial_logits``)."""
        return cls(
            config.temperature,
            sample=config.sample,
            logits_init=config.init.logits,
            initial_logits=initial_logits,
            entropy_weight=config.entropy_weight,
            seed=config.seed,
        )

    def default_mutation_hooks(self) -> list[Any]:
        return [RouterBank.mutate, no_default_hook]

    def run_hook(self, hook: Any, name: str, module: nn.Module, memo: dict[str, Any]) -> Any:
        return hook(module, name, memo, {"initial_logits": self.initial_logits, "logits_init": self.logits_init})

    def configure_oneshot_module(self, training_module: Any) -> DMTGLightningModule:
        return DMTGLightningModule(
            training_module,
            temperature=self.temperature,
            hard=self.hard,
            seed=self.seed,
            entropy_weight=self.entropy_weight,
        )

    @property
    def dmtg_module(self) -> DMTGLightningModule:
        module = self.oneshot_module
        assert isinstance(module, DMTGLightningModule)
        return module

    @property
    def bank(self) -> RouterBank:
        """The supernet's router bank (after :meth:`initialize`)."""
        banks = [m for m in self.supernet.modules() if isinstance(m, RouterBank)]
        assert len(banks) == 1
        return banks[0]

    def set_logits(self, rows: Mapping[str, Sequence[float]]) -> None:
        """Overwrite the logits of the listed tasks (e.g. a warm start computed after the supernet)."""
        bank = self.bank
        with torch.no_grad():
            for i, name in enumerate(bank.task_names):
                if name in rows:
                    bank.logits[i] = torch.tensor([float(v) for v in rows[name]], dtype=bank.logits.dtype)
