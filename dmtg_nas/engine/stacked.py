"""Many small networks with the same ``mlp`` encoder as one batched computation.

Small networks (tabular data, a few layers of a few dozen units) spend a training step almost
entirely in per-operation overhead, not arithmetic: N networks run one after the other cost about N
times one network. With the same layer shapes, each layer's N weight matrices stacked in one
(N, out, in) tensor run as one batched matrix product (``baddbmm``) for all N, so a step costs
about as much as one network's. The warm start's single-task networks
(:class:`StackedSingles`) and the merge check's subset networks (:func:`stacked_forward`) use
this; both give the values of the separate networks (up to float rounding).

Encoders that qualify: ``mlp`` (linear layers, activations, dropout, layer norm; not batch norm,
whose running statistics are per network); heads that qualify: one linear layer on the encoder's
vector (:func:`~dmtg_nas.space.plain_linear`). Anything else returns None and runs as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import MLP
from ..network import GroupedNetwork, plain_linear

__all__ = ["StackedSingles", "mlp_steps", "run_mlp", "stacked_forward"]

_ELEMENTWISE_LAYERS = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Dropout)

# one step of an mlp encoder: ("linear", layer index), ("norm", layer index, eps) or ("apply", module)
Step = tuple[Any, ...]


def mlp_steps(encoder: nn.Module) -> list[Step] | None:
    """The layers of an ``mlp`` encoder as the steps :func:`run_mlp` takes; None for other encoders
    and for layers it cannot stack (batch norm, linear layers without bias, norms without affine)."""
    if type(encoder) is not MLP:
        return None
    steps: list[Step] = []
    for j, m in enumerate(cast(MLP, encoder)):
        if type(m) is nn.Linear and m.bias is not None:
            steps.append(("linear", j))
        elif type(m) is nn.LayerNorm and m.elementwise_affine and m.bias is not None and len(m.normalized_shape) == 1:
            steps.append(("norm", j, m.eps))
        elif type(m) in _ELEMENTWISE_LAYERS:
            steps.append(("apply", m))
        else:
            return None
    return steps


def _signature(encoder: nn.Module) -> list[Any] | None:
    """What must agree for encoders to stack: the steps and every layer's shape."""
    steps = mlp_steps(encoder)
    if steps is None:
        return None
    out: list[Any] = []
    for step in steps:
        if step[0] == "apply":
            m = step[1]
            out.append((type(m), getattr(m, "p", None), getattr(m, "approximate", None)))
        else:
            weight = cast(nn.Linear | nn.LayerNorm, cast(MLP, encoder)[step[1]]).weight
            out.append((step, tuple(weight.shape), weight.dtype))
    return out


def run_mlp(steps: Sequence[Step], params: Callable[[int], tuple[Tensor, Tensor]], h: Tensor) -> Tensor:
    """N stacked ``mlp`` encoders on ``h``: (B, D) shared by all, or (N, B, D) one batch each ->
    (N, B, width). ``params(j)`` gives layer j's stacked weight and bias: linear (N, out, in) and
    (N, out) (``torch.func.stack_module_state``'s layout), layer norm (N, width) and (N, width)."""
    for step in steps:
        if step[0] == "linear":
            w, b = params(step[1])
            h = torch.matmul(h, w.mT) + b.unsqueeze(1) if h.dim() == 2 else torch.baddbmm(b.unsqueeze(1), h, w.mT)
        elif step[0] == "norm":
            g, b = params(step[1])
            h = F.layer_norm(h, h.shape[-1:], eps=step[2]) * g.unsqueeze(1) + b.unsqueeze(1)
        else:
            h = step[1](h)
    return h


