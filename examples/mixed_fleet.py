"""A mixed fleet on Llama-2-7B: our exact knapsack against the FedIT (uniform) and HetLoRA baselines.

    python examples/mixed_fleet.py            # prints the comparison, writes examples/output/

Budgets 8, 12, 14, 16, 24, 48 GiB; batch 1 x 512 tokens, bf16 weights, q/v targets, ranks 2-64.
"""
from __future__ import annotations

from pathlib import Path

from lora_planner import format_size, shipped_profile
from lora_planner.cli.plot_cmd import plot_plan
from lora_planner.cli.solve_cmd import render
from lora_planner.fleet import budgets_to_clients
from lora_planner.plan import plan_fleet

OUT = Path(__file__).resolve().parent / "output"


def main() -> None:
    profile = shipped_profile("llama-2-7b")
    fleet = budgets_to_clients(["8GiB,12GiB,14GiB,16GiB,24GiB,48GiB"])
    plans = {s: plan_fleet(profile, fleet, solver=s, drop_infeasible=True) for s in ("knapsack", "uniform", "hetlora")}
    OUT.mkdir(exist_ok=True)
    print(render(plans["knapsack"], profile), "\n")
    print(f"{'solver':10s} {'clients taking part':>20s} {'total value':>12s}  per-client value")
    for name, plan in plans.items():
        taking = sum(c.status == "planned" for c in plan.clients)
        per = "  ".join(f"{format_size(c.budget_bytes).split('.')[0]}G:{c.objective:.2f}" for c in plan.clients)
        print(f"{name:10s} {taking:>14d}/{len(plan.clients)}  {sum(c.objective for c in plan.clients):12.3f}  {per}")
        plot_plan(plan, OUT / f"plan_{name}.png")
        plan.write(OUT / name, profile)
    print(f"\nwrote {OUT}/plan_*.png and {OUT}/<solver>/plan.json")


if __name__ == "__main__":
    main()
