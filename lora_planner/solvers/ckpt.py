"""The planning problem when the profile was made with gradient checkpointing on (memory.py,
profiling/ckpt_fit.py), in integer units, with its exact CP-SAT and MILP models.

No lowest block here: every block is traversed (its input requires grad). The peak is the largest of
the step phases (``F_p + Σ entries``) and, per block phase, of every block's own peak

    F_q − (top − l)·β_q + own_q(S_l) + Σ_{j > l} above_q(S_j) + Σ_{j < l} below_q(S_j),

a maximum over blocks that a linear model states as one constraint per block (exact). Terms are rounded
up to units, β down, so that a plan fitting the integer problem fits the memory model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..memory import evaluate
from ..profile import BLOCK_KINDS, PHASES
from .problem import _units as _up  # terms rounded up to whole units, as every problem's


@dataclass
class CheckpointTerms:
    step_fixed: np.ndarray  # [P]
    step_entry: np.ndarray  # [P, M, R] module + r * rank
    block_fixed: np.ndarray  # [Q] at the top block
    beta: np.ndarray  # [Q] less per block below the top
    group: np.ndarray  # [Q, G] a shared input of the running block
    own: np.ndarray  # [Q, M, R] an adapter of the running block
    above: np.ndarray  # [Q, M, R] an adapter of a block above it
    below: np.ndarray  # [Q, M, R] ... below it
    phases: tuple[str, ...]  # names of the P step phases, then the Q block phases


def build_terms(profile, targets, ranks, groups, batch, seq, unit) -> CheckpointTerms:
    terms = evaluate(profile, batch, seq)
    per = lambda t, a, b: np.array([[_up(getattr(t, a)[m] + r * getattr(t, b)[m], unit) for r in ranks] for m in targets])  # noqa: E731
    return CheckpointTerms(
        step_fixed=np.array([_up(terms[p].fixed, unit) for p in PHASES], dtype=np.int64),
        step_entry=np.stack([per(terms[p], "module", "rank") for p in PHASES]).astype(np.int64),
        block_fixed=np.array([_up(terms[q].fixed, unit) for q in BLOCK_KINDS], dtype=np.int64),
        beta=np.array([max(int(math.floor(terms[q].path / unit + 1e-9)), 0) for q in BLOCK_KINDS], dtype=np.int64),
        group=np.array([[_up(terms[q].group.get(g, 0.0), unit) for g in groups] for q in BLOCK_KINDS], dtype=np.int64).reshape(len(BLOCK_KINDS), len(groups)),
        own=np.stack([per(terms[q], "module", "rank") for q in BLOCK_KINDS]).astype(np.int64),
        above=np.stack([per(terms[q], "above", "above_rank") for q in BLOCK_KINDS]).astype(np.int64),
        below=np.stack([per(terms[q], "below", "below_rank") for q in BLOCK_KINDS]).astype(np.int64),
        phases=tuple(PHASES) + tuple(BLOCK_KINDS),
    )


def cost(problem, assignment) -> np.ndarray:
    """[P + Q] units of an assignment: each step phase, and each block phase's largest block."""
    c = problem.ckpt
    L, top = problem.num_layers, problem.num_layers - 1
    m_of = {m: i for i, m in enumerate(problem.targets)}
    r_of = {r: i for i, r in enumerate(problem.ranks)}
    items = [(l, m_of[m], r_of[r]) for (l, m), r in assignment.items()]
    step = c.step_fixed + sum((c.step_entry[:, mi, ri] for _, mi, ri in items), np.zeros(len(c.step_fixed), dtype=np.int64))
    blocks = np.zeros((len(c.block_fixed), L), dtype=np.int64)
    for l in range(L):
        blocks[:, l] = c.block_fixed - (top - l) * c.beta
        groups = {problem.group_index[mi] for j, mi, _ in items if j == l}
        blocks[:, l] += sum((c.group[:, g] for g in groups), np.zeros(len(c.block_fixed), dtype=np.int64))
        for j, mi, ri in items:
            blocks[:, l] += c.own[:, mi, ri] if j == l else (c.above[:, mi, ri] if j > l else c.below[:, mi, ri])
    return np.concatenate([step, blocks.max(axis=1)])


def _rows(problem, x, act, lin_sum):
    """(constant, linear terms) of every memory row: each step phase, and each block phase at each block."""
    c = problem.ckpt
    L, M, R, top = problem.num_layers, len(problem.targets), len(problem.ranks), problem.num_layers - 1
    keys = [(l, m, r) for l in range(L) for m in range(M) for r in range(R)]
    rows = []
    for p in range(len(c.step_fixed)):
        rows.append(int(c.step_fixed[p]) + lin_sum([(int(c.step_entry[p, m, r]), x[l, m, r]) for l, m, r in keys]))
    for q in range(len(c.block_fixed)):
        for l in range(L):
            terms = [(int(c.group[q, g]), act[l, g]) for g in range(c.group.shape[1])]
            for j, m, r in keys:
                w = c.own[q, m, r] if j == l else (c.above[q, m, r] if j > l else c.below[q, m, r])
                terms.append((int(w), x[j, m, r]))
            rows.append(int(c.block_fixed[q] - (top - l) * c.beta[q]) + lin_sum(terms))
    return rows


def solve_cpsat_one(problem, capacity: int, time_limit: float = 60.0):
    from ortools.sat.python import cp_model

    from .cpsat import maximize

    L, M, R = problem.num_layers, len(problem.targets), len(problem.ranks)
    model = cp_model.CpModel()
    x = {(l, m, r): model.new_bool_var(f"x{l}_{m}_{r}") for l in range(L) for m in range(M) for r in range(R)}
    G = problem.ckpt.group.shape[1]
    act = {(l, g): model.new_bool_var(f"a{l}_{g}") for l in range(L) for g in range(G)}
    for l in range(L):
        for m in range(M):
            model.add(sum(x[l, m, r] for r in range(R)) <= 1)
            model.add(act[l, problem.group_index[m]] >= sum(x[l, m, r] for r in range(R)))
    model.add(sum(x.values()) >= 1)  # never an empty plan
    for row in _rows(problem, x, act, lambda terms: sum(w * v for w, v in terms if w)):
        model.add(row <= int(capacity))
    return maximize(model, x, problem, time_limit)


def solve_milp_one(problem, capacity: int, backend: str = "cbc", time_limit: float | None = None):
    import pulp

    from .milp import solve_and_read

    L, M, R = problem.num_layers, len(problem.targets), len(problem.ranks)
    lp = pulp.LpProblem("lora_plan_ckpt", pulp.LpMaximize)
    x = {(l, m, r): pulp.LpVariable(f"x_{l}_{m}_{r}", cat="Binary") for l in range(L) for m in range(M) for r in range(R)}
    G = problem.ckpt.group.shape[1]
    act = {(l, g): pulp.LpVariable(f"a_{l}_{g}", cat="Binary") for l in range(L) for g in range(G)}
    lp += pulp.lpSum(problem.value[l, m, r] * v for (l, m, r), v in x.items())
    for l in range(L):
        for m in range(M):
            lp += pulp.lpSum(x[l, m, r] for r in range(R)) <= 1
            lp += act[l, problem.group_index[m]] >= pulp.lpSum(x[l, m, r] for r in range(R))
    lp += pulp.lpSum(x.values()) >= 1
    for row in _rows(problem, x, act, lambda terms: pulp.lpSum(w * v for w, v in terms if w)):
        lp += row <= int(capacity)
    return solve_and_read(lp, x, problem, backend, time_limit)
