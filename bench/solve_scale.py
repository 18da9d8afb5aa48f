"""10,000 clients on Llama-2-7B (32 layers x q,v x 6 ranks): knapsack wall time, and per-client
speed ratio against CP-SAT and PuLP/CBC on the same instances in the same run (equal objectives).

    python bench/solve_scale.py [--clients 10000] [--sample 20]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from lora_planner import shipped_profile
from lora_planner.fleet import ClientSpec
from lora_planner.plan import plan_fleet
from lora_planner.solvers import build_problem
from lora_planner.solvers.cpsat import solve_cpsat_one
from lora_planner.solvers.knapsack import KnapsackTables
from lora_planner.solvers.milp import solve_milp_one

GIB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--sample", type=int, default=5, help="clients also solved by cpsat and milp")
    ap.add_argument("--milp-time-limit", type=float, default=60.0, help="seconds per MILP solve (CBC is slow here)")
    args = ap.parse_args()
    profile = shipped_profile("llama-2-7b")
    rng = random.Random(0)
    fleet = [ClientSpec(f"c{i}", int(rng.uniform(13.2, 16.2) * GIB)) for i in range(args.clients)]

    t = time.perf_counter()
    plan = plan_fleet(profile, fleet, solver="knapsack")
    knap_total = time.perf_counter() - t

    # Per-client comparison on a sample, all three on the very same integer problem.
    targets, ranks = plan.target_modules, plan.ranks
    problem = build_problem(profile, targets, ranks, max_budget_bytes=max(c.memory_bytes for c in fleet))
    sample = fleet[: args.sample]
    caps = [problem.capacity(c.memory_bytes) for c in sample]
    t = time.perf_counter()
    tables = KnapsackTables(problem, max(caps))
    knap_tables_s = time.perf_counter() - t
    rows, ratios_cp, ratios_milp, mismatches = [], [], [], 0
    for c, cap in zip(sample, caps):
        t = time.perf_counter(); k = tables.solve(cap); tk = time.perf_counter() - t
        t = time.perf_counter(); cp = solve_cpsat_one(problem, cap); tc = time.perf_counter() - t
        t = time.perf_counter(); ml = solve_milp_one(problem, cap, time_limit=args.milp_time_limit); tm = time.perf_counter() - t
        same = abs(k.objective - cp.objective) < 1e-7 and abs(k.objective - ml.objective) < 1e-7
        mismatches += not same
        per_client_knap = knap_total / args.clients
        ratios_cp.append(tc / per_client_knap)
        ratios_milp.append(tm / per_client_knap)
        rows.append([c.id, f"{c.memory_bytes / GIB:.2f}", f"{k.objective:.6f}", f"{cp.objective:.6f}", f"{ml.objective:.6f}",
                     f"{tk * 1e3:.2f}", f"{tc * 1e3:.1f}", f"{tm * 1e3:.1f}", ("yes" if same else "NO") + ("" if ml.status == "optimal" else " (milp hit time limit)")])
    print(table(rows, ["client", "GiB", "knapsack", "cpsat", "milp", "knap ms (lookup)", "cpsat ms", "milp ms", "equal"]))
    summary = {
        "clients": args.clients, "knapsack_total_s": round(knap_total, 3),
        "knapsack_per_client_ms": round(knap_total / args.clients * 1e3, 4),
        "knapsack_tables_s": round(knap_tables_s, 3),
        "cpsat_median_ms": round(statistics.median(float(x[6]) for x in rows), 2),
        "milp_median_ms": round(statistics.median(float(x[7]) for x in rows), 2),
        "speedup_vs_cpsat_median": round(statistics.median(ratios_cp), 1),
        "speedup_vs_milp_median": round(statistics.median(ratios_milp), 1),
        "objective_mismatches": mismatches, "sample": args.sample,
    }
    print(f"\nknapsack: {args.clients} clients in {knap_total:.2f} s ({summary['knapsack_per_client_ms']} ms/client, "
          f"shared DP tables {knap_tables_s:.2f} s)")
    print(f"per-client speed-up: {summary['speedup_vs_cpsat_median']}x vs cpsat, {summary['speedup_vs_milp_median']}x vs milp "
          f"(medians over {args.sample}); objective mismatches: {mismatches}")
    print("wrote", write("solve_scale", {"summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
