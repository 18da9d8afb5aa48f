"""Solver registry: every solver turns one Problem and the clients' capacities into Solutions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..errors import LoraPlannerError, nearest
from ..fleet import ClientSpec
from .knapsack import Solution
from .problem import Problem, build_problem


class SolveFn(Protocol):
    def __call__(self, problem: Problem, capacities: list[int], clients: list[ClientSpec], *, seq_len: int, batch: int,
                 seed: int) -> list[Solution]: ...


@dataclass(frozen=True)
class SolverEntry:
    name: str
    summary: str
    exact: bool
    available: Callable[[], bool]
    solve: SolveFn


def _knapsack(problem, caps, clients, **_):
    from .knapsack import solve_knapsack
    return solve_knapsack(problem, caps)


def _cpsat(problem, caps, clients, **_):
    from .cpsat import solve_cpsat
    return solve_cpsat(problem, caps)


def _milp(problem, caps, clients, **_):
    from .milp import solve_milp
    return solve_milp(problem, caps, backend="cbc")


def _milp_highs(problem, caps, clients, **_):
    from .milp import solve_milp
    return solve_milp(problem, caps, backend="highs")


def _highs_available() -> bool:
    try:
        import pulp
        return bool(pulp.HiGHS(msg=False).available())
    except Exception:  # highspy missing or unloadable next to ortools
        return False


def _depth_rank(problem, caps, clients, *, seq_len, batch, **_):
    from .depth_rank import solve_depth_rank
    return solve_depth_rank(problem, caps, clients, seq_len)


def _baseline(fn_name):
    def run(problem, caps, clients, *, seed=0, **_):
        from . import baselines
        fn = getattr(baselines, fn_name)
        return fn(problem, caps, seed=seed) if fn_name == "solve_random" else fn(problem, caps)
    return run


def _always() -> bool:
    return True


def _cpsat_available() -> bool:
    from .cpsat import available
    return available()


def _milp_available() -> bool:
    from .milp import available
    return available()


SOLVERS: dict[str, SolverEntry] = {e.name: e for e in [
    SolverEntry("knapsack", "exact: lowest block enumerated + multiple-choice knapsack DP (numpy; default)", True, _always, _knapsack),
    SolverEntry("cpsat", "exact: the same problem in OR-Tools CP-SAT (reference)", True, _cpsat_available, _cpsat),
    SolverEntry("milp", "exact: the same problem as a PuLP MILP with CBC (reference)", True, _milp_available, _milp),
    SolverEntry("milp-highs", "exact: the same MILP with HiGHS (needs highspy)", True, _highs_available, _milp_highs),
    SolverEntry("depth-rank", "LEGEND-style: output-side depth + rising rank ramp under a common round deadline", False, _always, _depth_rank),
    SolverEntry("uniform", "baseline (FedIT): one rank on every layer, largest that fits the smallest client", False, _always, _baseline("solve_uniform")),
    SolverEntry("hetlora", "baseline (HetLoRA): every layer, per-client largest rank that fits", False, _always, _baseline("solve_hetlora")),
    SolverEntry("random", "baseline (FedRA-style): random layers at the middle rank while they fit", False, _always, _baseline("solve_random")),
    SolverEntry("greedy", "baseline: best value per byte first", False, _always, _baseline("solve_greedy")),
]}


def get_solver(name: str) -> SolverEntry:
    if name not in SOLVERS:
        raise LoraPlannerError("--solver", "a known solver", name, nearest(name, SOLVERS))
    entry = SOLVERS[name]
    if not entry.available():
        raise LoraPlannerError("--solver", "an installed solver", name,
                               "Install the solvers extra: pip install -c constraints.txt -e '.[solvers]'.")
    return entry


__all__ = ["SOLVERS", "Problem", "Solution", "SolverEntry", "build_problem", "get_solver"]
