"""The local search after the one-shot search: neighbours, the greedy rounds, and a search run."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from dmtg_nas import load_model, load_spec, run_search
from dmtg_nas.localsearch import SubsetScorer, local_search, masks_of, neighbours, split_neighbours
from dmtg_nas.partitions import best_partition, members

from .conftest import planted_doc

NAMES = ["a", "b", "c", "d", "e", "f"]


def _fake_scorer(
    cost: dict[int, float] | None = None,
    weights: Sequence[float] | None = None,
    second: dict[int, float] | None = None,
) -> SubsetScorer:
    """Group networks whose validation loss (spread evenly over the members) is read from ``cost``,
    or from ``second`` for the confirming replicate where it has the mask."""
    cost = cost if cost is not None else {}

    def train(masks: Sequence[int], replicate: int) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
        out = {}
        for m in masks:
            table = second if replicate == 1 and second is not None and m in second else cost
            per = table.get(m, 10.0 * m.bit_count()) / m.bit_count()
            rows = {NAMES[i]: {"loss": per} for i in members(m)}
            out[m] = {"val": rows, "test": rows}
        return out

    return SubsetScorer(train, NAMES, weights or [1.0] * len(NAMES))


def test_neighbours_are_the_merges_and_the_moves_taking_turns() -> None:
    start = masks_of([["a", "b"], ["c"], ["d", "e", "f"]], NAMES)
    found = neighbours(start, max_groups=3)
    kinds = [k for k, _ in found]
    # the first merge, the first move, the second merge, ...; the moves left over at the end
    assert kinds == ["merge", "move"] * 3 + ["move"] * (len(found) - 6)
    parts = [p for _, p in found]
    assert len(set(parts)) == len(parts) and start not in parts
    for p in parts:  # each a partition of the six tasks into at most K groups
        assert sorted(i for m in p for i in members(m)) == list(range(6)) and len(p) <= 3
    # moves: a, b (2 targets each) and d, e, f (2 targets each); c alone moving is a merge
    assert len(parts) - 3 == 2 * 2 + 3 * 2
    # with K = 4 a task of a group of two or more may also leave for a group of its own (splitting
    # {a, b} is one partition whichever task leaves): 1 + 3 more
    assert len(neighbours(start, max_groups=4)) == len(found) + 4
    assert [k for k, _ in neighbours(start, max_groups=3, moves=False)] == ["merge"] * 3


def test_merge_splits_merge_two_groups_and_leave_one_task_alone() -> None:
    start = masks_of([["a", "b"], ["c"], ["d", "e", "f"]], NAMES)
    plain = neighbours(start, max_groups=3)
    found = neighbours(start, max_groups=3, merge_splits=True)
    kinds = [k for k, _ in found]
    n_split, n_move = kinds.count("merge-split"), kinds.count("move")
    # turns of (merge, merge-split, move) while each kind lasts, every kind in its own order
    counts = {"merge": 3, "merge-split": n_split, "move": n_move}
    turns = [[k for k in counts if i < counts[k]] for i in range(max(counts.values()))]
    assert kinds == [k for turn in turns for k in turn]
    assert [p for k, p in found if k == "merge"] == [p for k, p in plain if k == "merge"]
    parts = [p for _, p in found]
    assert len(set(parts)) == len(parts) and start not in parts
    assert set(parts) >= {p for _, p in plain}  # the moves are still there (unless listed as merge-splits)
    by_hand = set()
    groups = list(start)
    for x in range(3):
        for y in range(x + 1, 3):
            merged = groups[x] | groups[y]
            rest = [g for k, g in enumerate(groups) if k not in (x, y)]
            for t in members(merged):
                by_hand.add(tuple(sorted([*rest, merged & ~(1 << t), 1 << t])))
    by_hand.discard(start)  # {a,b} + {c}, c alone again
    # listed once, under the first kind that reaches it: merges, then these, then the other moves
    assert {p for k, p in found if k == "merge-split"} == by_hand - {p for k, p in plain if k == "merge"}
    assert n_split > 0
    # every merge-split keeps the number of groups and has exactly one new single-task group
    for k, p in found:
        if k == "merge-split":
            assert len(p) == len(start) and any(m.bit_count() == 1 and m not in start for m in p)


def test_a_round_cut_short_still_tries_moves() -> None:
    """{a,b,c,d}{e}{f}: only moving one of a-d next to e or f wins; merges and merge-splits (3 + 8)
    would fill a round of six candidates listed kind by kind, the turns try two moves."""
    import itertools

    abcd, e, f = 0b001111, 0b010000, 0b100000
    cost = {abcd: 4.0, e: 1.0, f: 1.0}
    cost.update({sum(1 << i for i in trio): 3.0 for trio in itertools.combinations(range(4), 3)})
    cost.update({(1 << x) | single: 1.5 for x in range(4) for single in (e, f)})  # a move: 3.0 + 1.5 + 1.0
    out = local_search((abcd, e, f), _fake_scorer(cost), 3, margin=0.01, max_candidates=6, rounds=1,
                       moves=True, merge_splits=True)  # fmt: skip
    first = out.to_dict(NAMES)["rounds"][0]
    assert [c["kind"] for c in first["candidates"]] == ["merge", "merge-split", "move"] * 2
    assert first["accepted_kind"] == "move" and math.isclose(out.val_loss, 5.5)


def test_a_merge_split_reaches_all_but_one_together_where_merges_and_moves_stop() -> None:
    abc, def_, f = 0b000111, 0b111000, 0b100000  # {a,b,c}, {d,e,f}, {f}
    # {a,b,c}{d,e,f} = 6.0; all six together 6.5 (a merge loses); {a..e}{f} = 5.5; moves cost more
    cost = {abc: 3.0, def_: 3.0, abc | def_: 6.5, (abc | def_) & ~f: 4.5, f: 1.0}
    start = (abc, def_)
    without = local_search(start, _fake_scorer(cost), 2, margin=0.01, max_candidates=20, rounds=4, moves=True)
    assert not without.changed
    out = local_search(start, _fake_scorer(cost), 2, margin=0.01, max_candidates=20, rounds=4, merge_splits=True)
    assert out.partition == tuple(sorted(((abc | def_) & ~f, f))) and math.isclose(out.val_loss, 5.5)
    assert out.rounds[0]["accepted"] == out.partition
    assert [r["accepted_kind"] for r in out.to_dict(NAMES)["rounds"]] == ["merge-split", None]


def test_group_splits_cut_a_merged_group_in_two_parts_of_two_or_more() -> None:
    start = masks_of([["a", "b", "c", "d"], ["e", "f"]], NAMES)
    found = neighbours(start, max_groups=3, group_splits=True)
    cuts = [p for k, p in found if k == "group-split"]
    # {a,b,c,d} into two pairs: three ways; {e,f} is too small to cut
    assert sorted(cuts) == sorted(
        masks_of(g, NAMES)
        for g in (
            [["a", "b"], ["c", "d"], ["e", "f"]],
            [["a", "c"], ["b", "d"], ["e", "f"]],
            [["a", "d"], ["b", "c"], ["e", "f"]],
        )
    )
    kinds = [k for k, _ in found]
    assert kinds[:2] == ["merge", "group-split"]  # the first cut right after the first merge
    assert not any(k == "group-split" for k, _ in neighbours(start, max_groups=2, group_splits=True))  # K groups
    assert not any(k == "group-split" for k, _ in neighbours(start, max_groups=3))  # off by default
    five = masks_of([["a", "b", "c", "d", "e"], ["f"]], NAMES)  # 2+3 cuts of five tasks: 10
    assert sum(k == "group-split" for k, _ in neighbours(five, max_groups=3, group_splits=True)) == 10
    # with an affinity, the cut across the least related parts first
    affinity = [[1.0 if (i < 2) == (j < 2) else 0.0 for j in range(6)] for i in range(6)]
    ranked = [p for k, p in neighbours(start, 3, affinity, group_splits=True) if k == "group-split"]
    assert ranked[0] == masks_of([["a", "b"], ["c", "d"], ["e", "f"]], NAMES)


def test_a_group_split_undoes_a_merge_that_single_moves_cannot() -> None:
    ab, cd, ef = 0b000011, 0b001100, 0b110000
    # {a,b,c,d}{e,f} = 6.0; {a,b}{c,d}{e,f} = 4.5; every single-task move or split costs more
    cost = {ab | cd: 4.0, ef: 2.0, ab: 1.25, cd: 1.25}
    start = (ab | cd, ef)
    without = local_search(start, _fake_scorer(cost), 3, margin=0.01, max_candidates=40, rounds=4, moves=True)
    assert not without.changed
    out = local_search(
        start, _fake_scorer(cost), 3, margin=0.01, max_candidates=40, rounds=4, moves=True, group_splits=True
    )
    assert out.partition == tuple(sorted((ab, cd, ef))) and math.isclose(out.val_loss, 4.5)
    assert out.to_dict(NAMES)["rounds"][0]["accepted_kind"] == "group-split"


def test_neighbours_follow_the_affinity() -> None:
    start = masks_of([["a"], ["b"], ["c", "d"]], NAMES[:4])
    affinity = [
        [1.0, 0.1, 0.2, 0.9],
        [0.1, 1.0, 0.7, 0.0],
        [0.2, 0.7, 1.0, 0.1],
        [0.9, 0.0, 0.1, 1.0],
    ]
    found = neighbours(start, max_groups=3, affinity=affinity)
    merged = [p for k, p in found if k == "merge"]
    # a with {c, d}: (0.2 + 0.9) / 2 = 0.55 > b with {c, d}: 0.35 > a with b: 0.1
    assert merged == [
        masks_of([["b"], ["a", "c", "d"]], NAMES[:4]),
        masks_of([["a"], ["b", "c", "d"]], NAMES[:4]),
        masks_of([["a", "b"], ["c", "d"]], NAMES[:4]),
    ]
    moves = [p for k, p in found if k == "move"]
    # d to a: 0.9 - 0.1 (its affinity to c) is the best move; c to b: 0.7 - 0.1 next
    assert moves[:2] == [
        masks_of([["a", "d"], ["b"], ["c"]], NAMES[:4]),
        masks_of([["a"], ["b", "c"], ["d"]], NAMES[:4]),
    ]


def test_rounds_accept_improvements_stop_at_the_margin_and_train_each_group_once() -> None:
    ab, c = 0b011, 0b100
    cost = {1: 1.0, 2: 1.0, 4: 1.0, ab: 1.5, 0b101: 2.5, 0b110: 2.5, 0b111: 2.2}
    scorer = _fake_scorer(cost)
    out = local_search((1, 2, 4), scorer, 3, margin=0.01, max_candidates=20, rounds=10, moves=True, confirm=True)
    # {a}{b}{c} = 3.0 -> {a,b}{c} = 2.5 -> {a,b,c} = 2.2
    assert out.partition == (0b111,) and math.isclose(out.val_loss, 2.2)
    # then every neighbour of {a,b,c} is worse, and each of its groups was trained before
    assert [r["accepted"] for r in out.rounds] == [(ab, c), (0b111,), None]
    # the first round trains 6 groups, confirms with {a, b} and {a}, {b} again (3); the second trains
    # {a, b, c} and confirms it against {a, b} and {c} again (2)
    assert out.networks_trained == len(scorer.cache) == 6 + 3 + 1 + 2 and out.batches == 4
    assert out.rounds[0]["confirmation"] == {"change": 1.5 - 2.0, "accepted": True}
    # the last merge gains 12%: with a 15% margin it is refused
    out = local_search((1, 2, 4), _fake_scorer(cost), 3, margin=0.15, max_candidates=20, rounds=10, moves=True)
    assert out.partition == (ab, c) and out.rounds[-1]["accepted"] is None and out.changed
    # rounds caps the accepted steps
    out = local_search((1, 2, 4), _fake_scorer(cost), 3, margin=0.0, max_candidates=20, rounds=1, moves=True)
    assert out.partition == (ab, c) and len(out.rounds) == 1
    # no better neighbour: the start stays
    out = local_search((ab, c), _fake_scorer({ab: 1.0, c: 0.5}), 3, margin=0.0, max_candidates=20, rounds=5, moves=True)
    assert not out.changed and math.isclose(out.val_loss, 1.5)


def test_split_neighbours_come_only_from_merged_groups_and_follow_the_affinity() -> None:
    names = NAMES[:5]
    start = masks_of([["a", "b", "c"], ["d", "e"]], names)
    formed = {0b00111}  # {a, b, c}: formed by a merge; {d, e}: the search's group
    found = split_neighbours(start, 3, formed)
    assert [k for k, _ in found] == ["split"] * 3
    assert [p for _, p in found] == [
        masks_of([[t], [u for u in "abc" if u != t], ["d", "e"]], names) for t in "abc"
    ]  # mask order without an affinity
    assert split_neighbours(start, 2, formed) == []  # K groups already
    assert split_neighbours(start, 3, set()) == []  # nothing merged
    affinity = [[1.0] * 5 for _ in range(5)]
    affinity[1][0] = affinity[0][1] = affinity[1][2] = affinity[2][1] = 0.0  # b is least related to {a, c}
    assert split_neighbours(start, 3, formed, affinity)[0][1] == masks_of([["b"], ["a", "c"], ["d", "e"]], names)


def test_splits_reach_one_group_and_one_task_alone_which_merges_cannot() -> None:
    ab, cd, abc, abcd = 0b0011, 0b1100, 0b0111, 0b1111
    # merging the pairs wins (2.0 -> 1.6); then d alone beside {a, b, c} wins again (1.6 -> 1.2)
    cost = {ab: 1.0, cd: 1.0, abcd: 1.6, abc: 0.8, 0b1000: 0.4, 0b1110: 1.5, 0b1101: 1.5, 0b1011: 1.5, 0b0001: 0.5}
    out = local_search((ab, cd), _fake_scorer(cost), 3, margin=0.01, max_candidates=20, rounds=5)
    assert out.partition == (abcd,)  # merges only: stuck at one group
    scorer = _fake_scorer(cost)
    out = local_search((ab, cd), scorer, 3, margin=0.01, max_candidates=20, rounds=5, splits=True)
    assert out.partition == (abc, 0b1000) and math.isclose(out.val_loss, 1.2)
    # round 1 merges; round 2: no merge, so the four splits of {a, b, c, d}; round 3: the merge back
    # was visited and {a, b, c} is split only into worse partitions
    kinds = [[c[0] for c in r["candidates"]] for r in out.rounds]
    assert kinds[0] == ["merge"] and kinds[1] == ["split"] * 4 and out.rounds[-1]["accepted"] is None
    # with no merge accepted, the search's own groups are never split: nothing more is trained
    scorer = _fake_scorer({ab: 1.0, cd: 1.0, abcd: 2.5})
    out = local_search((ab, cd), scorer, 3, margin=0.01, max_candidates=20, rounds=5, splits=True)
    assert not out.changed and set(scorer.cache) == {(0, ab), (0, cd), (0, abcd)}


def test_a_step_that_does_not_hold_on_a_second_training_is_refused() -> None:
    cost = {1: 1.0, 2: 1.0, 4: 1.0, 0b011: 1.5}  # {a, b} wins the first training by 0.5 ...
    second = {1: 1.0, 2: 1.0, 0b011: 1.99}  # ... and the second by 0.01: under the 1% margin of 3.0
    out = local_search(
        (1, 2, 4), _fake_scorer(cost, second=second), 3, margin=0.01, max_candidates=20, rounds=5, confirm=True
    )
    assert not out.changed and out.rounds[0]["confirmation"]["accepted"] is False
    out = local_search((1, 2, 4), _fake_scorer(cost, second=second), 3, margin=0.01, max_candidates=20, rounds=1)
    assert out.partition == (0b011, 4) and out.rounds[0]["confirmation"] is None


def test_task_weights_enter_the_score() -> None:
    scorer = _fake_scorer({0b11: 2.0}, weights=[3.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    scorer.ensure([0b11])
    assert math.isclose(scorer.score((0b11,)), 3.0 * 1.0 + 1.0 * 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_the_end_is_a_local_optimum_and_never_worse_than_the_start(seed: int) -> None:
    rng = random.Random(seed)
    n, k = 5, 3
    cost = {m: rng.uniform(0.5, 1.5) * m.bit_count() ** 0.8 for m in range(1, 1 << n)}
    start = (0b00011, 0b01100, 0b10000)
    scorer = _fake_scorer(cost)
    out = local_search(start, scorer, k, margin=0.0, max_candidates=1000, rounds=1000, moves=True)
    final = sum(cost[m] for m in out.partition)
    assert math.isclose(out.val_loss, final) and final <= sum(cost[m] for m in start) + 1e-12
    assert all(sum(cost[m] for m in p) >= final - 1e-12 for _, p in neighbours(out.partition, k))
    optimum = best_partition(n, cost, k)[1]
    assert final >= optimum - 1e-9  # a local optimum, at best the global one


def test_search_with_the_local_search_keeps_the_chosen_grouping(tmp_path: Path) -> None:
    binary = [{"name": f"t{i}", "type": "binary"} for i in range(4)]
    strategy = {"_base_": "dmtg-plain", "epochs": 2, "batch_size": 64, "finetune": {"epochs": 1}}
    spec = load_spec(
        planted_doc(tasks=binary, strategy=strategy), ["strategy.local_search={enabled: true, margin: 0.0}"]
    )
    result = run_search(spec, tmp_path / "run", progress=False)
    record = result.metrics["local_search"]
    first = record["rounds"][0]
    assert sorted(map(sorted, first["groups"])) == sorted(map(sorted, record["start"]))
    assert sorted(map(sorted, result.groups)) == sorted(map(sorted, record["groups"]))
    best = min([first["val_loss"], *(c["val_loss"] for c in first["candidates"])])
    assert record["changed"] == (best < first["val_loss"])  # margin 0: any improvement is taken
    assert record["networks_trained"] >= len(first["groups"]) and record["batched_trainings"] >= 1
    val = result.metrics["totals"]["val"]["weighted_loss"]
    if record["final_model"] == "group networks":  # the final model is made of the check's networks
        assert math.isclose(val, record["val_loss"], rel_tol=1e-4)
    else:  # the search's network, kept because it was better on validation
        assert not record["changed"] and val <= record["val_loss"]
    saved = load_model(tmp_path / "run")
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert all(torch.allclose(saved(x)[t], result.model(x)[t]) for t in spec.task_names)
    if record["changed"]:  # each final group sits on a branch one of its tasks had in the search
        probs = result.probabilities
        for group in result.groups:
            searched = {max(range(2), key=lambda k: probs[t][k]) for t in group}
            assert {result.assignment[t] for t in group} <= searched
    last = record["rounds"][-1]
    if last["accepted"] is None:  # the search ended where no neighbour was better
        assert math.isclose(record["val_loss"], last["val_loss"])
        assert all(c["val_loss"] >= last["val_loss"] for c in last["candidates"])


def test_the_search_summary_reports_the_merge_check() -> None:
    from types import SimpleNamespace

    from dmtg_nas.cli import _format_table

    totals = {"val": {"total_loss": 1.0}, "test": {"total_loss": 1.1}}
    rounds = [{"val_loss": 2.0, "candidates": [{"val_loss": 1.8}, {"val_loss": 2.2}], "accepted_kind": "merge"}]
    local = {"start": [["a"], ["b"]], "changed": True, "val_loss": 1.8, "networks_trained": 3, "rounds": rounds}
    result = SimpleNamespace(groups=[["a", "b"]], assignment={"a": 0, "b": 0}, metrics={"totals": totals})
    result.metrics["local_search"] = local
    line = _format_table(result).splitlines()[-1]
    assert line.startswith("merge check: search found a | b; changed to the groups above by merge (")
    assert "-10.0%" in line and "3 group" in line
    result.metrics["local_search"] = {**local, "changed": False}
    assert "kept (best neighbour: validation loss -10.0%)" in _format_table(result)
    result.metrics["local_search"] = {"skipped": "auto: ..."}
    assert "merge check" not in _format_table(result)


def test_the_benchmarks_dmtg_method_counts_the_merge_check() -> None:
    from dmtg_nas.baselines import run_method
    from dmtg_nas.components import load_data

    doc = planted_doc(strategy={"_base_": "dmtg-plain", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 1}})
    spec = load_spec(doc, ["strategy.local_search.enabled=true"])
    data = load_data(spec)
    with_check = run_method("dmtg", spec, data)
    local = with_check.details["local_search"]
    assert with_check.trainings == 1 + local["networks_trained"] and local["networks_trained"] >= 2
    without = run_method("dmtg", load_spec(doc), data)
    assert without.trainings == 1 and "local_search" not in without.details
    assert with_check.decision_seconds >= local["seconds"]


def test_a_grouping_without_trained_group_networks_is_retrained(monkeypatch: pytest.MonkeyPatch) -> None:
    import dmtg_nas.localsearch as ls

    def merge_everything(start: tuple[int, ...], scorer: SubsetScorer, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        return ls.LocalSearchOutcome(start, (sum(start),), 0.0)  # one group, whose network was never trained

    monkeypatch.setattr(ls, "local_search", merge_everything)
    strategy = {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 1}}
    spec = load_spec(planted_doc(strategy=strategy), ["strategy.local_search.enabled=true"])
    result = run_search(spec, progress=False)
    assert result.metrics["local_search"]["final_model"] == "retrained"
    assert result.groups == [spec.task_names] and len(result.model.branches) == 1


def test_finetune_auto_leaves_the_final_model_to_the_merge_checks_group_networks(tmp_path: Path) -> None:
    binary = [{"name": f"t{i}", "type": "binary"} for i in range(4)]
    strategy = {"_base_": "dmtg-plain", "epochs": 2, "batch_size": 64, "finetune": {"epochs": 3}}
    check = "strategy.local_search={enabled: true, margin: 0.0, replicates: 2, moves: false, merge_splits: false}"
    doc = planted_doc(tasks=binary, strategy=strategy)
    auto = run_search(load_spec(doc, [check, "strategy.finetune.enabled=auto"]), tmp_path / "auto", progress=False)
    tuned = run_search(load_spec(doc, [check]), None, progress=False)
    search = auto.metrics["search"]
    assert (search["finetune_epochs"], search["finetune_not_run"].split(":")[0]) == (0, "auto")
    assert [s["stage"] for s in auto.metrics["stages"]] == ["search", "check"]  # no fine-tune stage
    record = auto.metrics["local_search"]
    assert record["final_model"] == "group networks"  # never the supernet's pruned network
    assert auto.metrics["totals"]["val"]["weighted_loss"] <= record["val_loss"] + 1e-6  # each group's best training
    # the check is the same with and without the fine-tune before it (its networks are seeded on their own)
    assert tuned.metrics["search"]["finetune_not_run"] is None and tuned.metrics["search"]["finetune_epochs"] == 3
    assert "finetune" in [s["stage"] for s in tuned.metrics["stages"]]
    assert tuned.metrics["local_search"]["rounds"] == record["rounds"] and tuned.groups == auto.groups
    if tuned.metrics["local_search"]["final_model"] == "group networks":
        assert tuned.metrics["totals"] == auto.metrics["totals"]
    # without the check, auto fine-tunes
    alone = run_search(load_spec(doc, ["strategy.finetune.enabled=auto"]), None, progress=False)
    assert alone.metrics["search"]["finetune_epochs"] == 3 and alone.metrics["search"]["finetune_not_run"] is None
    off = run_search(load_spec(doc, ["strategy.finetune.enabled=false"]), None, progress=False)
    assert (off.metrics["search"]["finetune_epochs"], off.metrics["search"]["finetune_not_run"]) == (
        0,
        "finetune.enabled: false",
    )
    assert "finetune" not in [s["stage"] for s in off.metrics["stages"]]  # nothing trained after the search


def test_without_a_fine_tune_a_kept_grouping_without_group_networks_is_retrained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dmtg_nas.localsearch as ls

    def keep(start: tuple[int, ...], scorer: SubsetScorer, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        return ls.LocalSearchOutcome(start, start, 0.0)  # the start kept, its networks never trained

    monkeypatch.setattr(ls, "local_search", keep)
    strategy = {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 1, "enabled": "auto"}}
    spec = load_spec(planted_doc(strategy=strategy), ["strategy.local_search.enabled=true"])
    result = run_search(spec, progress=False)
    # not the supernet's pruned network as the search left it: the grouping trained with the whole budget
    assert result.metrics["local_search"]["final_model"] == "retrained"
    assert sorted(map(sorted, result.model.groups)) == sorted(map(sorted, result.groups))


def test_one_group_has_nothing_to_merge() -> None:
    strategy = {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 0}}
    spec = load_spec(planted_doc(groups=1, strategy=strategy), ["strategy.local_search.enabled=true"])
    result = run_search(spec, progress=False)
    assert result.metrics["local_search"] == {"skipped": "one group: nothing to merge"}
    assert result.groups == [spec.task_names]


def test_replicates_are_averaged_and_the_confirmation_uses_another_training() -> None:
    """With two scoring replicates a group's score is the mean of both trainings: a merge that wins
    one training by luck and loses the other is refused; confirmation trains a third."""
    per_replicate = {0: {0b011: 1.5}, 1: {0b011: 2.7}, 2: {0b011: 1.0}}  # singles cost 1.0 each
    seen: list[int] = []

    def train(masks: Sequence[int], replicate: int) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
        seen.append(replicate)
        out = {}
        for m in masks:
            per = per_replicate[replicate].get(m, 1.0 * m.bit_count()) / m.bit_count()
            rows = {NAMES[i]: {"loss": per} for i in members(m)}
            out[m] = {"val": rows, "test": rows}
        return out

    one = SubsetScorer(train, NAMES, [1.0] * 6)
    assert local_search((1, 2, 4), one, 3, margin=0.0, max_candidates=20, rounds=1).partition == (0b011, 4)
    two = SubsetScorer(train, NAMES, [1.0] * 6, replicates=2)
    out = local_search((1, 2, 4), two, 3, margin=0.0, max_candidates=20, rounds=1)
    assert not out.changed  # mean 2.1 for {a, b} against 2.0 apart
    two.ensure([0b011])
    assert math.isclose(two.group_loss(0b011), (1.5 + 2.7) / 2) and math.isclose(
        two.group_loss(0b011, replicate=0), 1.5
    )
    per_replicate[1][0b011] = 1.9  # mean 1.7: accepted, then confirmed on replicate 2
    seen.clear()
    out = local_search(
        (1, 2, 4), SubsetScorer(train, NAMES, [1.0] * 6, replicates=2), 3, margin=0.0, max_candidates=20, rounds=1,
        confirm=True,
    )  # fmt: skip
    assert out.partition == (0b011, 4) and sorted(set(seen)) == [0, 1, 2]
    assert out.rounds[0]["confirmation"]["accepted"] is True


def test_the_final_networks_are_each_groups_best_training_on_validation() -> None:
    # three trainings per group network; the final model takes, per group, the lowest validation loss
    val = {0: {0b011: 1.6, 0b100: 0.9}, 1: {0b011: 1.2, 0b100: 1.1}, 2: {0b011: 1.4, 0b100: 0.7}}

    def train(masks: Sequence[int], replicate: int) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
        out = {}
        for m in masks:
            per = val[replicate][m] / m.bit_count()
            rows = {NAMES[i]: {"loss": per} for i in members(m)}
            out[m] = {"val": rows, "test": rows}
            scorer.networks[(replicate, m)] = f"net {replicate} {m}"  # kept as the real training keeps them
        return out

    scorer = SubsetScorer(train, NAMES, [1.0] * 6, replicates=3)
    assert scorer.best_networks((0b011, 0b100)) is None  # nothing trained yet
    scorer.ensure([0b011, 0b100])
    assert scorer.best_replicate(0b011) == 1 and scorer.best_replicate(0b100) == 2
    networks, total = scorer.best_networks((0b011, 0b100))  # type: ignore[misc]
    assert networks == {0b011: "net 1 3", 0b100: "net 2 4"}
    assert math.isclose(total, 1.2 + 0.7)
    assert math.isclose(scorer.score((0b011, 0b100)), (1.6 + 1.2 + 1.4 + 0.9 + 1.1 + 0.7) / 3)
    del scorer.networks[(1, 0b011)]  # a training whose network was not kept is not chosen
    assert scorer.best_replicate(0b011) == 2


def test_search_final_model_takes_the_best_of_the_checks_trainings(tmp_path: Path) -> None:
    binary = [{"name": f"t{i}", "type": "binary"} for i in range(4)]
    strategy = {"_base_": "dmtg-plain", "epochs": 2, "batch_size": 64, "finetune": {"epochs": 0}}
    spec = load_spec(
        planted_doc(tasks=binary, strategy=strategy),
        ["strategy.local_search={enabled: true, margin: 0.0, replicates: 3, moves: false, merge_splits: false}"],
    )
    result = run_search(spec, tmp_path / "run", progress=False)
    record = result.metrics["local_search"]
    val = result.metrics["totals"]["val"]["weighted_loss"]
    # the check's score is the mean of three trainings; the final model's groups are each the best
    # of their three on validation (or the search's network, when that is better still)
    assert val <= record["val_loss"] + 1e-6
    if record["final_model"] == "group networks":
        assert val < record["val_loss"] - 1e-6  # three trainings differ: the best beats their mean


def test_fast_preset_search_fine_tunes_the_searched_network_without_a_check() -> None:
    strategy = {"_base_": "dmtg-fast", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 2}}
    strategy["warmup"] = {"min_steps": 0, "epochs": 2}
    result = run_search(load_spec(planted_doc(strategy=strategy)), None, progress=False)
    assert "local_search" not in result.metrics  # no merge check: the searched network is the model
    assert (result.metrics["search"]["epochs"], result.metrics["search"]["finetune_epochs"]) == (1, 2)
    assert result.metrics["warmup"]["method"] == "attribution"
    assert sorted(map(sorted, result.model.groups)) == sorted(map(sorted, result.groups))  # the pruned network


def test_swaps_exchange_two_tasks_and_keep_the_group_sizes() -> None:
    ab, cd, e = (*masks_of([["a", "b"], ["c", "d"]], NAMES), 1 << 4)
    found = neighbours((ab, cd), 2, moves=False, swaps=True)
    # a<->c and a<->d (b<->d and b<->c reach the same two partitions), after the merge
    assert found == [
        ("merge", (ab | cd,)),
        ("swap", masks_of([["b", "c"], ["a", "d"]], NAMES)),
        ("swap", masks_of([["b", "d"], ["a", "c"]], NAMES)),
    ]
    assert all(sorted(m.bit_count() for m in p) == [2, 2] for kind, p in found if kind == "swap")
    assert not [p for kind, p in neighbours((e, 1 << 5), 2, swaps=True) if kind == "swap"]  # two single tasks
    assert not [k for k, _ in neighbours((ab, cd), 2, moves=True) if k == "swap"]  # off by default
    # ranked by the affinity the two tasks gain: a reads like d, b like c
    affinity = [[1.0 if {i, j} in ({0, 3}, {1, 2}) or i == j else 0.0 for j in range(6)] for i in range(6)]
    ranked = [p for kind, p in neighbours((ab, cd), 2, affinity, moves=False, swaps=True) if kind == "swap"]
    assert ranked[0] == masks_of([["b", "c"], ["a", "d"]], NAMES)


def test_a_round_from_three_pairs_takes_swaps_in_turn_within_its_twelve_candidates() -> None:
    """Three pairs, K = 3 (docs/method/merge-check.md): the 12 candidates of a round are 3 merges and
    9 merge-splits without swaps (a move there is a merge-split), 3 merges, 5 merge-splits and 4
    swaps with them: 21 and 23 distinct group networks with the current groups."""
    start = masks_of([["a", "b"], ["c", "d"], ["e", "f"]], NAMES)
    for swaps, kinds, networks in (
        (False, {"merge": 3, "merge-split": 9}, 21),
        (True, {"merge": 3, "merge-split": 5, "swap": 4}, 23),
    ):
        found = neighbours(start, 3, moves=True, merge_splits=True, swaps=swaps)[:12]
        assert Counter(kind for kind, _ in found) == kinds
        assert len(set(start).union(*(set(p) for _, p in found))) == networks


def test_a_swap_undoes_two_tasks_exchanged_where_single_moves_stop() -> None:
    """Three pairs with two tasks exchanged between two of them ({a,c}{b,d}{e,f}, K = 3 full): every
    move leaves a group of three and a single task, worse than the start; the swap back wins."""
    pair = {m: 2.0 for m in masks_of([["a", "b"], ["c", "d"], ["e", "f"]], NAMES)}
    cost = {**pair, **{m: 3.0 for m in masks_of([["a", "c"], ["b", "d"]], NAMES)}}
    start = masks_of([["a", "c"], ["b", "d"], ["e", "f"]], NAMES)  # 3 + 3 + 2 = 8; the pairs: 6
    kwargs = {"margin": 0.01, "max_candidates": 12, "rounds": 4, "moves": True, "merge_splits": True}
    assert not local_search(start, _fake_scorer(cost), 3, **kwargs).changed  # type: ignore[arg-type]
    out = local_search(start, _fake_scorer(cost), 3, swaps=True, **kwargs)  # type: ignore[arg-type]
    assert out.partition == masks_of([["a", "b"], ["c", "d"], ["e", "f"]], NAMES) and math.isclose(out.val_loss, 6.0)
    assert out.to_dict(NAMES)["rounds"][0]["accepted_kind"] == "swap"


def _round_of_twelve(start: tuple[int, ...], scorer: SubsetScorer, seconds_left: Any = None) -> Any:
    """One round of the check's neighbour kinds (12 candidates) from ``start``, margin 0."""
    return local_search(
        start,
        scorer,
        3,
        margin=0.0,
        max_candidates=12,
        rounds=1,
        moves=True,
        merge_splits=True,
        swaps=True,
        seconds_left=seconds_left,
    )


