"""Set partitions of tasks: enumeration, counting and exact optimal selection.

The baselines choose groups from per-subset scores. When the score of a partition is a sum of
per-group costs (HOA's partition rule: the summed validation losses of each group's network; TAG:
the negated affinity inside each group), the best partition into at most K groups is found exactly
by dynamic programming over subsets (``O(3^N K)``), far cheaper than enumerating candidate sets.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = [
    "set_partitions",
    "count_partitions",
    "best_partition",
    "random_partition",
    "best_cover",
    "mask_of",
    "members",
]


def mask_of(items: Sequence[int]) -> int:
    """Bit mask of item indices."""
    mask = 0
    for i in items:
        mask |= 1 << i
    return mask


def members(mask: int) -> list[int]:
    """Item indices in a bit mask, ascending."""
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def set_partitions(n: int, max_groups: int | None = None) -> Iterator[list[list[int]]]:
    """Every partition of ``range(n)`` into at most ``max_groups`` non-empty blocks (each once)."""
    limit = n if max_groups is None else min(max_groups, n)

    def grow(i: int, blocks: list[list[int]]) -> Iterator[list[list[int]]]:
        if i == n:
            yield [list(b) for b in blocks]
            return
        for b in blocks:
            b.append(i)
            yield from grow(i + 1, blocks)
            b.pop()
        if len(blocks) < limit:
            blocks.append([i])
            yield from grow(i + 1, blocks)
            blocks.pop()

    if n == 0:
        yield []
        return
    yield from grow(0, [])


def count_partitions(n: int, max_groups: int | None = None) -> int:
    """Number of partitions of n items into at most ``max_groups`` blocks (sum of Stirling numbers)."""
    limit = n if max_groups is None else min(max_groups, n)
    # S(n, k) by the recurrence S(n, k) = k S(n-1, k) + S(n-1, k-1)
    row = [1] + [0] * limit
    for _ in range(n):
        new = [0] * (limit + 1)
        for k in range(1, limit + 1):
            new[k] = k * row[k] + row[k - 1]
        row = new
    return sum(row[1:]) if n else 1


def best_partition(
    n: int, cost: Callable[[int], float] | Mapping[int, float], max_groups: int
) -> tuple[list[list[int]], float]:
    """The partition of ``range(n)`` into at most ``max_groups`` blocks minimising the sum of block
    costs, found exactly by dynamic programming over subsets.

    Args:
        n: number of items (tasks); practical up to about 14.
        cost: block cost by bit mask (a callable or a mapping over every non-empty mask).
        max_groups: K.

    Returns:
        (blocks as sorted index lists, total cost).
    """
    if n == 0:
        return [], 0.0
    k_max = max(1, min(max_groups, n))
    get = cost.__getitem__ if isinstance(cost, Mapping) else cost
    full = (1 << n) - 1
    block_cost = [0.0] * (full + 1)
    for mask in range(1, full + 1):
        block_cost[mask] = float(get(mask))
    inf = math.inf
    # best[j][mask]: min cost of partitioning mask into at most j blocks; choice[j][mask]: first block
    best = [[inf] * (full + 1) for _ in range(k_max + 1)]
    choice = [[0] * (full + 1) for _ in range(k_max + 1)]
    for j in range(k_max + 1):
        best[j][0] = 0.0
    for j in range(1, k_max + 1):
        prev = best[j - 1]
        cur, pick = best[j], choice[j]
        for mask in range(1, full + 1):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            value, arg = inf, 0
            while True:  # every block containing the lowest item of mask
                block = sub | low
                v = block_cost[block] + prev[mask ^ block]
                if v < value:
                    value, arg = v, block
                if sub == 0:
                    break
                sub = (sub - 1) & rest
            cur[mask], pick[mask] = value, arg
    blocks, mask, j = [], full, k_max
    while mask:
        block = choice[j][mask]
        blocks.append(members(block))
        mask ^= block
        j -= 1
    return sorted(blocks), best[k_max][full]


def random_partition(n: int, groups: int, rng: random.Random) -> list[list[int]]:
    """A uniformly random partition of ``range(n)`` into exactly ``min(groups, n)`` non-empty blocks."""
    k = max(1, min(groups, n))
    while True:
        labels = [rng.randrange(k) for _ in range(n)]
        if len(set(labels)) == k:
            return sorted([[i for i in range(n) if labels[i] == b] for b in range(k)])


def best_cover(
    n: int, task_loss: Mapping[int, Mapping[int, float]], max_sets: int, *, exact_limit: int = 2_000_000
) -> tuple[list[list[int]], float, bool]:
    """HOA's own rule: choose at most ``max_sets`` task subsets (networks) covering every task, each
    task scored by its best chosen network: minimise ``sum_t min_{S chosen, t in S} loss_t(S)``.

    Args:
        task_loss: ``{subset mask: {task: loss of task in that subset's network}}``.
        max_sets: K, the number of networks allowed.
        exact_limit: above this many candidate combinations, a greedy selection with single-swap
            improvement is used instead of exhaustive search.

    Returns:
        (chosen subsets as index lists, total loss, whether the search was exact).
    """
    subsets = sorted(task_loss)
    k = max(1, min(max_sets, len(subsets)))
    full = (1 << n) - 1

    def score(combo: Sequence[int]) -> float:
        union = 0
        for s in combo:
            union |= s
        if union != full:
            return math.inf
        return sum(min(task_loss[s][t] for s in combo if s >> t & 1) for t in range(n))

    total_combos = sum(math.comb(len(subsets), r) for r in range(1, k + 1))
    if total_combos <= exact_limit:
        best_combo: Sequence[int] = ()
        best_value = math.inf
        for r in range(1, k + 1):
            for combo in itertools.combinations(subsets, r):
                value = score(combo)
                if value < best_value:
                    best_combo, best_value = combo, value
        return sorted(members(s) for s in best_combo), best_value, True
    # greedy: add the subset that lowers the score most (uncovered tasks count as their worst loss)
    worst = {t: max(task_loss[s][t] for s in subsets if s >> t & 1) for t in range(n)}

    def soft(combo: Sequence[int]) -> float:
        return sum(min([task_loss[s][t] for s in combo if s >> t & 1] or [worst[t] * 10]) for t in range(n))

    chosen: list[int] = []
    for _ in range(k):
        chosen.append(min((s for s in subsets if s not in chosen), key=lambda s: soft([*chosen, s])))
    improved = True
    while improved:
        improved = False
        for i in range(len(chosen)):
            for s in subsets:
                if s in chosen:
                    continue
                trial = [*chosen[:i], s, *chosen[i + 1 :]]
                if soft(trial) < soft(chosen) - 1e-12:
                    chosen, improved = trial, True
    return sorted(members(s) for s in chosen), score(chosen), False
