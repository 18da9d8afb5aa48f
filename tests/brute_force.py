"""Shared check for checkpointed problems: an exact solver against brute force over every plan of 2 targets in
4 blocks at 2 ranks (3^8 assignments), at five budgets from the cheapest plan to the dearest."""
import itertools

import numpy as np
import pytest

from lora_planner.memory import predict_tensor_bytes
from lora_planner.solvers import get_solver


def assert_exact_by_brute_force(problem, profile, solver: str) -> None:
    keys = [(l, m) for l in range(profile.num_layers) for m in problem.targets]
    candidates = []
    for choice in itertools.product((None, *problem.ranks), repeat=len(keys)):
        a = {k: r for k, r in zip(keys, choice) if r}
        if a:
            candidates.append((problem.cost(a).max(), problem.objective(a)))
    lo, hi = min(c for c, _ in candidates), max(c for c, _ in candidates)
    caps = [int(lo + (hi - lo) * f) for f in (0.0, 0.3, 0.6, 0.9, 1.0)]
    for cap, sol in zip(caps, get_solver(solver).solve(problem, caps, [], seq_len=32, batch=2, seed=0)):
        assert sol.objective == pytest.approx(max(v for c, v in candidates if c <= cap), rel=1e-7, abs=1e-9)
        assert np.all(problem.cost(sol.assignment) <= cap)
        # the integer problem never charges less than the memory model
        assert problem.cost(sol.assignment).max() * problem.unit >= predict_tensor_bytes(profile, sol.assignment)
