"""The suite's shapes: each one a data set, its tasks, an encoder and K, as a spec document.

Planted shapes (:class:`Shape`) draw the ``planted`` data set, whose partition is known; real-data
shapes (:class:`DigitsShape`) read scikit-learn's digits (as images or as a table of the 64 pixels)
and have no planted partition. :func:`shape_spec` makes the search spec of a shape and seed; the
suite itself (:mod:`dmtg_nas.suite`) runs and scores them. Nothing here imports torch, so the
command line lists the shapes without loading the training stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .config import load_spec
from .schema import SearchSpec

__all__ = ["DigitsShape", "SHAPES", "SHAPE_GROUPS", "SHORT_SHAPES", "Shape", "SuiteShape", "shape_spec"]


@dataclass(frozen=True)
class Shape:
    """One planted problem of the suite (the ``planted`` data set, its partition known)."""

    planted: ClassVar[bool] = True  # the data set has a planted partition to score against

    name: str
    group_sizes: tuple[int, ...]
    groups: int  # K
    noise: float = 0.1
    types: str = "regression"  # regression | binary | mixed
    relation: str = "random"
    image: bool = False  # 8x8 images and a small timm CNN instead of vectors and an mlp
    samples: int = 3000
    overrides: tuple[str, ...] = field(default_factory=tuple)
    exhaustive: bool = True  # False: too costly to train every subset (conv encoders train one by one)

    @property
    def n_tasks(self) -> int:
        return sum(self.group_sizes)

    def document(self, strategy: str, seed: int) -> dict[str, Any]:
        """The spec document of one seed (data seed = split seed = ``seed``)."""
        n = self.n_tasks
        if self.types == "mixed":
            types = ["regression" if i % 2 == 0 else "binary" for i in range(n)]
        else:
            types = [self.types] * n
        doc: dict[str, Any] = {
            "name": f"suite-{self.name}",
            "tasks": [{"name": f"t{i + 1}", "type": types[i]} for i in range(n)],
            "dataset": {
                "name": "planted",
                "group_sizes": list(self.group_sizes),
                "input_dim": 32,
                "latent_dim": 8,
                "noise": self.noise,
                "samples": self.samples,
                "seed": seed,
                "relation": self.relation,
                "split": {"val": 0.2, "test": 0.2, "seed": seed},
            },
            "backbone": {"name": "mlp", "hidden": [32, 8]},
            "branches": self.groups,
            "strategy": strategy,
        }
        if self.image:
            doc["dataset"].update({"input_dim": 64, "image_size": 8})
            doc["backbone"] = {"name": "timm:test_resnet", "kwargs": {}}
        return doc


@dataclass(frozen=True)
class DigitsShape:
    """One real-data problem of the suite: binary attributes of scikit-learn's digits
    (:mod:`dmtg_nas.data.digits`), as images or as a table of the 64 pixels. There is no planted
    partition: a run is scored against the exhaustive reference only."""

    planted: ClassVar[bool] = False

    name: str
    attributes: tuple[str, ...]  # the tasks (binary digit attributes)
    groups: int  # K
    backbone: Mapping[str, Any] = field(hash=False)  # the spec's backbone section
    layout: Literal["image", "table"] = "image"
    size: int = 16  # image side (image layout; the digits' 8x8 pixels upsampled)
    channels: Literal[1, 3] = 1  # image layout
    overrides: tuple[str, ...] = field(default_factory=tuple)
    exhaustive: bool = True

    @property
    def n_tasks(self) -> int:
        return len(self.attributes)

    def document(self, strategy: str, seed: int) -> dict[str, Any]:
        """The spec document of one seed (split seed = ``seed``; the digits are fixed data)."""
        dataset: dict[str, Any] = {"name": "digits", "layout": self.layout}
        if self.layout == "image":
            dataset.update(size=self.size, channels=self.channels)
        dataset["split"] = {"val": 0.15, "test": 0.25, "seed": seed}
        return {
            "name": f"suite-{self.name}",
            "tasks": [{"name": a, "type": "binary"} for a in self.attributes],
            "dataset": dataset,
            "backbone": dict(self.backbone),
            "heads": {"hidden": []},
            "branches": self.groups,
            "strategy": strategy,
        }


SuiteShape = Shape | DigitsShape

_DIGITS_A = ("even", "prime", "multiple_of_3", "closed_loop", "straight", "round_bottom")
_DIGITS_B = ("greater_than_4", "prime", "closed_loop", "symmetric", "top_bar", "round_bottom")
_CONVNET = {"name": "convnet", "channels": [16, 32, 32]}

_SHAPES: list[SuiteShape] = [
    Shape("pairs-k3", (2, 2, 2), 3),
    Shape("triples-k2", (3, 3), 2),
    Shape("pairs-k4", (2, 2, 2), 4),  # more branches than planted groups: must not merge
    Shape("uneven-k2", (4, 2), 2),
    Shape("opposed-k3", (2, 2, 2), 3, relation="opposed"),
    Shape("binary-k3", (2, 2, 2), 3, types="binary"),
    Shape("mixed-k3", (2, 2, 2), 3, types="mixed"),
    Shape("noisy-k3", (2, 2, 2), 3, noise=0.5),
    Shape("five-k5", (2, 2, 2, 2, 2), 5),
    Shape("default-k3", (2, 3, 4), 3),
    Shape("image-k3", (2, 2, 2), 3, image=True, samples=2000, exhaustive=False),
    # real data: six attributes each (exhaustive), K = 3, 16x16 images as in the digits space (at 8x8
    # the reference's batch-norm networks, trained one by one, cost only about 2.3x less)
    DigitsShape("digits-conv-a", _DIGITS_A, 3, _CONVNET),
    DigitsShape("digits-conv-b", _DIGITS_B, 3, _CONVNET),
    DigitsShape("digits-table", _DIGITS_A, 3, {"name": "mlp", "hidden": [32, 8]}, layout="table"),
    DigitsShape("digits-timm", _DIGITS_B, 3, {"name": "timm:test_resnet", "kwargs": {}}, channels=3),
]
SHAPES: dict[str, SuiteShape] = {s.name: s for s in _SHAPES}
SHORT_SHAPES = ("pairs-k3", "pairs-k4", "opposed-k3", "mixed-k3")
# the names --shapes accepts for sets of shapes
SHAPE_GROUPS: dict[str, tuple[str, ...]] = {
    "short": SHORT_SHAPES,
    "exhaustive": tuple(n for n, s in SHAPES.items() if s.planted and s.exhaustive and s.n_tasks <= 6),
    "real": tuple(n for n, s in SHAPES.items() if not s.planted),
    "all": tuple(SHAPES),
}


def shape_spec(shape: SuiteShape, strategy: str, seed: int, overrides: Sequence[str] = ()) -> SearchSpec:
    """The search spec of one shape and seed (data seed = split seed = training seed = ``seed``)."""
    return load_spec(shape.document(strategy, seed), [*shape.overrides, *overrides, f"strategy.seed={seed}"])
