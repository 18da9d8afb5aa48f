"""The planning problem of one client class, in integer byte units, shared by every exact solver.

Every memory term of the profile (DESIGN §4) is evaluated at the asked shape and rounded *up* to
whole units; budgets are rounded *down*. A plan that fits the integer problem therefore fits the
real memory model, and knapsack / cpsat / milp solve the very same instance (so their optima are
comparable to the last unit).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LoraPlannerError
from ..memory import evaluate
from ..profile import ModelProfile
from ..value import importance_matrix, rank_utility

MAX_OPTIONS = 5000
DP_CELLS = 2**16  # default unit: the largest budget split into this many cells


@dataclass
class Problem:
    profile: ModelProfile
    targets: tuple[str, ...]
    ranks: tuple[int, ...]
    unit: int  # bytes per unit
    phases: tuple[str, ...]  # phases that can bind (dominated ones dropped)
    fixed: np.ndarray  # [P]
    path: np.ndarray  # [P]
    low_sets: np.ndarray  # [J, M] bool: group subsets of the targets that carry a lowest-block term
    low_branch: np.ndarray  # [J] the block branch of each subset: per branch the max term counts, branches add up
    path_low: np.ndarray  # [P, J] traversal of the lowest block down to subset j
    top_low: np.ndarray  # [P, J] the same when the lowest block is the top block
    group_index: tuple[int, ...]  # [M] -> group number
    group: np.ndarray  # [P, G]
    module: np.ndarray  # [P, M]
    rank_cost: np.ndarray  # [P, M, R]
    # The top block pays max(0, max over its adapted i of top[i] - Σ act[j, r_j] over its
    # adapted j with after[i, j]): memory.top_extra, clamped at 0 and with act >= 0, and every module
    # of the top block pays its top_rank_cost (memory.py: only the one at the peak's moment): a safe bound.
    top: np.ndarray  # [P, M]
    top_rank_cost: np.ndarray  # [P, M, R] what a module at rank r adds in the top block beyond rank_cost
    act: np.ndarray  # [P, M, R] activations of module m at rank r (its terms minus its weights' state)
    after: np.ndarray  # [M, M] bool: target j runs after target i in the forward pass
    value: np.ndarray  # [L, M, R]
    ckpt: Any = None  # gradient checkpointing: solvers/ckpt.CheckpointTerms (then the terms above are unused)

    @property
    def branches(self) -> list[int]:
        return sorted(set(self.low_branch.tolist()))

    @property
    def num_layers(self) -> int:
        return self.profile.num_layers

    def capacity(self, budget_bytes: int) -> int:
        return budget_bytes // self.unit

    # ---- per-layer options: a rank index (or -1 = none) for each target module ----------------
    def options(self) -> np.ndarray:
        """[K, M] rank indices (-1 = module not adapted), every non-empty combination."""
        k = (len(self.ranks) + 1) ** len(self.targets) - 1
        if k > MAX_OPTIONS:
            raise LoraPlannerError("--target-modules/--ranks", f"at most {MAX_OPTIONS} per-layer combinations for the knapsack solver",
                                   f"{k} ({len(self.targets)} modules x {len(self.ranks)} ranks)",
                                   "Use fewer targets or ranks, or --solver cpsat / milp.")
        combos = itertools.product(range(-1, len(self.ranks)), repeat=len(self.targets))
        return np.array([c for c in combos if any(i >= 0 for i in c)], dtype=np.int64)

    def option_costs(self, opts: np.ndarray, lowest: bool, top: bool = False) -> np.ndarray:
        """[P, K] units one block pays for each option (above the lowest block, path is paid anyway)."""
        on = opts >= 0  # [K, M]
        r = np.where(on, opts, 0)
        m_idx = np.arange(len(self.targets))
        rank_cost = self.rank_cost + self.top_rank_cost if top else self.rank_cost
        cost = (self.module[:, None, :] * on[None]).sum(-1) + (rank_cost[:, m_idx, r] * on[None]).sum(-1)
        groups = np.zeros((opts.shape[0], self.group.shape[1]), dtype=bool)
        for m, g in enumerate(self.group_index):
            groups[:, g] |= on[:, m]
        cost = cost + (self.group[:, None, :] * groups[None]).sum(-1)
        if top and self.top.max() > 0:
            act = self.act[:, m_idx, r] * on[None]  # [P, K, M]
            later = act @ self.after.T.astype(np.int64)  # [P, K, M]: Σ over adapted modules after i
            moment = np.where(on[None], self.top[:, None, :] - later, 0)
            cost = cost + np.maximum(moment.max(-1), 0)
        if lowest:
            low_terms = self.top_low if top else self.path_low  # [P, J]
            applies = (on[:, None, :] | ~self.low_sets[None]).all(-1)  # [K, J]: subset j within the option
            for b in self.branches:
                inside = applies & (self.low_branch == b)[None]
                cost = cost + np.where(inside[None], low_terms[:, None, :], 0).max(-1)
        return cost

    # ---- the same terms as rows of the linear models (CP-SAT, MILP) -----------------------------
    def entry_cost(self, pi: int, layer: int, m: int, r: int) -> int:
        """Units target m at rank index r in ``layer`` pays in phase pi on its own (its module and rank
        terms, and its top_rank_cost in the top block)."""
        cost = self.module[pi, m] + self.rank_cost[pi, m, r]
        return int(cost + self.top_rank_cost[pi, m, r] if layer == self.num_layers - 1 else cost)

    def top_moments(self, pi: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
        """The top block's extra in phase pi as linear rows: (i, top[i], [(j, r, act[j, r]) for targets j
        after i]) for every target i with a positive top term; extra >= top[i]·[i adapted] - Σ act·[j at r]."""
        M, R = len(self.targets), len(self.ranks)
        return [(i, int(self.top[pi, i]), [(j, r, int(self.act[pi, j, r])) for j in range(M) if self.after[i, j] for r in range(R)])
                for i in range(M) if self.top[pi, i] > 0]

    def option_values(self, opts: np.ndarray) -> np.ndarray:
        """[L, K] value of each option in each layer."""
        on = opts >= 0
        r = np.where(on, opts, 0)
        m_idx = np.arange(len(self.targets))
        return (self.value[:, m_idx, r] * on[None]).sum(-1)

    def base(self, low: int) -> np.ndarray:
        """[P] units paid whatever is adapted, when ``low`` is the lowest trained block."""
        return self.fixed + (self.num_layers - 1 - low) * self.path

    # ---- exact evaluation of an assignment in units --------------------------------------
    def cost(self, assignment: dict[tuple[int, str], int]) -> np.ndarray:
        """[P] units of an assignment (layer, module) -> rank under this integer model."""
        if self.ckpt is not None:
            from .ckpt import cost

            return cost(self, assignment)
        m_of = {m: i for i, m in enumerate(self.targets)}
        r_of = {r: i for i, r in enumerate(self.ranks)}
        low = min(layer for layer, _ in assignment)
        total = self.base(low).astype(np.int64)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for (layer, m), rank in assignment.items():
            by_layer.setdefault(layer, []).append((m_of[m], r_of[rank]))
        for layer, items in by_layer.items():
            opt = np.full((1, len(self.targets)), -1, dtype=np.int64)
            for mi, ri in items:
                opt[0, mi] = ri
            total = total + self.option_costs(opt, lowest=(layer == low), top=(layer == self.num_layers - 1))[:, 0]
        return total

    def objective(self, assignment: dict[tuple[int, str], int]) -> float:
        m_of = {m: i for i, m in enumerate(self.targets)}
        r_of = {r: i for i, r in enumerate(self.ranks)}
        return float(sum(self.value[layer, m_of[m], r_of[r]] for (layer, m), r in assignment.items()))


def _units(x: float, unit: int) -> int:
    return max(int(math.ceil(x / unit - 1e-9)), 0)


def build_problem(profile: ModelProfile, targets: tuple[str, ...], ranks: tuple[int, ...], batch: int | None = None,
                  seq: int | None = None, unit: int | None = None, max_budget_bytes: int | None = None,
                  values: np.ndarray | None = None) -> Problem:
    """Evaluate the profile at the shape and round every term up to ``unit`` bytes.

    Args:
        unit: bytes per unit; default: the largest budget / 65,536 (at least 1 KiB).
        values: optional [L, M] importance override (else the profile's, else uniform).
    """
    if unit is None:
        unit = max(1024, (max_budget_bytes or 2**36) // DP_CELLS)
    groups = sorted({profile.module(m).group for m in targets})
    gidx = tuple(groups.index(profile.module(m).group) for m in targets)
    imp = importance_matrix(profile, targets) if values is None else np.asarray(values, dtype=float)
    util = np.array([rank_utility(r, max(ranks)) for r in ranks])
    if profile.checkpointed:
        return _checkpointed_problem(profile, targets, ranks, unit, groups, gidx, imp[:, :, None] * util[None, None, :], batch, seq)
    terms = evaluate(profile, batch, seq)
    sets = [(k, members) for k, members in profile.low_key_sets() if set(members) <= set(targets)]
    set_keys = [k for k, _ in sets]
    low_sets = np.array([[m in members for m in targets] for _, members in sets], dtype=bool)
    # A phase that costs no more than another in every term can never bind: drop it.
    names = list(terms)

    def vec(t):
        return np.array([t.fixed, t.path] + [t.path_low[k] for k in set_keys] + [t.top_low[k] for k in set_keys] + [t.group.get(g, 0.0) for g in groups]
                        + [t.module[m] for m in targets] + [t.rank[m] for m in targets]
                        + [t.top[m] for m in targets] + [t.top_rank[m] for m in targets] + [t.static[m] for m in targets])

    vecs = {p: vec(terms[p]) for p in names}
    keep = [p for p in names if not any(q != p and np.all(vecs[q] >= vecs[p]) and (np.any(vecs[q] > vecs[p]) or names.index(q) < names.index(p)) for q in names)]
    P = len(keep)
    arr = lambda f: np.array([[_units(f(terms[p], x), unit) for x in range(len(targets))] for p in keep], dtype=np.int64)
    rank_cost = np.array([[[_units(r * terms[p].rank[m], unit) for r in ranks] for m in targets] for p in keep], dtype=np.int64)
    module = arr(lambda t, i: t.module[targets[i]])
    static = np.array([[[_units(r * terms[p].static[m], unit) for r in ranks] for m in targets] for p in keep], dtype=np.int64)
    act = np.maximum(module[:, :, None] + rank_cost - static, 0)
    order = profile.order_of
    return Problem(
        profile=profile, targets=targets, ranks=ranks, unit=unit, phases=tuple(keep),
        fixed=np.array([_units(terms[p].fixed, unit) for p in keep], dtype=np.int64),
        path=np.array([_units(terms[p].path, unit) for p in keep], dtype=np.int64),
        low_sets=low_sets,
        low_branch=np.array([profile.branch_of_key[k] for k in set_keys], dtype=np.int64),
        path_low=np.array([[_units(terms[p].path_low[k], unit) for k in set_keys] for p in keep], dtype=np.int64),
        top_low=np.array([[_units(terms[p].top_low[k], unit) for k in set_keys] for p in keep], dtype=np.int64),
        group_index=gidx,
        group=np.array([[_units(terms[p].group.get(g, 0.0), unit) for g in groups] for p in keep], dtype=np.int64).reshape(P, len(groups)),
        module=module,
        rank_cost=rank_cost,
        top=arr(lambda t, i: t.top[targets[i]]),
        top_rank_cost=np.array([[[_units(r * terms[p].top_rank[m], unit) for r in ranks] for m in targets] for p in keep], dtype=np.int64),
        act=act,
        after=np.array([[order[j] > order[i] for j in targets] for i in targets], dtype=bool),
        value=imp[:, :, None] * util[None, None, :],
    )


def _checkpointed_problem(profile, targets, ranks, unit, groups, gidx, value, batch, seq) -> Problem:
    """The problem of a checkpointed profile: its terms in ``ckpt``; the lowest-block arrays stay empty."""
    from .ckpt import build_terms

    c = build_terms(profile, targets, ranks, groups, batch, seq, unit)
    P, M, R, G = len(c.phases), len(targets), len(ranks), len(groups)
    zeros = lambda *shape: np.zeros(shape, dtype=np.int64)  # noqa: E731
    return Problem(profile=profile, targets=targets, ranks=ranks, unit=unit, phases=c.phases, fixed=zeros(P), path=zeros(P),
                   low_sets=np.zeros((0, M), dtype=bool), low_branch=zeros(0), path_low=zeros(P, 0), top_low=zeros(P, 0),
                   group_index=gidx, group=zeros(P, G), module=zeros(P, M), rank_cost=zeros(P, M, R), top=zeros(P, M),
                   top_rank_cost=zeros(P, M, R), act=zeros(P, M, R), after=np.zeros((M, M), dtype=bool), value=value, ckpt=c)


@dataclass
class Solution:
    assignment: dict[tuple[int, str], int]
    objective: float
    status: str  # "optimal" | "feasible" (time limit) | "infeasible" | "dropped"
    solver: str
    extras: dict = field(default_factory=dict)  # depth-rank: round time, bytes up/down, deadline
    cost: Any = None  # [P] units per phase, when the solver knows it