class StackedSingles(nn.Module):
    """N single-task networks (network i: an ``mlp`` encoder and task i's linear head) as one module:
    ``forward(x)`` gives ``{task: (B, C_task)}`` like the :class:`~dmtg_nas.network.GroupedNetwork` it
    is built from (:meth:`build`).

    Each layer's N weights are one parameter ((N, out, in), biases (N, out)); the heads are one
    (N, C_max, D) product, narrower heads padded with zero rows, which get no gradient and stay
    zero (Adam, AdamW and SGD leave a zero weight with a zero gradient at zero). The values are
    taken from the separately initialised networks, so initialisation and random stream are those
    of N networks.
    """

    def __init__(self, task_names: Sequence[str], encoders: Sequence[MLP], heads: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.widths = [h.out_features for h in heads]
        self.steps = cast(list[Step], mlp_steps(encoders[0]))
        self.weights = nn.ParameterDict()
        for step in self.steps:
            if step[0] != "apply":
                layers = [cast(nn.Linear | nn.LayerNorm, enc[step[1]]) for enc in encoders]
                self.weights[f"{step[1]}_weight"] = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
                self.weights[f"{step[1]}_bias"] = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
        self.elementwise = nn.ModuleList([s[1] for s in self.steps if s[0] == "apply"])  # train/eval follow
        n, c_max, d = len(heads), max(self.widths), heads[0].in_features
        weight = heads[0].weight.new_zeros(n, c_max, d)
        bias = heads[0].weight.new_zeros(n, c_max)
        for i, head in enumerate(heads):
            weight[i, : head.out_features] = head.weight.detach()
            bias[i, : head.out_features] = cast(Tensor, head.bias).detach()
        self.head_weight = nn.Parameter(weight)
        self.head_bias = nn.Parameter(bias)

    @classmethod
    def build(cls, singles: GroupedNetwork) -> StackedSingles | None:
        """The stacked form of ``singles`` (branch i holds task i alone), or None where it does not
        apply (see the module docs; also a stem, or encoders of different shapes)."""
        branches, names = list(singles.branches), list(singles.task_names)
        if singles.stem is not None or not branches or len(branches) != len(names):
            return None
        if any(singles.assignment[name] != i for i, name in enumerate(names)):
            return None
        first = _signature(branches[0])
        if first is None or any(_signature(b) != first for b in branches[1:]):
            return None
        heads = [plain_linear(h) for h in singles.heads]
        width = cast(MLP, branches[0]).out_features
        if any(h is None or h.in_features != width or h.weight.dtype != heads[0].weight.dtype for h in heads):  # type: ignore[union-attr]
            return None
        return cls(names, cast(list[MLP], branches), cast(list[nn.Linear], heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = run_mlp(self.steps, lambda j: (self.weights[f"{j}_weight"], self.weights[f"{j}_bias"]), x.flatten(1))
        out = torch.baddbmm(self.head_bias.unsqueeze(1), h, self.head_weight.mT)  # (N, B, C_max)
        return {name: out[i, :, :c] for i, (name, c) in enumerate(zip(self.task_names, self.widths))}


def stacked_forward(net: GroupedNetwork) -> Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]] | None:
    """For networks shaped like ``net`` (one ``mlp`` branch, a linear head per task, no stem):
    ``forward(params, x)``, their outputs from parameters stacked by
    ``torch.func.stack_module_state`` (names as in ``net.state_dict()``, leading dimension N), with
    ``x`` (B, ...) shared by all or (N, B, ...) one batch each -> ``{task: (N, B, C)}``: what
    ``vmap(functional_call(net, ...))`` computes, without vmap's per-operation cost. None where the
    network does not qualify."""
    if net.stem is not None or len(net.branches) != 1:
        return None
    steps = mlp_steps(net.branches[0])
    if steps is None:
        return None
    linear = [plain_linear(h) for h in net.heads]
    if any(lin is None for lin in linear):
        return None
    keys = [f"heads.{i}.0" if type(h) is nn.Sequential else f"heads.{i}" for i, h in enumerate(net.heads)]
    widths = [cast(nn.Linear, lin).out_features for lin in linear]
    names = list(net.task_names)
    rank = len(net.architecture["input_shape"])

    def forward(params: Mapping[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        h = x.flatten(-rank) if rank > 1 else x
        h = run_mlp(steps, lambda j: (params[f"branches.0.{j}.weight"], params[f"branches.0.{j}.bias"]), h)
        weight = torch.cat([params[f"{k}.weight"] for k in keys], dim=1)  # (N, sum C, D)
        bias = torch.cat([params[f"{k}.bias"] for k in keys], dim=1)
        out = torch.baddbmm(bias.unsqueeze(1), h, weight.mT)  # (N, B, sum C)
        return dict(zip(names, out.split(widths, dim=-1)))

    return forward
