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
    pairs: tuple[tuple[int, int], ...] = ()  # [K] two targets of the running block that do not add up
    pair: np.ndarray | None = None  # [Q, K] what the two together add beyond their own terms (either sign)


def build_terms(profile, targets, ranks, groups, batch, seq, unit) -> CheckpointTerms:
    terms = evaluate(profile, batch, seq)
    keys = sorted({k for q in BLOCK_KINDS for k in (terms[q].pair or {})})
    index = {m: i for i, m in enumerate(targets)}
    pairs = [(k, tuple(index.get(m) for m in k.split("+"))) for k in keys]
    pairs = [(k, ij) for k, ij in pairs if None not in ij]  # both among the targets
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
        pairs=tuple(ij for _, ij in pairs),
        # rounded up, not clamped at zero: a pair that saves memory saves it in the rows too (less, never more)
        pair=np.array([[int(math.ceil((terms[q].pair or {}).get(k, 0.0) / unit - 1e-9)) for k, _ in pairs] for q in BLOCK_KINDS],
                      dtype=np.int64).reshape(len(BLOCK_KINDS), len(pairs)),
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
        own = {mi for j, mi, _ in items if j == l}
        for k, (a, b) in enumerate(c.pairs):
            if a in own and b in own:
                blocks[:, l] += c.pair[:, k]
    return np.concatenate([step, blocks.max(axis=1)])


def _rows(problem, x, act, lin_sum, both=None):
    """(constant, linear terms) of every memory row: each step phase, and each block phase at each block.
    ``both[l, k]``: pair k adapted together in block l (``pair_links`` makes it so)."""
    c = problem.ckpt
    L, M, R, top = problem.num_layers, len(problem.targets), len(problem.ranks), problem.num_layers - 1
    keys = [(l, m, r) for l in range(L) for m in range(M) for r in range(R)]
    rows = []
    for p in range(len(c.step_fixed)):
        rows.append(int(c.step_fixed[p]) + lin_sum([(int(c.step_entry[p, m, r]), x[l, m, r]) for l, m, r in keys]))
    for q in range(len(c.block_fixed)):
        for l in range(L):
            terms = [(int(c.group[q, g]), act[l, g]) for g in range(c.group.shape[1])]
            terms += [(int(c.pair[q, k]), both[l, k]) for k in range(len(c.pairs))]
            for j, m, r in keys:
                w = c.own[q, m, r] if j == l else (c.above[q, m, r] if j > l else c.below[q, m, r])
                terms.append((int(w), x[j, m, r]))
            rows.append(int(c.block_fixed[q] - (top - l) * c.beta[q]) + lin_sum(terms))
    return rows


def pair_links(problem, x, both, add, lin_sum) -> None:
    """``both[l, k]`` = both targets of pair k adapted in block l, as the memory rows need it: at least their
    AND where the pair adds memory (both >= a + b - 1), at most it where it saves some (both <= a, both <= b);
    the solver is free in the other direction, which only tightens its rows."""
    c = problem.ckpt
    R = len(problem.ranks)
    for l in range(problem.num_layers):
        for k, (a, b) in enumerate(c.pairs):
            on_a, on_b = (lin_sum([(1, x[l, m, r]) for r in range(R)]) for m in (a, b))
            if (c.pair[:, k] > 0).any():
                add(both[l, k] >= on_a + on_b - 1)
            if (c.pair[:, k] < 0).any():
                add(both[l, k] <= on_a)
                add(both[l, k] <= on_b)


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
    both = {(l, k): model.new_bool_var(f"p{l}_{k}") for l in range(L) for k in range(len(problem.ckpt.pairs))}
    lin = lambda terms: sum(w * v for w, v in terms if w)  # noqa: E731
    pair_links(problem, x, both, model.add, lin)
    for row in _rows(problem, x, act, lin, both):
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
    both = {(l, k): pulp.LpVariable(f"p_{l}_{k}", cat="Binary") for l in range(L) for k in range(len(problem.ckpt.pairs))}
    lin = lambda terms: pulp.lpSum(w * v for w, v in terms if w)  # noqa: E731

    def add(constraint):
        nonlocal lp
        lp += constraint
    pair_links(problem, x, both, add, lin)
    for row in _rows(problem, x, act, lin, both):
        lp += row <= int(capacity)
    return solve_and_read(lp, x, problem, backend, time_limit)
