"""The same exact problem as a PuLP MILP (bundled CBC; HiGHS when highspy is installed)."""
from __future__ import annotations

from .problem import Problem, Solution


def available() -> bool:
    try:
        import pulp  # noqa: F401
    except ImportError:
        return False
    return True


def _backend(name: str, time_limit: float | None = None):
    import pulp

    if name == "highs":
        solver = pulp.HiGHS(msg=False, timeLimit=time_limit)
        if solver.available():
            return solver
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit)


def solve_milp_one(problem: Problem, capacity: int, backend: str = "cbc", time_limit: float | None = None) -> Solution:
    """Solve to optimality, or stop at ``time_limit`` seconds (then status "feasible", not "optimal")."""
    import pulp

    if problem.ckpt is not None:
        from .ckpt import solve_milp_one as checkpointed

        return checkpointed(problem, capacity, backend, time_limit)
    L, M, R = problem.num_layers, len(problem.targets), len(problem.ranks)
    lp = pulp.LpProblem("lora_plan", pulp.LpMaximize)
    # variables: x = module m of block l has rank r; y = block l is the lowest trained block
    x = {(l, m, r): pulp.LpVariable(f"x_{l}_{m}_{r}", cat="Binary") for l in range(L) for m in range(M) for r in range(R)}
    y = [pulp.LpVariable(f"y_{l}", cat="Binary") for l in range(L)]
    lp += pulp.lpSum(problem.value[l, m, r] * x[l, m, r] for (l, m, r) in x)
    lp += pulp.lpSum(y) == 1
    z = [pulp.lpSum(y[: l + 1]) for l in range(L)]
    adapted = {(l, m): pulp.lpSum(x[l, m, r] for r in range(R)) for l in range(L) for m in range(M)}
    # one rank per module, and only in traversed blocks
    for (l, m), a in adapted.items():
        lp += a <= z[l]
    # the lowest block carries at least one adapter
    for l in range(L):
        lp += y[l] <= pulp.lpSum(adapted[l, m] for m in range(M))
    # a group's shared input is stored once if any member is adapted
    G = problem.group.shape[1]
    act = {(l, g): pulp.LpVariable(f"a_{l}_{g}", cat="Binary") for l in range(L) for g in range(G)}
    for (l, m), a in adapted.items():
        lp += act[l, problem.group_index[m]] >= a
    # memory of every phase that can bind
    for pi in range(len(problem.phases)):
        # traversal of the lowest block down to its adapted set: per block branch the largest term, summed
        cells = [(l, b) for l in range(L) for b in problem.branches]
        w = [pulp.LpVariable(f"w_{pi}_{l}_{b}", lowBound=0) for l, b in cells]
        for i, (l, b) in enumerate(cells):
            low_terms = problem.top_low if l == L - 1 else problem.path_low
            for j, members in enumerate(problem.low_sets):
                idx = [m for m in range(M) if members[m]]
                if problem.low_branch[j] == b and low_terms[pi, j] > 0:
                    lp += w[i] >= int(low_terms[pi, j]) * (y[l] + pulp.lpSum(adapted[l, m] for m in idx) - len(idx))
        # the top block's extra (Problem.option_costs), clamped at 0
        e = pulp.LpVariable(f"e_{pi}", lowBound=0)
        for i, t, later in problem.top_moments(pi):
            lp += e >= t * adapted[L - 1, i] - pulp.lpSum(c * x[L - 1, j, r] for j, r, c in later)
        lp += (int(problem.fixed[pi]) + int(problem.path[pi]) * pulp.lpSum(z[l] - y[l] for l in range(L)) + pulp.lpSum(w)
               + e
               + pulp.lpSum(int(problem.group[pi, g]) * act[l, g] for l in range(L) for g in range(G))
               + pulp.lpSum(problem.entry_cost(pi, l, m, r) * x[l, m, r] for (l, m, r) in x)
               <= int(capacity))
    return solve_and_read(lp, x, problem, backend, time_limit)


def solve_and_read(lp, x, problem: Problem, backend: str, time_limit: float | None) -> Solution:
    """Solve the model and read the plan from x[l, m, r] ("feasible" when stopped by the time limit)."""
    import pulp

    lp.solve(_backend(backend, time_limit))
    if pulp.LpStatus[lp.status] != "Optimal":
        return Solution({}, 0.0, "infeasible", f"milp-{backend}")
    a = {(l, problem.targets[m]): problem.ranks[r] for (l, m, r), v in x.items() if (v.value() or 0) > 0.5}
    proven = lp.sol_status == pulp.LpSolutionOptimal
    return Solution(a, problem.objective(a), "optimal" if proven else "feasible", f"milp-{backend}")


def solve_milp(problem: Problem, capacities: list[int], backend: str = "cbc", time_limit: float | None = 60.0) -> list[Solution]:
    """Every client, each within ``time_limit`` seconds (None: no limit; CBC can then run for many minutes on 7B problems)."""
    return [solve_milp_one(problem, c, backend, time_limit) for c in capacities]
