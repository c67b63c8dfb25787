"""DMTG as an NNI one-shot strategy.

Implements Gao et al., "DMTG: One-Shot Differentiable Multi-Task Grouping", ICML 2024
(arXiv:2407.05082), on NNI 3.0's one-shot machinery. Everything that touches NNI internals lives in
this module: the supernet module that replaces each :class:`~dmtg_nas.space.TaskRouter`
(:class:`DMTGRouter`), the one-shot Lightning module (:class:`DMTGLightningModule`) and the
strategy (:class:`DMTG`).

The method, per training step:

- one Gumbel-softmax sample per task row of the logit matrix S (N x K), shared by the batch:
  ``z[i] = softmax((S[i] + g[i]) / tau)``, ``g ~ Gumbel(0, 1)`` (soft; ``sample: hard`` gives
  straight-through one-hot samples);
- the loss ``sum_i w_i sum_k z[i,k] L_i(head[k,i](branch_k(x)), y_i)`` over all K*N heads;
- one optimizer over weights and logits, on the same batch (Lightning's automatic optimisation);
- tau follows the strategy's schedule; the export is ``argmax_k S[i, k]`` per task.

The Gumbel noise of step s is drawn from a generator seeded with (seed, s), so every process of a
distributed run draws the same sample, and a resumed run continues the same noise sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import Tensor, nn

from .config import StrategyConfig, TemperatureConfig
from .schedules import TemperatureSchedule
from .space import TaskRouter, _Heads
from .training import ARCH_PARAM_FLAG, RoutedBatch, RoutedOutput

__all__ = ["DMTGRouter", "DMTGLightningModule", "DMTG", "gumbel_noise"]

_logger = logging.getLogger(__name__)


def gumbel_noise(seed: int, step: int, shape: Sequence[int]) -> Tensor:
    """Gumbel(0, 1) noise of ``shape`` for optimisation step ``step`` (deterministic, CPU)."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    u = torch.rand(tuple(shape), generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float()


