"""Local and global IG-Scores for non-IID clients, and the plans they lead to (BANKING77, MiniLM).

    python examples/importance_clients.py        # ~1-2 minutes on 2 cores; reads ../shared/data

Four clients hold Dirichlet(0.3) shares of BANKING77's 77 intents. Each computes its local
IG-Score on 128 of its own records; the server's global score before round 1 is their mean;
each client plans with Γ = β·local + (1 − β)·global (β = 0.5) under its memory budget. Printed:
how much the clients' scores agree, and how their plans differ from a plan made with the
uniform score and with the depth prior.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_planner.data import load_records, partition
from lora_planner.fleet import budgets_to_clients
from lora_planner.importance import combine, compute_importance, from_values, initial_global, spearman
from lora_planner.memory import fixed_bytes, predict_tensor_bytes
from lora_planner.plan import plan_fleet
from lora_planner.profiling import profile_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
TARGETS = ("attention.self.query", "attention.self.value", "intermediate.dense")


def layers(plan) -> str:
    c = plan.clients[0]
    return ",".join(f"{e.layer}:{e.module.split('.')[-1][0]}{e.rank}" for e in sorted(c.entries, key=lambda e: (e.layer, e.module)))


def main() -> None:
    recs = load_records(DATA, "text", "category", num_labels=77)
    part = partition(recs.labels, 4, "dirichlet", alpha=0.3, seed=0)
    profile = profile_model("all-minilm-l6-v2", batch_size=8, seq_len=64, task="seq-cls", num_labels=77, validate=0)
    local = {}
    for cid, idx in part.clients.items():
        imp = compute_importance("ig", "all-minilm-l6-v2", profile.module_names, profile.num_layers, task="seq-cls",
                                 num_labels=77, data=recs, samples=min(128, len(idx)), seed=0, max_length=64, indices=idx)
        local[cid] = from_values(imp["values"], profile.module_names)
        print(f"{cid}: {len(idx)} records, local IG in {imp['seconds']:.1f} s; "
              f"top entry {profile.module_names[int(local[cid].argmax() % 6)]} of layer {int(local[cid].argmax() // 6)}")
    glob = initial_global(list(local.values()))
    ids = list(local)
    pairs = [spearman(local[a], local[b]) for i, a in enumerate(ids) for b in ids[i + 1:]]
    print(f"clients' local scores, pairwise Spearman: {min(pairs):.3f} to {max(pairs):.3f}")

    cols = [profile.module_names.index(t) for t in TARGETS]
    # A budget with room for part of the model: a third of the way from the least a step needs
    # to everything at rank 64.
    low = fixed_bytes(profile)
    full = predict_tensor_bytes(profile, {(layer, t): 64 for layer in range(profile.num_layers) for t in TARGETS})
    budget = budgets_to_clients([str(int(low + (full - low) / 3))])
    print(f"\nplans at {budget[0].memory_bytes / 2**20:.1f} MiB (least {low / 2**20:.1f}, all at r=64 {full / 2**20:.1f}); "
          "entries as layer:module-initial+rank")
    for name, values in (("uniform", "uniform"), ("depth-prior", "depth-prior")):
        print(f"  {name:14s} {layers(plan_fleet(profile, budget, target_modules=TARGETS, importance=values))}")
    for cid in ids:
        gamma = combine(local[cid], glob, beta=0.5)[:, cols]
        plan = plan_fleet(profile, budget, target_modules=TARGETS, importance=gamma)
        print(f"  {cid + ' (IG)':14s} {layers(plan)}")
    print(f"\nshare of the IG-Score in the top two layers (mean over clients): "
          f"{np.mean([local[c][-2:].sum() for c in ids]):.1%}")


if __name__ == "__main__":
    main()