def test_a_time_budget_trains_the_start_then_only_the_candidates_that_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import dmtg_nas.localsearch as ls

    clock = [0.0]  # a fake clock, advanced by the fake trainings
    monkeypatch.setattr(ls.time, "perf_counter", lambda: clock[0])
    train = _fake_scorer().train
    calls: list[int] = []  # networks per training call

    def clocked(fixed: float, each: float) -> SubsetScorer:
        """A scorer whose training calls cost ``fixed`` + ``each`` seconds a network, from a clock at 0."""

        def timed(masks: Sequence[int], replicate: int) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
            calls.append(len(masks))
            clock[0] += fixed + each * len(masks)
            return train(masks, replicate)

        clock[0] = 0.0
        calls.clear()
        return SubsetScorer(timed, NAMES, [1.0] * 6)

    start = masks_of([["a", "b"], ["c", "d"], ["e", "f"]], NAMES)
    free = _round_of_twelve(start, clocked(0.0, 1.0))
    assert len(free.rounds[0]["candidates"]) == 12 and free.stopped is None
    order = [p for _, p, _ in free.rounds[0]["candidates"]]
    # one second a network, 6 seconds after the start's 3 networks: one candidate's missing networks
    # at a time, in order, while they fit
    scorer = clocked(0.0, 1.0)
    out = _round_of_twelve(start, scorer, lambda: 9.0 - clock[0])
    tried = [p for _, p, _ in out.rounds[0]["candidates"]]
    assert tried == order[: len(tried)] and 0 < len(tried) < 12
    new = {m for p in tried for m in p} - set(start)
    assert scorer.trained == 3 + len(new) and scorer.trained <= 9  # the start, then what fitted
    assert len(new | (set(order[len(tried)]) - set(start))) + 3 > 9  # the next candidate would not have fitted
    assert out.stopped == "budget" and out.batches == 2  # the start alone, then the candidates
    # a call with a fixed cost (0.5 s, then 0.25 s a network): the first call's estimate is high, the
    # next calls fit more once a larger call has shown the cost per network falling
    scorer = clocked(0.5, 0.25)
    out = _round_of_twelve(start, scorer, lambda: 6.0 - clock[0])
    assert calls[0] == 3 and len(calls) >= 3  # the start, then candidates in several calls
    assert calls[1] <= 3 * 4.75 / 1.25 and clock[0] <= 6.0 + 0.5  # over by one call's fixed cost at most
    tried = [p for _, p, _ in out.rounds[0]["candidates"]]
    assert tried == order[: len(tried)]
    assert scorer.trained == 3 + sum(calls[1:]) == 3 + len({m for p in tried for m in p} - set(start))
    # no time left: the start's networks still train (they are the final model), no candidate is tried
    scorer = clocked(0.0, 1.0)
    out = local_search(start, scorer, 3, margin=0.0, max_candidates=12, rounds=3, moves=True, seconds_left=lambda: -1.0)
    assert out.rounds == [] and out.stopped == "budget" and not out.changed
    assert {m for _, m in scorer.cache} == set(start) and out.to_dict(NAMES)["stopped"] == "budget"


