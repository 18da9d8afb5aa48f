"""The four papers' claims on one task at equal memory: BANKING77 with all-MiniLM-L6-v2, 10 clients.

Every method runs through the executor's presets (what `lora-planner train --method NAME` runs),
with the same fleet: three memory tiers derived from the profile at the training shape (the
smallest fits about two top blocks at a low rank, the largest every layer at the top rank), and
three tiers of device speed and bandwidth (the depth-rank time model gives each client's round
time; the straggler sets the round). Dirichlet(0.5) over labels for several seeds, plus one IID
seed of the six methods. Ablations of fed-pilot: uniform layer value (is the IG-Score worth it?),
HetLoRA aggregation (is STAgg worth it?), no re-planning.

    python bench/federated_compare.py            # full: 3 seeds (see SETTINGS), about 50-60 min on 2 cores
    python bench/federated_compare.py --quick    # 1 seed, 3 rounds, 4 methods: a few minutes

Writes bench/results/federated_compare.json as it goes (one method x seed at a time) and the plots
of docs/results.md into docs/img/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
IMG = ROOT / "docs" / "img"
METHODS = {  # name -> RunSettings overrides (a preset, and for ablations one part swapped)
    "fedit": {"method": "fedit"},
    "hetlora": {"method": "hetlora"},
    "flora": {"method": "flora"},
    "flexlora": {"method": "flexlora"},
    "legend": {"method": "legend"},
    "fed-pilot": {"method": "fed-pilot"},
    "fed-pilot/uniform-value": {"method": "fed-pilot", "importance": "uniform"},
    "fed-pilot/hetlora-agg": {"method": "fed-pilot", "aggregation": "hetlora"},
    "fed-pilot/no-replan": {"method": "fed-pilot", "replan_every": 0},
}
SIX = ["fedit", "hetlora", "flora", "flexlora", "legend", "fed-pilot"]
TIERS = [  # count, memory tier, FLOP/s, bytes/s: small-memory devices are also the slow ones
    (4, "small", 1e12, 1e6),
    (3, "mid", 4e12, 4e6),
    (3, "large", 16e12, 16e6),
]


def budgets(batch: int, seq: int) -> dict[str, int]:
    """Memory tiers from the profile at the training shape: small fits the top three blocks at rank 4 (or
    two at a higher rank), mid halfway between every layer at rank 4 and every layer at rank 64, large
    every layer at rank 64 (1 % above that prediction). The two lower tiers leave the planners a choice."""
    from lora_planner import predict_tensor_bytes
    from lora_planner.profiling import profile_model

    prof = profile_model("all-minilm-l6-v2", batch_size=batch, seq_len=seq, dtype="fp32", task="seq-cls", num_labels=77,
                         validate=2)
    L, targets = prof.num_layers, prof.resolve_targets(None)
    small = predict_tensor_bytes(prof, {(l, m): 4 for l in (L - 3, L - 2, L - 1) for m in targets}, batch, seq)
    all4 = predict_tensor_bytes(prof, {(l, m): 4 for l in range(L) for m in targets}, batch, seq)
    large = predict_tensor_bytes(prof, {(l, m): 64 for l in range(L) for m in targets}, batch, seq)
    return {"small": int(small * 1.01), "mid": int((all4 + large) / 2), "large": int(large * 1.01), "profile": prof}


def fleet_csv(path: Path, tiers: dict[str, int]) -> Path:
    lines = ["id,memory,throughput,bandwidth"]
    k = 0
    for count, tier, flops, bw in TIERS:
        for _ in range(count):
            lines.append(f"client-{k},{tiers[tier]},{flops},{bw}")
            k += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def one_run(name: str, seed: int, partition: str, fleet: Path, profile: Path, args, work: Path) -> dict:
    from lora_planner.federated import RunSettings, start

    s = RunSettings(model="all-minilm-l6-v2", task="seq-cls", num_labels=77, data=str(DATA / "train.csv"),
                    eval_data=str(DATA / "test.csv"), label_column="category", clients_file=str(fleet), profile=str(profile),
                    partition=partition, dirichlet=0.5, rounds=args.rounds, local_steps=args.local_steps,
                    batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, eval_samples=args.eval_samples, seed=seed,
                    **METHODS[name])
    folder = work / f"{name.replace('/', '_')}-{partition}-{seed}"
    t = time.perf_counter()
    start(s, folder, force=True)
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    over = [c["measured_peak_bytes"] - c["budget_bytes"] for r in rows for c in r["clients"] if c.get("measured_peak_bytes")]
    return {
        "final_accuracy": rows[-1]["eval"]["accuracy"],
        "accuracy_by_round": [r["eval"]["accuracy"] for r in rows],
        "bytes_total": sum((c.get("bytes_up") or 0) + (c.get("bytes_down") or 0) for r in rows for c in r["clients"]),
        "round_time_s": statistics.mean(r["round_time_s"] for r in rows),
        "clients_taking_part": sum(1 for c in rows[0]["clients"] if not c["dropped"]),
        "max_measured_over_budget_bytes": max(over) if over else None,
        "peaks": [[c["id"], c["budget_bytes"], c["predicted_bytes"], c["measured_peak_bytes"]]
                  for c in rows[0]["clients"] if c.get("measured_peak_bytes")],
        "wall_s": time.perf_counter() - t,
    }


def summarise(results: dict) -> list[list[str]]:
    rows = []
    for name, r in results["methods"].items():
        acc = r["final_accuracy"]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        rows.append([name, len(acc), f"{statistics.mean(acc):.4f} ± {sd:.4f}", f"{statistics.mean(r['bytes_total']) / 2**20:.1f}",
                     f"{statistics.mean(r['round_time_s']):.2f}", f"{min(r['clients_taking_part'])}",
                     f"{max(x for x in r['max_measured_over_budget_bytes'] if x is not None)}"])
    return rows


def plots(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    IMG.mkdir(parents=True, exist_ok=True)
    methods = results["methods"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in methods.items():
        acc = np.array(r["accuracy_by_round"])
        x = np.arange(1, acc.shape[1] + 1)
        ax.plot(x, acc.mean(0), label=name, lw=1.4, ls="--" if "/" in name else "-")
        if acc.shape[0] > 1:
            ax.fill_between(x, acc.min(0), acc.max(0), alpha=0.15)
    ax.set(xlabel="round", ylabel="eval accuracy (BANKING77)", title="accuracy per round (Dirichlet 0.5; band = min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "compare_accuracy_by_round.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, r in methods.items():
        a1.scatter([b / 2**20 for b in r["bytes_total"]], r["final_accuracy"], label=name, s=22)
    a1.set(xlabel="MiB sent over the run (all clients, up + down)", ylabel="final accuracy", title="accuracy vs communication")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    names = list(methods)
    a2.bar(range(len(names)), [statistics.mean(methods[n]["round_time_s"]) for n in names], color="#3b75af")
    a2.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    a2.set(ylabel="simulated round time (s, straggler)", title="round time (depth-rank time model)")
    fig.tight_layout()
    fig.savefig(IMG / "compare_bytes_and_time.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, r in methods.items():
        pts = [p for run in r["peaks"] for p in run]
        if pts:
            ax.scatter([p[2] / 2**20 for p in pts], [p[3] / 2**20 for p in pts], s=14, label=name)
    lims = ax.get_xlim()
    ax.plot(lims, lims, color="#999999", ls="--", lw=0.8, label="measured = predicted")
    for tier in ("small", "mid", "large"):
        ax.axhline(results["settings"]["budgets_bytes"][tier] / 2**20, color="#cc4444", lw=0.6, ls=":")
    ax.set(xlabel="predicted peak (MiB)", ylabel="measured peak (MiB)", title="per client: predicted vs measured (red: budgets)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMG / "compare_memory.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 rounds, 4 methods, no IID")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--eval-samples", type=int, default=500)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    names = args.methods.split(",")
    iid = SIX
    if args.quick:
        args.seeds, args.rounds = 1, 3
        names, iid = ["fedit", "hetlora", "legend", "fed-pilot"], []
    work = Path(tempfile.mkdtemp(prefix="federated_compare-"))
    tiers = budgets(args.batch_size, args.seq_len)
    profile = work / "profile.json"
    tiers.pop("profile").save(profile)
    fleet = fleet_csv(work / "fleet.csv", tiers)
    print("budgets:", {k: f"{v / 2**20:.1f} MiB" for k, v in tiers.items()}, flush=True)
    results = {"settings": {"model": "all-minilm-l6-v2", "data": "banking77", "clients": 10, "dirichlet": 0.5,
                            "seeds": args.seeds, "rounds": args.rounds, "local_steps": args.local_steps,
                            "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
                            "eval_samples": args.eval_samples, "budgets_bytes": tiers,
                            "tiers": [{"count": c, "memory": t, "throughput_flops": f, "bandwidth_bytes": b} for c, t, f, b in TIERS]},
               "methods": {}, "iid": {}}
    name_out = "federated_compare_quick" if args.quick else "federated_compare"
    for seed in range(args.seeds):
        for name in names:
            r = one_run(name, seed, "dirichlet", fleet, profile, args, work)
            m = results["methods"].setdefault(name, {k: [] for k in r})
            for k, v in r.items():
                m[k].append(v)
            print(f"seed {seed} {name}: acc {r['final_accuracy']:.4f}, {r['bytes_total'] / 2**20:.1f} MiB, "
                  f"{r['round_time_s']:.2f} s/round, {r['wall_s']:.0f} s wall", flush=True)
            write(name_out, results)
    for name in iid:
        r = one_run(name, 0, "iid", fleet, profile, args, work)
        results["iid"][name] = {k: v for k, v in r.items() if k != "peaks"}
        print(f"iid {name}: acc {r['final_accuracy']:.4f}", flush=True)
        write(name_out, results)
    print(table(summarise(results), ["method", "seeds", "final accuracy (mean ± sd)", "MiB total", "s/round (sim.)",
                                     "clients taking part", "max measured - budget (B)"]))
    if not args.quick:
        plots(results)
    print("wrote", write(name_out, results))


if __name__ == "__main__":
    main()