class DMTGRouter(_Heads, BaseSuperNetModule):
    """Supernet version of :class:`TaskRouter`: all K heads, weighted by a relaxed sample.

    ``logits`` is the task's row of S (shape (K,)), a view of row ``row`` of the (N, K) logit table
    that the strategy registers once, on the space, as ``grouping_logits`` (one parameter for all
    tasks, so a step does no per-task work for them). In training mode ``forward`` returns every
    head's prediction with the sample ``z = softmax((logits + noise) / tau)``; in evaluation mode
    the weights are the one-hot argmax (the network as it would be pruned).
    """

    def __init__(self, router: TaskRouter, table: nn.Parameter, row: int) -> None:
        super().__init__()
        self.task = router.task
        self.choice = self.add_mutable(router.choice)
        self._take_heads(router)  # the same head modules, or the same rows of the space's head banks
        self.__dict__["table"] = table  # not registered here: the space holds it
        self.row = row
        self.tau = 1.0
        self.hard = False
        self.noise: Tensor | None = None  # (K,) Gumbel noise of the current step

    @property
    def label(self) -> str:
        return str(self.choice.label)

    @property
    def logits(self) -> Tensor:
        """The task's row of the logit table (a view: gradients land in the table)."""
        return self.table[self.row]  # type: ignore[no-any-return]

    def sample_weights(self) -> Tensor:
        """(K,) relaxed sample for the current step's noise (differentiable in the logits)."""
        noise = self.noise if self.noise is not None else torch.zeros_like(self.logits)
        z = torch.softmax((self.logits + noise.to(self.logits.device)) / self.tau, dim=-1)
        if self.hard:
            one_hot = torch.zeros_like(z).scatter_(-1, z.argmax(-1, keepdim=True), 1.0)
            z = one_hot - z.detach() + z
        return z

    def forward(self, feats: Sequence[Tensor]) -> RoutedOutput:
        return self.route_preds([self.predict(k, f) for k, f in enumerate(feats)])

    def route_preds(self, preds: list[Tensor]) -> RoutedOutput:
        """The task's output from its K heads' predictions (``preds[k] = heads[k](feats[k])``),
        computed by the caller: :meth:`GroupingSpace.forward <dmtg_nas.space.GroupingSpace.forward>`
        runs the heads of a branch as one matrix product and hands each router its K predictions."""
        if self.training:
            weights = self.sample_weights()
        else:
            weights = torch.zeros_like(self.logits).scatter_(-1, self.logits.argmax(-1, keepdim=True), 1.0)
        return RoutedOutput(preds, weights)

    @staticmethod
    def route_bank(routers: Sequence[DMTGRouter], preds: Tensor, offsets: Sequence[int]) -> list[RoutedOutput]:
        """Every task's output at once (the supernet with head banks): ``preds`` (K, B, W) holds all
        heads' predictions, task i in columns ``offsets[i]:offsets[i + 1]``; the N routers' samples
        are computed as one (N, K) softmax, with the values :meth:`route_preds` gives per router."""
        table = routers[0].table
        if all(r.table is table and r.row == i for i, r in enumerate(routers)) and len(routers) == len(table):
            logits = table  # (N, K), the routers in the table's order
        else:
            logits = torch.stack([r.logits for r in routers])
        if routers[0].training:
            noise = torch.stack([r.noise if r.noise is not None else torch.zeros_like(r.logits) for r in routers])
            tau = torch.tensor([[r.tau] for r in routers], dtype=logits.dtype, device=logits.device)
            weights = torch.softmax((logits + noise.to(logits.device)) / tau, dim=-1)
            hard = torch.tensor([[r.hard] for r in routers], device=logits.device)
            if bool(hard.any()):
                one_hot = torch.zeros_like(weights).scatter_(-1, weights.argmax(-1, keepdim=True), 1.0)
                weights = torch.where(hard, one_hot - weights.detach() + weights, weights)
        else:
            weights = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        batch = RoutedBatch(preds, weights, list(offsets))
        return [RoutedOutput(batch=batch, index=i) for i in range(len(routers))]

    def probabilities(self) -> Tensor:
        """softmax(S[i]): the task's current distribution over branches."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}  # the noise is set by DMTGLightningModule once per step

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: int(self.logits.detach().argmax())}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: {k: float(p) for k, p in enumerate(self.probabilities())}}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.table]

    def freeze(self, sample: dict[str, Any]) -> nn.Module:
        return self.head(int(self.choice.freeze(sample)))

    @classmethod
    def mutate(
        cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]
    ) -> tuple[DMTGRouter, bool] | None:
        if not isinstance(module, TaskRouter):
            return None
        table, rows = mutate_kwargs["logit_table"]
        return cls(module, table, rows[module.label]), True


class DMTGLightningModule(BaseOneShotLightningModule):
    """The search loop: sets tau and the step's Gumbel noise, then trains on the weighted loss.

    Unlike NNI's DARTS modules it uses Lightning's automatic optimisation with the evaluator's one
    optimizer (weights and logits together, same batch) and its learning-rate schedule.
    """

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

    def routers(self) -> Iterator[DMTGRouter]:
        # the routers are fixed once the strategy has mutated the space: walk the module tree once
        # (a walk per training step costs as much as a small network's forward pass)
        found = self.__dict__.get("_routers")
        if not found:  # (none yet: the model may not be set; kept once there are some)
            found = [m for m in self.supernet_modules() if isinstance(m, DMTGRouter)]
            self.__dict__["_routers"] = found
        return iter(found)

    def probabilities(self) -> dict[str, list[float]]:
        """``{task: [p_0, ..., p_{K-1}]}`` from softmax of the logits."""
        return {r.label: r.probabilities().tolist() for r in self.routers()}

    def _set_step_state(self, step: int) -> None:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        self.current_tau = self.temperature(step, total)
        routers = list(self.routers())
        if not routers:
            return
        noise = gumbel_noise(self.seed, step, (len(routers), routers[0].num_branches))
        for router, g in zip(routers, noise):
            # plain attributes (not parameters, buffers or modules): set them without nn.Module's
            # __setattr__, which costs microseconds per call, N times per step
            router.__dict__.update(noise=g, tau=self.current_tau, hard=self.hard)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self._set_step_state(int(self.trainer.global_step))
        loss = self.training_module.training_step(batch, batch_idx)
        if loss is None:  # a skipped non-finite batch (strategy.nonfinite: skip)
            return None
        if self.entropy_weight > 0:
            probs = torch.stack([torch.softmax(r.logits, -1) for r in self.routers()])  # (N, K)
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
            loss = loss + self.entropy_weight * entropy
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


class DMTG(OneShotStrategy):
    """DMTG one-shot strategy for a :class:`~dmtg_nas.space.GroupingSpace`.

    Usable wherever NNI takes a strategy: ``NasExperiment(space, evaluator, DMTG(...)).run()``, or
    ``DMTG(...)(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())``.

    Args:
        temperature: a :class:`~dmtg_nas.config.TemperatureConfig` (or a float for a constant tau).
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
    def from_config(cls, config: StrategyConfig, initial_logits: dict[str, list[float]] | None = None) -> DMTG:
        return cls(
            config.temperature,
            sample=config.sample,
            logits_init=config.init.logits,
            initial_logits=initial_logits,
            entropy_weight=config.entropy_weight,
            seed=config.seed,
        )

    def default_mutation_hooks(self) -> list[Any]:
        return [DMTGRouter.mutate, no_default_hook]

    def mutate_model(self, model: Any) -> Any:
        """The supernet, in place: every :class:`~dmtg_nas.space.TaskRouter` becomes a
        :class:`DMTGRouter` reading its row of one (N, K) logit table, registered on the space as
        ``grouping_logits`` (flagged as architecture parameters for the optimizer)."""
        labels: list[str] = []
        widths: set[int] = set()
        for module in model.modules():
            if isinstance(module, TaskRouter):
                widths.add(module.num_branches)
                if module.label not in labels:
                    labels.append(module.label)
        if len(widths) > 1:
            raise ValueError(f"task routers have different numbers of branches: {sorted(widths)}")
        k = widths.pop() if widths else 0
        rows = []
        for label in labels:
            row = self.initial_logits.get(label)
            if row is not None and len(row) != k:
                raise ValueError(f"initial logits of {label!r} have {len(row)} values for {k} branches")
            rows.append([float(v) for v in row] if row is not None else [float(self.logits_init)] * k)
        table = nn.Parameter(torch.tensor(rows, dtype=torch.float32).reshape(len(labels), k))
        setattr(table, ARCH_PARAM_FLAG, True)
        self._logit_table = (table, {label: i for i, label in enumerate(labels)})
        model = super().mutate_model(model)
        if labels:
            model.grouping_logits = table
        return model

    def run_hook(self, hook: Any, name: str, module: nn.Module, memo: dict[str, Any]) -> Any:
        return hook(module, name, memo, {"logit_table": self._logit_table})

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
