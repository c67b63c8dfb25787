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
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from torch import Tensor, nn

from ..engine.losses import head_losses
from ..engine.scout import affinity_clusters, gradient_similarity, lookahead_affinity, start_logits
from ..schedules import TemperatureSchedule
from ..schema import AffinityConfig, AlignmentConfig, StrategyConfig, TaskConfig, TemperatureConfig
from ..warmstart import attribution_affinity
from .router import RouterBank, gumbel_noise

__all__ = ["DMTGLightningModule", "OneShotDMTG", "routed_loss"]

_logger = logging.getLogger(__name__)


class _ExpectedPredictions(nn.Module):
    """``{task: mean over the K branches of its heads' predictions}`` of a supernet (with the
    logits held uniform, each task's expected prediction)."""

    def __init__(self, supernet: nn.Module, task_names: Sequence[str]) -> None:
        super().__init__()
        self.supernet = supernet
        self.task_names = list(task_names)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = self.supernet(x)
        return {name: torch.stack(outputs.preds(i)).mean(0) for i, name in enumerate(self.task_names)}


def routed_loss(
    bank: RouterBank,
    tasks: Sequence[TaskConfig],
    outputs: Any,
    targets: Mapping[str, Tensor],
    noise: Tensor,
    tau: Tensor,
    hard: bool,
    held: bool,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """One step of the method after the supernet's forward: the relaxed sample ``z`` (N, K), every
    head's loss and their z-weighted sum; returns ``(total, {task: loss}, z)`` (``held``: the logits
    get no gradient from this loss). ``tau`` and ``noise`` are tensors: compiled (``trainer.compile``)
    this is one graph for the whole search, whatever the schedule does to tau."""
    z = bank.sample(noise, tau, hard)
    total, parts = bank.loss(z.detach() if held else z, head_losses(tasks, outputs, targets), tasks)
    return total, parts, z


class DMTGLightningModule(BaseOneShotLightningModule):
    """The search loop: tau and the Gumbel noise of each step, then the method's loss.

    With the affinity scout (``affinity.enabled``, :mod:`dmtg_nas.engine.scout`) the first
    ``affinity.epochs`` epochs hold the logits and measure the tasks' affinity in the supernet
    (attribution, or TAG's lookahead); the logits then restart from its clusters (``logits_init``
    plus ``affinity.strength`` on each task's cluster). :attr:`scout_record` holds what it measured
    and did (``metrics.json``'s ``affinity``). With ``bilevel`` the logits learn from validation
    batches (:meth:`held_out_loss`).
    """

    def __init__(
        self,
        training_module: Any,
        *,
        temperature: TemperatureSchedule,
        hard: bool = False,
        seed: int = 0,
        entropy_weight: float = 0.0,
        affinity: AffinityConfig | None = None,
        logits_init: float = 1.0,
        bilevel: bool = False,
        alignment: AlignmentConfig | None = None,
    ) -> None:
        super().__init__(training_module)
        self.bilevel = bilevel
        self.alignment = alignment if alignment is not None and alignment.enabled else None
        self._similarity: Tensor | None = None  # alignment: (K, N, N) centred gradient similarity
        self._alignment_count = 0  # alignment: measurements so far
        self._alignment_seconds = 0.0
        self._held_out: Any = None  # bilevel: the iterator over the validation batches
        self.temperature = temperature
        self.hard = hard
        self.seed = seed
        self.entropy_weight = entropy_weight
        self.current_tau = temperature(0, 1)
        self.affinity = affinity if affinity is not None and affinity.enabled else None
        self.logits_init = logits_init
        self.scout_record: dict[str, Any] | None = None
        self._inputs: list[Tensor] = []  # training inputs of the scout's last epoch, for the attribution
        self._lookahead: Tensor | None = None  # lookahead: the sum of the measurements, and their count
        self._measured = 0
        self._scout_started: float | None = None

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
        """The Gumbel noise (N, K) and tau (a 0-d tensor) of optimisation step ``step``: the router
        bank's buffers, set for this step (:meth:`RouterBank.set_step`)."""
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        self.current_tau = self.temperature(step, total)
        bank = self.bank
        return bank.set_step(gumbel_noise(self.seed, step, tuple(bank.noise.shape)), self.current_tau)

    @property
    def routing(self) -> Any:
        """:func:`routed_loss`, through ``torch.compile`` when the network's forward is compiled."""
        found = self.__dict__.get("_routing")
        if found is None:
            compiled = bool(getattr(self.training_module, "compile_model", False))
            found = self.__dict__["_routing"] = torch.compile(routed_loss) if compiled else routed_loss
        return found

    # ------------------------------------------------------------------------------------------
    # the affinity scout
    # ------------------------------------------------------------------------------------------

    @property
    def scouting(self) -> bool:
        """Whether this step belongs to the affinity scout (logits held, affinity measured)."""
        return (
            self.affinity is not None
            and self.scout_record is None
            and self.trainer.current_epoch < self.affinity.epochs
        )

    @property
    def _scout_ends(self) -> bool:
        """Whether this epoch is the affinity scout's last."""
        return self.scouting and self.trainer.current_epoch + 1 >= self.affinity.epochs  # type: ignore[union-attr]

    def measure_lookahead(self, batch: Any) -> None:
        """One TAG lookahead measurement on the first branch (the stem and branch 0, and its K heads'
        first: :func:`~dmtg_nas.engine.scout.lookahead_affinity`) at the optimizer's learning rate."""
        encoder, _, heads = self._branch(0)
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self._trainer is not None else 1e-3
        x, targets = batch[0], batch[1]
        z = lookahead_affinity(encoder, heads, self.training_module.tasks, x, targets, lr).double()
        if torch.isfinite(z).all():
            self._lookahead = z if self._lookahead is None else self._lookahead + z
            self._measured += 1

    def finish_scout(self) -> None:
        """Measure (attribution) or average (lookahead) the tasks' affinity in the supernet, cluster it
        and restart the logits from the clusters."""
        assert self.affinity is not None
        bank = self.bank
        samples = 0
        if self.affinity.method == "lookahead":
            n = len(bank.task_names)
            total = self._lookahead if self._lookahead is not None else torch.zeros(n, n, dtype=torch.float64)
            affinity = (total / max(self._measured, 1)).to(bank.logits.device)
            samples = self._measured
            self._lookahead, self._measured = None, 0
        else:
            x = torch.cat(self._inputs)[: self.affinity.samples].to(bank.logits.device)
            self._inputs = []
            samples = int(x.shape[0])
            affinity = attribution_affinity(
                _ExpectedPredictions(self.training_module, bank.task_names),
                self.training_module.tasks,
                x,
                self.affinity.rank,
            )
        if self._trainer is not None:  # a distributed run: every process clusters the same matrix
            affinity = self.trainer.strategy.reduce(affinity.to(bank.logits.device), reduce_op="mean")
        a = affinity.detach().cpu().numpy().astype(float)
        clusters = affinity_clusters(a, bank.num_branches, self.affinity.clusters, self.seed)
        rows = start_logits(clusters, bank.num_branches, self.logits_init, self.affinity.strength)
        with torch.no_grad():
            bank.logits.copy_(torch.tensor(rows, dtype=bank.logits.dtype))
        if self._trainer is not None:  # the logits' optimizer state belonged to the held logits
            for opt in self.trainer.optimizers:
                opt.state.pop(bank.logits, None)
        seconds = time.perf_counter() - self._scout_started if self._scout_started is not None else 0.0
        self.scout_record = {
            "affinity": [[float(f"{float(v):.6g}") for v in row] for row in a],
            "clusters": clusters,
            "method": self.affinity.method,
            "samples": samples,  # attribution: inputs used; lookahead: measurements averaged
            "epochs": int(self.trainer.current_epoch) + 1 if self._trainer is not None else 0,
            "seconds": round(seconds, 3),
        }
        _logger.info("affinity scout: clusters %s", clusters)

    def _keep_inputs(self, x: Tensor) -> None:
        """Keep the scout's last-epoch inputs (up to ``affinity.samples``) for the attribution."""
        have = sum(t.shape[0] for t in self._inputs)
        if have < self.affinity.samples:  # type: ignore[union-attr]
            self._inputs.append(x.detach()[: self.affinity.samples - have].cpu())  # type: ignore[union-attr]

    def on_train_start(self) -> None:
        super().on_train_start()
        self._scout_started = time.perf_counter()

    def on_after_backward(self) -> None:
        super().on_after_backward()
        if self.scouting:  # the logits stay where they started while the affinity is measured
            self.bank.logits.grad = None

    def on_train_end(self) -> None:
        if self.affinity is not None and self.scout_record is None and (self._inputs or self._measured):
            self.finish_scout()  # fewer epochs than the scout's
        super().on_train_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_module.on_save_checkpoint(checkpoint)  # it refuses weights a non-finite loss reached
        super().on_save_checkpoint(checkpoint)
        if self.affinity is not None:
            checkpoint["dmtg_scout"] = {"record": self.scout_record}
        if self.alignment is not None:
            checkpoint["dmtg_alignment"] = {
                "similarity": self._similarity,
                "measurements": self._alignment_count,
                "seconds": self._alignment_seconds,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("dmtg_scout")
        if saved is not None:
            self.scout_record = saved["record"]
        aligned = checkpoint.get("dmtg_alignment")
        if aligned is not None:
            self._similarity = aligned["similarity"]
            self._alignment_count = aligned["measurements"]
            self._alignment_seconds = aligned["seconds"]

    # ------------------------------------------------------------------------------------------
    # the method
    # ------------------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        noise, tau = self.step_state(int(self.trainer.global_step))
        bank, tasks = self.bank, self.training_module.tasks
        if self.scouting:
            scout = self.affinity
            assert scout is not None
            if scout.method == "lookahead":
                if self.trainer.global_step % scout.every == 0:
                    self.measure_lookahead(batch)
            elif self._scout_ends:
                self._keep_inputs(batch[0])

        searching = not self.scouting  # the logits learn (after the scout, if any)
        bilevel = self.bilevel and searching
        aligned = self.alignment is not None and searching
        held = bilevel or (aligned and self.alignment.drive == "alignment")  # type: ignore[union-attr]
        if self.alignment is not None and self.trainer.global_step % self.alignment.every == 0:
            self.measure_alignment(batch)
        routing, z = self.routing, None

        def method_loss(outputs: Any, targets: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            nonlocal z
            total, parts, z = routing(bank, tasks, outputs, targets, noise, tau, self.hard, held)
            return total, parts

        loss = self.training_module.training_step(batch, batch_idx, loss_fn=method_loss)
        if loss is None:  # a skipped non-finite batch (strategy.nonfinite: skip)
            return None
        assert z is not None
        if bilevel:  # the logits learn from a held-out batch, the weights from the training batch
            loss = loss + self.held_out_loss(z)
        if aligned and self._similarity is not None:
            loss = loss + self.alignment.weight * self.alignment_energy(z)  # type: ignore[union-attr]
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * bank.entropy()
        return loss

    def _branch(self, k: int) -> tuple[nn.Module, list[str], list[nn.Module]]:
        """Branch k (after the shared stem, if any), the names of its own parameters in it, and
        its N heads (read fresh: a head bank's heads are standalone copies of its weights)."""
        encoders = self.__dict__.setdefault("_encoders", {})
        if k not in encoders:  # built once, as the bank: the tree is fixed once the space is mutated
            from .space import GroupingSpace

            space = next(m for m in self.training_module.modules() if isinstance(m, GroupingSpace))
            branch = space.branches[k]
            if space.stem is None:
                encoders[k] = (branch, [name for name, _ in branch.named_parameters()])
            else:
                encoders[k] = (nn.Sequential(space.stem, branch), [f"1.{n}" for n, _ in branch.named_parameters()])
        encoder, names = encoders[k]
        return encoder, names, [self.bank.head(i, k) for i in range(len(self.bank.task_names))]

    def measure_alignment(self, batch: Any) -> None:
        """The tasks' gradient similarity on each branch's own parameters (this batch's first
        ``alignment.samples`` rows), centred on its mean over task pairs, into the running average."""
        assert self.alignment is not None
        started = time.perf_counter()
        rows = self.alignment.samples
        x, targets = batch[0][:rows], {name: y[:rows] for name, y in batch[1].items()}
        tasks = self.training_module.tasks
        n = len(tasks)
        off = ~torch.eye(n, dtype=torch.bool, device=self.bank.logits.device)  # the task pairs
        measured = []
        for k in range(self.bank.num_branches):
            encoder, names, heads = self._branch(k)
            s = gradient_similarity(encoder, heads, tasks, x, targets, names).float().to(off.device)
            centred = torch.where(off, s - s[off].mean(), torch.zeros_like(s)) if n > 1 else torch.zeros_like(s)
            measured.append(centred)
        new = torch.stack(measured)
        ema = self.alignment.ema
        self._similarity = new if self._similarity is None else ema * self._similarity + (1 - ema) * new
        self._alignment_count += 1
        self._alignment_seconds += time.perf_counter() - started

    @property
    def alignment_record(self) -> dict[str, Any] | None:
        """What the alignment measured (``metrics.json``'s ``alignment``): the measurements, their
        seconds, and the last running average of the centred similarity, branch by branch."""
        if self.alignment is None:
            return None
        similarity = self._similarity.tolist() if self._similarity is not None else []
        return {
            "measurements": self._alignment_count,
            "seconds": round(self._alignment_seconds, 3),
            "similarity": [[[float(f"{v:.4g}") for v in row] for row in branch] for branch in similarity],
        }

    def alignment_energy(self, z: Tensor) -> Tensor:
        """``-1/2 sum_k z[:, k]^T S_k z[:, k]``: low when each branch carries tasks whose gradients
        on it agree more than the average pair's (S_k centred, zero diagonal)."""
        assert self._similarity is not None
        zk = z.T.unsqueeze(-1)  # (K, N, 1)
        return -0.5 * (zk.transpose(1, 2) @ self._similarity @ zk).sum()

    def held_out_loss(self, z: Tensor) -> Tensor:
        """The method's loss on the next validation batch, the network in evaluation mode and its
        head losses constants: its gradient reaches only the logits (DARTS' first-order bilevel
        update: the grouping is chosen by how each branch's heads generalize, not how they fit)."""
        from pytorch_lightning.utilities import move_data_to_device

        x, targets = move_data_to_device(self._next_held_out(), self.device)
        module = self.training_module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                blocks = head_losses(module.tasks, module(x), targets)
        finally:
            module.train(was_training)
        loss, _ = self.bank.loss(z, blocks, module.tasks)
        return loss

    def _next_held_out(self) -> Any:
        """The next validation batch, starting over at the end of the validation set."""
        if self._held_out is not None:
            batch = next(self._held_out, None)
            if batch is not None:
                return batch
        loader = getattr(self.training_module, "held_out_loader", None) or self.trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, list | tuple) else loader
        if loader is None:
            raise RuntimeError("strategy.bilevel needs the validation split's loader")
        self._held_out = iter(loader)
        batch = next(self._held_out, None)
        if batch is None:
            raise RuntimeError("strategy.bilevel needs a non-empty validation set")
        return batch

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # the training module's epoch mean of the loss
        self.log("tau", self.current_tau)
        for task, row in self.probabilities().items():  # the grouping probabilities, one scalar each
            for k, p in enumerate(row):
                self.log(f"prob/{task}/{k}", p)
        if self._scout_ends:
            self.finish_scout()

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
        affinity: the affinity scout (:class:`~dmtg_nas.schema.AffinityConfig`; None: off).
        bilevel: the logits learn from validation batches, the weights from training batches.
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
        affinity: AffinityConfig | None = None,
        bilevel: bool = False,
        alignment: AlignmentConfig | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.alignment = alignment
        self.affinity = affinity
        self.bilevel = bilevel
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
            affinity=config.affinity,
            bilevel=config.bilevel,
            alignment=config.alignment,
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
            affinity=self.affinity,
            logits_init=self.logits_init,
            bilevel=self.bilevel,
            alignment=self.alignment,
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