def test_a_run_with_a_time_budget_records_it_and_says_so(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from dmtg_nas.cli import _format_table
    from dmtg_nas.components import load_data
    from dmtg_nas.pipeline.check import all_task_seconds

    binary = [{"name": f"t{i}", "type": "binary"} for i in range(4)]
    strategy = {"_base_": "dmtg-plain", "epochs": 2, "batch_size": 64, "finetune": {"epochs": 1}}
    doc = planted_doc(tasks=binary, strategy=strategy)
    spec = load_spec(doc, ["strategy.local_search={enabled: true, margin: 0.0, budget: 0.001}"])
    data = load_data(spec)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    probe = all_task_seconds(spec, data)
    assert probe > 0 and torch.equal(torch.random.get_rng_state(), before)  # the probe draws nothing
    result = run_search(spec, tmp_path / "run", progress=False, data=data)
    record = result.metrics["local_search"]
    assert record["stopped"] == "budget" and record["rounds"] == [] and not record["changed"]
    assert record["budget"]["run_seconds"] == pytest.approx(0.001 * 2 * record["budget"]["all_task_seconds"], rel=2e-3)
    assert record["networks_trained"] == len(record["start"]) and record["final_model"] == "group networks"
    line = _format_table(SimpleNamespace(groups=result.groups, assignment=result.assignment, metrics=result.metrics))
    assert "no neighbour fitted in the time budget (stopped by local_search.budget)" in line
    # the same run without a budget tries neighbours and records no stop
    free = run_search(
        load_spec(doc, ["strategy.local_search={enabled: true, margin: 0.0}"]), None, progress=False, data=data
    )
    assert free.metrics["local_search"]["rounds"] and free.metrics["local_search"]["stopped"] is None
    with pytest.raises(Exception, match="budget"):
        load_spec(doc, ["strategy.local_search.budget=0"])


def test_the_all_task_probe_stops_after_its_steps_and_scales_them_to_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dmtg_nas.components import load_data
    from dmtg_nas.data import make_loader
    from dmtg_nas.pipeline import check

    clocks = []
    real = check._StepClock

    class Recorded(real):  # type: ignore[misc, valid-type]
        def __init__(self, warmup: int, steps: int) -> None:
            super().__init__(warmup, steps)
            clocks.append(self)

    monkeypatch.setattr(check, "_StepClock", Recorded)
    strategy = {"_base_": "dmtg-plain", "epochs": 3, "batch_size": 4, "finetune": {"epochs": 2}}
    spec = load_spec(planted_doc(strategy=strategy))
    data = load_data(spec)
    per_epoch = len(make_loader(data.train, 4, shuffle=False, shard=False))
    assert per_epoch > 40  # one epoch holds more steps than the probe times
    seconds = check.all_task_seconds(spec, data, steps=8, warmup=2)
    (clock,) = clocks
    assert len(clock.ends) == 2 + 8 + 1  # stopped in its first epoch, right after its steps
    assert seconds == pytest.approx(clock.per_step * per_epoch * 5)
    gaps = [b - a for a, b in zip(clock.ends[2:], clock.ends[3:])]
    assert min(gaps) <= clock.per_step <= max(gaps)
