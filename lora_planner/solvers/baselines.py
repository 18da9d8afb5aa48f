"""Baselines every comparison includes: uniform (FedIT), hetlora, random (FedRA-style), greedy."""
from __future__ import annotations

import random

import numpy as np

from .problem import Problem, Solution


def _fits(problem: Problem, a: dict, cap: int) -> bool:
    return bool(a) and bool(np.all(problem.cost(a) <= cap))


def _all_layers(problem: Problem, rank: int) -> dict:
    return {(l, m): rank for l in range(problem.num_layers) for m in problem.targets}


def largest_uniform_rank(problem: Problem, cap: int) -> int | None:
    for r in sorted(problem.ranks, reverse=True):
        if _fits(problem, _all_layers(problem, r), cap):
            return r
    return None


def solve_hetlora(problem: Problem, capacities: list[int]) -> list[Solution]:
    """All layers and targets; each client the largest rank that fits (HetLoRA's setting)."""
    out = []
    for cap in capacities:
        r = largest_uniform_rank(problem, cap)
        a = _all_layers(problem, r) if r else {}
        out.append(Solution(a, problem.objective(a), "optimal" if a else "dropped", "hetlora"))
    return out


def solve_uniform(problem: Problem, capacities: list[int]) -> list[Solution]:
    """One rank everywhere: the largest that fits the smallest client that can take part (FedIT)."""
    per = [largest_uniform_rank(problem, c) for c in capacities]
    fitting = [r for r in per if r]
    r = min(fitting) if fitting else None
    out = []
    for own in per:
        a = _all_layers(problem, r) if (r and own) else {}
        out.append(Solution(a, problem.objective(a), "optimal" if a else "dropped", "uniform"))
    return out


def solve_random(problem: Problem, capacities: list[int], seed: int = 0) -> list[Solution]:
    """Random layers (all targets, middle rank) added while they fit (FedRA-style)."""
    rank = sorted(problem.ranks)[len(problem.ranks) // 2]
    out = []
    for i, cap in enumerate(capacities):
        rng = random.Random(seed * 100_003 + i)
        layers = list(range(problem.num_layers))
        rng.shuffle(layers)
        a: dict = {}
        for l in layers:
            trial = {**a, **{(l, m): rank for m in problem.targets}}
            if _fits(problem, trial, cap):
                a = trial
        out.append(Solution(a, problem.objective(a), "optimal" if a else "dropped", "random"))
    return out


def solve_greedy(problem: Problem, capacities: list[int]) -> list[Solution]:
    """Repeatedly take the rank step with the best value gained per unit of memory that fits."""
    out = []
    ranks = sorted(problem.ranks)
    for cap in capacities:
        a: dict = {}
        cost_now = None
        while True:
            best, best_ratio = None, -1.0
            for l in range(problem.num_layers):
                for m in problem.targets:
                    cur = a.get((l, m))
                    nxt = ranks[0] if cur is None else next((r for r in ranks if r > cur), None)
                    if nxt is None:
                        continue
                    trial = {**a, (l, m): nxt}
                    c = problem.cost(trial)
                    if np.any(c > cap):
                        continue
                    dv = problem.objective(trial) - problem.objective(a)
                    dc = float(c.max() - (cost_now.max() if cost_now is not None else 0)) + 1.0
                    if dv / dc > best_ratio:
                        best, best_ratio, best_cost = trial, dv / dc, c
            if best is None:
                break
            a, cost_now = best, best_cost
        out.append(Solution(a, problem.objective(a), "optimal" if a else "dropped", "greedy"))
    return out
