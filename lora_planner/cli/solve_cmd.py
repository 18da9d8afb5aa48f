"""`lora-planner solve`: per-client LoRA layers and ranks under memory budgets."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import LoraPlannerError
from ..units import format_size, parse_size
from .common import add_profile_args, get_profile, positive_int, table

EXAMPLES = """examples:
  lora-planner solve --model llama-2-7b --memory-budget 16GiB
  lora-planner solve --model llama-2-7b --memory-budget 14GiB,16GiB,24GiB --gradient-checkpointing auto
  lora-planner solve --model llama-2-7b --memory-budget 8GiB,12GiB,16GiB,24GiB,48GiB -o plans/
  lora-planner solve --model llama-2-7b --memory-budget 12GiB:10,24GiB:2 --solver hetlora
  lora-planner solve --profile my.json --clients fleet.csv --solver depth-rank --format json
  lora-planner solve --model llama-2-7b --memory-budget 20GiB --ranks 4,8,16 --target-modules q_proj,k_proj,v_proj
  lora-planner solve --profile minilm-b77.json --memory-budget 50MiB,60MiB --target-modules query,value,intermediate.dense
                                                   # uses the IG-Score stored by `lora-planner profile --importance ig`

fleet.csv columns: id,memory[,throughput (FLOP/s),bandwidth (bytes/s or 100MB),examples,ranks ("4;8;16")]
sizes: GiB/G = 2**30 bytes, GB = 10**9 bytes.

solvers:
{solvers}"""


def register(sub) -> None:
    from ..solvers import SOLVERS

    listing = "\n".join(f"  {name:11s} {e.summary}" for name, e in SOLVERS.items())
    p = sub.add_parser("solve", help="plan LoRA layers and ranks for every client", epilog=EXAMPLES.format(solvers=listing),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(p, auto=True)
    p.add_argument("--memory-budget", action="append", default=[], metavar="SIZE[:COUNT]",
                   help="client budgets; repeat or comma-separate; SIZE:COUNT for many clients")
    p.add_argument("--clients", metavar="FILE", help="a fleet CSV or JSON (instead of --memory-budget)")
    p.add_argument("--solver", default="knapsack", help="solver name (default knapsack; see below)")
    p.add_argument("--ranks", default="2,4,8,16,32,64", help="allowed ranks (default 2,4,8,16,32,64)")
    p.add_argument("--target-modules", default=None, help="candidate modules, comma-separated (default: the profile's, e.g. q_proj,v_proj)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None, help="default: the profile's")
    p.add_argument("--seq-len", type=positive_int("--seq-len"), default=None, help="default: the profile's")
    p.add_argument("--reserve", default="0", help="runtime reserve per client (e.g. 600MiB for a CUDA context); default 0")
    p.add_argument("--drop-infeasible", action="store_true", help="drop clients below the minimum budget instead of failing")
    p.add_argument("--alpha-ratio", type=float, default=2.0, help="lora_alpha = ratio x rank (default 2)")
    p.add_argument("--importance", default="profile",
                   help="layer value: profile (its stored score, e.g. from `profile --importance ig`; else uniform), uniform, depth-prior")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="per client, for cpsat and milp (default 60); a client stopped by it shows 'feasible'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="write OUTDIR/plan.json and OUTDIR/<client>/adapter_config.json")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..fleet import budgets_to_clients, parse_ranks, read_fleet
    from ..plan import plan_fleet

    profile = get_profile(args)
    if args.clients and args.memory_budget:
        raise LoraPlannerError("--clients/--memory-budget", "one of the two", "both", "Put every client in the fleet file.")
    clients = read_fleet(args.clients) if args.clients else budgets_to_clients(args.memory_budget)
    reserve = 0 if str(args.reserve).strip() in ("0", "") else parse_size(args.reserve, "--reserve")
    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()] if args.target_modules else None
    kwargs = dict(solver=args.solver, target_modules=targets, ranks=parse_ranks(args.ranks), batch_size=args.batch_size,
                  seq_len=args.seq_len, reserve_bytes=reserve, drop_infeasible=args.drop_infeasible, alpha_ratio=args.alpha_ratio,
                  seed=args.seed, importance=args.importance, time_limit=args.time_limit)
    if args.gradient_checkpointing == "auto":
        from ..plan import plan_fleet_auto

        plan = plan_fleet_auto(profile, get_profile(args, gradient_checkpointing=True), clients, **kwargs)
    else:
        plan = plan_fleet(profile, clients, **kwargs)
    if args.output:
        plan.write(args.output, profile)
    if args.format == "json":
        print(json.dumps(plan.to_json(), indent=1))
    else:
        print(render(plan, profile))
        if args.output:
            print(f"wrote {args.output}/plan.json and {sum(c.status == 'planned' for c in plan.clients)} adapter configs", file=sys.stderr)
    return 0


def _layers(entries) -> str:
    layers = sorted({e.layer for e in entries})
    if not layers:
        return "-"
    runs, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(runs)


def render(plan, profile) -> str:
    rows = []
    for c in plan.clients:
        if c.status != "planned":
            rows.append([c.id, format_size(c.budget_bytes), "-", "-", "-", "-", "-", f"dropped: {c.extras.get('reason', '')}"])
            continue
        ranks = sorted({e.rank for e in c.entries})
        extra = ""
        if "round_time_s" in c.extras:
            extra = f"{c.extras['round_time_s']:.1f} s/round, {format_size(c.extras['bytes_up'])} up"
        rows.append([c.id, format_size(c.budget_bytes), format_size(c.predicted_bytes), f"{c.predicted_bytes / c.budget_bytes:.0%}",
                     _layers(c.entries), str(len(c.entries)), f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0]),
                     f"{c.objective:.3f} {extra}".strip() + (" (feasible: time limit)" if c.extras.get("solver_status") == "feasible" else "")
                     + (" [checkpointing]" if c.extras.get("gradient_checkpointing") else "")])
    head = (f"{plan.profile}: batch {plan.batch_size} x {plan.seq_len} tokens, targets {','.join(plan.target_modules)}, "
            f"ranks {','.join(map(str, plan.ranks))}, solver {plan.solver} ({plan.seconds * 1000:.0f} ms), importance {plan.importance}"
            + (f", base {plan.quantization}" if plan.quantization else ""))
    total = sum(c.objective for c in plan.clients)
    taking_part = sum(c.status == "planned" for c in plan.clients)
    foot = f"clients taking part: {taking_part}/{len(plan.clients)}; total value {total:.3f} (1.0 = every layer of one client at the top rank)"
    return "\n".join([head, table(rows, ["client", "budget", "predicted", "use", "layers", "entries", "ranks", "value"]), foot])
