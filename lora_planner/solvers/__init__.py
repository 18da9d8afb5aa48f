"""Solver registry: every solver turns one Problem and the clients' capacities into Solutions.

A solver is an object with ``exact`` (does it find the integer problem's optimum?) and
``solve(problem, capacities, clients, *, seq_len, batch, seed, time_limit)``: every solver is called
with the same arguments and ignores what it does not use (``time_limit``: seconds per client for
the reference solvers; a client stopped by it has status "feasible", not "optimal"). Add one by registering a ``Plugin`` in
``SOLVERS`` (see docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..fleet import ClientSpec
from ..registry import Plugin, Registry
from .problem import Problem, Solution, build_problem

SOLVERS_EXTRA = "Install the solvers extra: pip install -c constraints.txt -e '.[solvers]'."


class SolveFn(Protocol):
    def __call__(self, problem: Problem, capacities: list[int], clients: list[ClientSpec], *, seq_len: int, batch: int,
                 seed: int, time_limit: float) -> list[Solution]: ...


class Solver(Protocol):
    """What the registry holds for a solver."""

    exact: bool

    def solve(self, problem: Problem, capacities: list[int], clients: list[ClientSpec], *, seq_len: int, batch: int,
              seed: int, time_limit: float) -> list[Solution]: ...


@dataclass(frozen=True)
class FunctionSolver:
    """A solver made of one function with the common signature."""

    exact: bool
    solve: SolveFn


def _knapsack(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .knapsack import solve_knapsack
    return solve_knapsack(problem, caps)


def _cpsat(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .cpsat import solve_cpsat
    return solve_cpsat(problem, caps, time_limit)


def _milp(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .milp import solve_milp
    return solve_milp(problem, caps, backend="cbc", time_limit=time_limit)


def _milp_highs(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .milp import solve_milp
    return solve_milp(problem, caps, backend="highs", time_limit=time_limit)


def _depth_rank(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .depth_rank import solve_depth_rank
    return solve_depth_rank(problem, caps, clients, seq_len)


def _uniform(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .baselines import solve_uniform
    return solve_uniform(problem, caps)


def _hetlora(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .baselines import solve_hetlora
    return solve_hetlora(problem, caps)


def _random(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .baselines import solve_random
    return solve_random(problem, caps, seed=seed)


def _greedy(problem, caps, clients, *, seq_len, batch, seed, time_limit=60.0):
    from .baselines import solve_greedy
    return solve_greedy(problem, caps)


def _highs_available() -> bool:
    try:
        import pulp
        return bool(pulp.HiGHS(msg=False).available())
    except Exception:  # highspy missing or unloadable next to ortools
        return False


def _cpsat_available() -> bool:
    from .cpsat import available
    return available()


def _milp_available() -> bool:
    from .milp import available
    return available()


def _solver(name: str, summary: str, exact: bool, fn: SolveFn, available: Callable[[], bool] | None = None) -> Plugin[Solver]:
    kwargs = {"available": available, "install": SOLVERS_EXTRA} if available else {}
    return Plugin(name, summary, FunctionSolver(exact, fn), **kwargs)


SOLVERS: Registry[Solver] = Registry("solver", "solver", [
    _solver("knapsack", "exact: lowest block enumerated + multiple-choice knapsack DP (numpy; default)", True, _knapsack),
    _solver("cpsat", "exact: the same problem in OR-Tools CP-SAT (reference)", True, _cpsat, _cpsat_available),
    _solver("milp", "exact: the same problem as a PuLP MILP with CBC (reference)", True, _milp, _milp_available),
    _solver("milp-highs", "exact: the same MILP with HiGHS (needs highspy)", True, _milp_highs, _highs_available),
    _solver("depth-rank", "LEGEND-style: output-side depth + rising rank ramp under a common round deadline", False, _depth_rank),
    _solver("uniform", "baseline (FedIT): one rank on every layer, largest that fits the smallest client", False, _uniform),
    _solver("hetlora", "baseline (HetLoRA): every layer, per-client largest rank that fits", False, _hetlora),
    _solver("random", "baseline (FedRA-style): random layers at the middle rank while they fit", False, _random),
    _solver("greedy", "baseline: best value per byte first", False, _greedy),
])


def get_solver(name: str) -> Solver:
    """The solver called ``name`` (one-line error for an unknown or uninstalled one)."""
    return SOLVERS.get(name).obj


__all__ = ["SOLVERS", "FunctionSolver", "Problem", "Solution", "Solver", "build_problem", "get_solver"]
