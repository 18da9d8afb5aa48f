"""Our exact solver: enumerate the lowest trained block, exact multiple-choice knapsack above it.

One dynamic programme serves every client of a class (same profile, targets, ranks, values):
  best[l][c] = the most value layers l..L-1 can add within c units (layers above the lowest),
built from the top block down; then for each client and each candidate lowest block `low`,
  value = max over non-empty options k of v[low,k] + best[low+1][cap - base(low) - cost_low(k)].
Exact for the integer problem of ``problem.py`` when a single phase can bind (checked per
instance); when another phase's limit cuts the DP's optimum, that client is re-solved with
CP-SAT, the exact reference model, and the result says so.
"""
from __future__ import annotations

import numpy as np

from .problem import Problem, Solution

NEG = -1e18


class KnapsackTables:
    """The shared DP for one Problem, on the phase with the largest fixed cost (the usual binder)."""

    def __init__(self, problem: Problem, max_capacity: int, tabulate: bool = True):
        self.p = problem
        self.primary = int(np.argmax(problem.fixed + problem.num_layers * problem.path))
        self.opts = problem.options()  # [K, M]
        self.cost_up = problem.option_costs(self.opts, lowest=False)  # [P, K]
        self.cost_top_up = problem.option_costs(self.opts, lowest=False, top=True)  # the top block, above the lowest
        self.cost_low = problem.option_costs(self.opts, lowest=True)
        self.cost_top = problem.option_costs(self.opts, lowest=True, top=True)
        self.values = problem.option_values(self.opts)  # [L, K]
        L, C = problem.num_layers, max(int(max_capacity), 0)
        self.C = C
        best = np.zeros(C + 1)
        self.best = [None] * (L + 1)
        self.choice = [None] * L
        self.best[L] = best
        for layer in range(L - 1, 0, -1):  # layer 0 is never "above the lowest"
            cost = self.up(layer)[self.primary]
            new = best.copy()
            arg = np.full(C + 1, -1, dtype=np.int32)
            for k in range(len(cost)):
                c = int(cost[k])
                if c > C:
                    continue
                cand = np.full(C + 1, NEG)
                cand[c:] = best[: C + 1 - c] + self.values[layer, k]
                better = cand > new + 1e-12
                new = np.where(better, cand, new)
                arg = np.where(better, k, arg)
            best = new
            self.best[layer] = best
            self.choice[layer] = arg
        self.tabulated = tabulate
        if not tabulate:
            return
        # For every capacity at once: the best lowest block and its option (argmax over both).
        self.top_value = np.full(C + 1, NEG)
        self.top_pick = np.full((C + 1, 2), -1, dtype=np.int64)
        caps = np.arange(C + 1)
        for low in range(L):
            low_cost = (self.cost_top if low == L - 1 else self.cost_low)[self.primary]
            base = int(problem.base(low)[self.primary])
            above = self.best[low + 1]
            for k in range(len(low_cost)):
                room = caps - base - int(low_cost[k])
                ok = room >= 0
                val = np.where(ok, self.values[low, k] + above[np.clip(room, 0, None)], NEG)
                better = val > self.top_value + 1e-12
                self.top_value = np.where(better, val, self.top_value)
                self.top_pick[better] = (low, k)

    def up(self, layer: int) -> np.ndarray:
        """[P, K] option costs of a block above the lowest one."""
        return self.cost_top_up if layer == self.p.num_layers - 1 else self.cost_up

    def solve(self, capacity: int) -> Solution:
        """Exact optimum for one client with ``capacity`` units (primary phase)."""
        p = self.p
        cap = min(int(capacity), self.C)
        pick = self._pick(cap) if cap >= 0 else None
        if pick is None:
            return Solution({}, 0.0, "infeasible", "knapsack")
        low, k = pick
        low_cost = self.cost_top if low == p.num_layers - 1 else self.cost_low
        cost = p.base(low) + low_cost[:, k]  # [P] units, every phase
        room = cap - int(p.base(low)[self.primary]) - int(low_cost[self.primary, k])
        assignment = self._entries(low, k)
        value = float(self.values[low, k])
        for layer in range(low + 1, p.num_layers):
            kk = int(self.choice[layer][room])
            if kk >= 0:
                assignment.update(self._entries(layer, kk))
                room -= int(self.up(layer)[self.primary][kk])
                cost = cost + self.up(layer)[:, kk]
                value += float(self.values[layer, kk])
        return Solution(assignment, value, "optimal", "knapsack", cost=cost)

    def _pick(self, cap: int) -> tuple[int, int] | None:
        """The best (lowest block, its option) for this capacity: a table look-up, or a scan."""
        if self.tabulated:
            low, k = (int(x) for x in self.top_pick[cap])
            return None if low < 0 else (low, k)
        p, best, pick = self.p, NEG, None
        for low in range(p.num_layers):
            low_cost = (self.cost_top if low == p.num_layers - 1 else self.cost_low)[self.primary]
            room = cap - int(p.base(low)[self.primary]) - low_cost  # [K]
            val = np.where(room >= 0, self.values[low] + self.best[low + 1][np.clip(room, 0, None)], NEG)
            k = int(np.argmax(val))
            if val[k] > best + 1e-12:
                best, pick = float(val[k]), (low, k)
        return pick if best > NEG / 2 else None

    def _entries(self, layer: int, k: int) -> dict[tuple[int, str], int]:
        return {(layer, self.p.targets[m]): self.p.ranks[int(ri)] for m, ri in enumerate(self.opts[k]) if ri >= 0}


def solve_knapsack(problem: Problem, capacities: list[int]) -> list[Solution]:
    """Exact plans for many clients of one class (capacities in units)."""
    if not capacities:
        return []
    if problem.ckpt is not None:
        # Under gradient checkpointing the peak is a maximum over blocks, not a knapsack's sum: each client
        # is solved exactly by CP-SAT (solvers/ckpt.py), and the result says so.
        from .cpsat import solve_cpsat_one

        out = [solve_cpsat_one(problem, cap) for cap in capacities]
        for sol in out:
            sol.solver = "knapsack->cpsat"
        return out
    tables = KnapsackTables(problem, max(capacities), tabulate=len(capacities) > 64)
    out = []
    for cap in capacities:
        sol = tables.solve(cap)
        if sol.status == "optimal" and np.any(sol.cost > cap):
            # Another phase binds: the DP on the primary phase is not the whole problem here.
            from .cpsat import solve_cpsat_one

            sol = solve_cpsat_one(problem, cap)
            sol.solver = "knapsack->cpsat"
        out.append(sol)
    return out
