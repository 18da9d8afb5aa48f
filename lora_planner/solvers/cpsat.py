"""The same exact problem as an OR-Tools CP-SAT model (reference implementation)."""
from __future__ import annotations

from .problem import Problem, Solution

VALUE_SCALE = 10**9  # CP-SAT needs integer objective coefficients


def available() -> bool:
    try:
        import ortools.sat.python.cp_model  # noqa: F401
    except ImportError:
        return False
    return True


def solve_cpsat_one(problem: Problem, capacity: int, time_limit: float = 60.0) -> Solution:
    from ortools.sat.python import cp_model

    if problem.ckpt is not None:
        from .ckpt import solve_cpsat_one as checkpointed

        return checkpointed(problem, capacity, time_limit)
    L, M, R = problem.num_layers, len(problem.targets), len(problem.ranks)
    model = cp_model.CpModel()
    # variables: x = module m of block l has rank r; y = block l is the lowest trained block
    x = {(l, m, r): model.new_bool_var(f"x{l}_{m}_{r}") for l in range(L) for m in range(M) for r in range(R)}
    y = [model.new_bool_var(f"y{l}") for l in range(L)]
    model.add_exactly_one(y)
    z = [sum(y[: l + 1]) for l in range(L)]  # block l is traversed by backward
    adapted = {(l, m): sum(x[l, m, r] for r in range(R)) for l in range(L) for m in range(M)}
    # one rank per module, and only in traversed blocks
    for (l, m), a in adapted.items():
        model.add(a <= z[l])
    # the lowest block carries at least one adapter
    for l in range(L):
        model.add(y[l] <= sum(adapted[l, m] for m in range(M)))
    # a group's shared input is stored once if any member is adapted
    G = problem.group.shape[1]
    act = {(l, g): model.new_bool_var(f"a{l}_{g}") for l in range(L) for g in range(G)}
    for (l, m), a in adapted.items():
        model.add(act[l, problem.group_index[m]] >= a)
    # memory of every phase that can bind
    for pi in range(len(problem.phases)):
        hi = int(max(problem.path_low[pi].max(), problem.top_low[pi].max(), 0))
        # traversal of the lowest block down to its adapted set: per block branch the largest term, summed
        w = [model.new_int_var(0, hi, f"w{pi}_{l}_{b}") for l in range(L) for b in problem.branches]
        for i, (l, b) in enumerate((l, b) for l in range(L) for b in problem.branches):
            low_terms = problem.top_low if l == L - 1 else problem.path_low
            for j, members in enumerate(problem.low_sets):
                idx = [m for m in range(M) if members[m]]
                if problem.low_branch[j] == b and low_terms[pi, j] > 0:
                    model.add(w[i] >= int(low_terms[pi, j]) * (y[l] + sum(adapted[l, m] for m in idx) - len(idx)))
        # the top block's extra (Problem.option_costs), clamped at 0
        e = model.new_int_var(0, int(max(problem.top[pi].max(), 0)), f"e{pi}")
        for i, t, later in problem.top_moments(pi):
            model.add(e >= t * adapted[L - 1, i] - sum(c * x[L - 1, j, r] for j, r, c in later))
        cost = int(problem.fixed[pi]) + int(problem.path[pi]) * sum(z[l] - y[l] for l in range(L)) + sum(w) + e
        cost += sum(int(problem.group[pi, g]) * act[l, g] for l in range(L) for g in range(G))
        cost += sum(problem.entry_cost(pi, l, m, r) * x[l, m, r] for (l, m, r) in x)
        model.add(cost <= int(capacity))
    return maximize(model, x, problem, time_limit)


def maximize(model, x, problem: Problem, time_limit: float) -> Solution:
    """Maximise the plan's value over x[l, m, r] (module m of block l at rank index r) and read the plan."""
    from ortools.sat.python import cp_model

    model.maximize(sum(int(round(problem.value[l, m, r] * VALUE_SCALE)) * v for (l, m, r), v in x.items()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 1
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return Solution({}, 0.0, "infeasible", "cpsat")
    a = {(l, problem.targets[m]): problem.ranks[r] for (l, m, r), v in x.items() if solver.value(v)}
    return Solution(a, problem.objective(a), "optimal" if status == cp_model.OPTIMAL else "feasible", "cpsat")


def solve_cpsat(problem: Problem, capacities: list[int], time_limit: float = 60.0) -> list[Solution]:
    return [solve_cpsat_one(problem, c, time_limit) for c in capacities]
