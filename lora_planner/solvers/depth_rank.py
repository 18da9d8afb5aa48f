"""LEGEND-style planning (DESIGN §7): per device a LoRA depth from the output side and a rank ramp.

A configuration is (depth D, ranks rising from r_lo at the lowest adapted block to r_hi at the
top), every target module adapted in the top D blocks. Per device:
  time  = examples * seq_len * (fwd FLOPs of the whole model + bwd FLOPs of the top D blocks and
          the head) / throughput  +  2 * adapter bytes / bandwidth   (down, then up)
  memory = the profile's memory model (integer problem), within the device's budget.
A common round deadline T is searched by bisection: the smallest T at which the devices' best
configurations keep at least ``min_value_fraction`` of the value reachable without a deadline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fleet import ClientSpec
from ..timing import backward_flops_per_token, forward_flops_per_token
from .problem import Problem, Solution

ADAPTER_BYTES = 4  # fp32 adapters on the wire


@dataclass
class Candidate:
    assignment: dict
    value: float
    time_s: float
    bytes_each_way: int
    cost: np.ndarray


def candidates(problem: Problem) -> list[tuple[dict, float, int, float]]:
    """(assignment, value, adapter bytes, backward FLOPs per token beyond forward) per depth and ramp."""
    prof = problem.profile
    L = prof.num_layers
    ranks = sorted(problem.ranks)
    out = []
    for depth in range(1, L + 1):
        for lo in range(len(ranks)):
            for hi in range(lo, len(ranks)):
                idx = np.rint(np.linspace(lo, hi, depth)).astype(int)  # non-decreasing toward the output
                a = {(L - depth + i, m): ranks[idx[i]] for i in range(depth) for m in problem.targets}
                n_params = sum(r * (prof.module(m).in_features + prof.module(m).out_features) for (_, m), r in a.items())
                bwd = backward_flops_per_token(prof, depth)  # input gradients through the top D blocks + head
                out.append((a, problem.objective(a), n_params * ADAPTER_BYTES, bwd))
    return out


def solve_depth_rank(problem: Problem, capacities: list[int], clients: list[ClientSpec], seq_len: int,
                     min_value_fraction: float = 0.9) -> list[Solution]:
    fwd = forward_flops_per_token(problem.profile)
    cands = candidates(problem)
    costs = np.stack([problem.cost(a) for a, *_ in cands])  # [N, P]
    per_client = []
    for spec, cap in zip(clients, capacities):
        fits = np.all(costs <= cap, axis=1)
        tokens = spec.num_examples * seq_len
        rows = [Candidate(a, v, b, tokens * (fwd + bwd) / spec.throughput_flops + 2 * b / spec.bandwidth_bytes, costs[i])
                for i, (a, v, b, bwd) in enumerate(cands) if fits[i]]
        per_client.append(rows)

    def pick(deadline: float) -> list[Candidate | None]:
        out = []
        for rows in per_client:
            ok = [c for c in rows if c.time_s <= deadline]
            out.append(max(ok, key=lambda c: (c.value, -c.time_s)) if ok else None)
        return out

    def total(picks) -> float:
        return sum(c.value for c in picks if c)

    unbounded = pick(float("inf"))
    target = min_value_fraction * total(unbounded)
    times = sorted({c.time_s for rows in per_client for c in rows})
    lo, hi = 0, len(times) - 1
    while lo < hi:  # bisection over the distinct candidate times
        mid = (lo + hi) // 2
        if total(pick(times[mid])) >= target - 1e-12:
            hi = mid
        else:
            lo = mid + 1
    deadline = times[lo] if times else float("inf")
    out = []
    for c in pick(deadline):
        if c is None:
            out.append(Solution({}, 0.0, "dropped", "depth-rank"))
            continue
        out.append(Solution(c.assignment, c.value, "optimal", "depth-rank", extras={
            "round_time_s": round(c.time_s, 3), "bytes_up": c.bytes_each_way, "bytes_down": c.bytes_each_way,
            "deadline_s": round(deadline, 3), "depth": len({l for l, _ in c.assignment})}))
    return out
