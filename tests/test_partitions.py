"""Partition enumeration, counting, the exact DP against brute force, HOA's cover rule."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from dmtg_nas.partitions import best_cover, best_partition, count_partitions, members, random_partition, set_partitions

# Stirling numbers of the second kind S(n, k) summed over k <= K, from the literature
BELL = [1, 1, 2, 5, 15, 52, 203, 877, 4140]


@pytest.mark.parametrize("n", range(0, 9))
def test_enumeration_counts_match_bell_numbers(n: int) -> None:
    parts = list(set_partitions(n))
    assert len(parts) == BELL[n] == count_partitions(n)
    canon = {tuple(tuple(b) for b in sorted(p)) for p in parts}
    assert len(canon) == len(parts)  # no duplicates


def test_count_with_group_limit() -> None:
    assert count_partitions(9, 4) == 1 + 255 + 3025 + 7770  # S(9,1..4)
    assert len(list(set_partitions(6, 2))) == count_partitions(6, 2) == 1 + 31


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_dp_equals_brute_force(seed: int, k: int) -> None:
    rng = random.Random(seed)
    n = 6
    cost = {m: rng.uniform(-1, 2) * len(members(m)) ** rng.choice([0.5, 1, 1.5]) for m in range(1, 1 << n)}
    blocks, value = best_partition(n, cost, k)
    brute = min(sum(cost[sum(1 << i for i in b)] for b in p) for p in set_partitions(n, k))
    assert value == pytest.approx(brute)
    assert len(blocks) <= k
    assert sorted(i for b in blocks for i in b) == list(range(n))
    assert sum(cost[sum(1 << i for i in b)] for b in blocks) == pytest.approx(value)


def test_random_partition_is_a_partition_into_exactly_k() -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        p = random_partition(5, 3, rng)
        assert len(p) == 3 and all(p) and sorted(i for b in p for i in b) == list(range(5))
        seen.add(tuple(map(tuple, p)))
    assert len(seen) == 25  # S(5, 3): every partition into 3 blocks appears


def test_cover_rule_exact_matches_brute_force_and_allows_overlap() -> None:
    n = 4
    rng = random.Random(3)
    loss = {m: {i: rng.uniform(0.5, 1.5) for i in members(m)} for m in range(1, 1 << n)}
    chosen, value, exact = best_cover(n, loss, 2)
    assert exact
    brute = math.inf
    for r in (1, 2):
        for combo in itertools.combinations(loss, r):
            union = 0
            for s in combo:
                union |= s
            if union == (1 << n) - 1:
                brute = min(brute, sum(min(loss[s][t] for s in combo if s >> t & 1) for t in range(n)))
    assert value == pytest.approx(brute)
    assert 1 <= len(chosen) <= 2


def test_cover_greedy_fallback_is_a_valid_cover() -> None:
    n = 5
    rng = random.Random(1)
    loss = {m: {i: rng.uniform(0.5, 1.5) for i in members(m)} for m in range(1, 1 << n)}
    chosen, value, exact = best_cover(n, loss, 3, exact_limit=10)
    assert not exact and len(chosen) <= 3
    assert sorted({i for c in chosen for i in c}) == list(range(n))
    assert math.isfinite(value)
