"""How far each rule's ΔW is from the exact Σ p_k B_k A_k, for random heterogeneous updates.

    python bench/aggregation_noise.py [--clients 8] [--trials 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_update, table, write  # noqa: E402

from lora_planner.aggregation import AGGREGATORS, delta_weights, get_aggregator

RANKS = (2, 4, 8, 16, 32)


def updates(n_clients: int, modules: int, width: int, seed: int, same_rank: bool = False):
    g = torch.Generator().manual_seed(seed)
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(modules)]
    out = []
    for _ in range(n_clients):
        r = 8 if same_rank else RANKS[int(torch.randint(len(RANKS), (1,), generator=g))]
        u = random_update(names, r, width, 1, g, a_scale=width**-0.5, b_scale=r**-0.5)
        u.num_examples = int(torch.randint(50, 500, (1,), generator=g))  # drawn after the factors, as before
        out.append(u)
    return out


def exact(us):
    total = sum(u.num_examples for u in us)
    ref = {}
    for u in us:
        for k, A in u.state_dict.items():
            if k.endswith("lora_A.weight"):
                m = k[len("base_model.model."):-len(".lora_A.weight")]
                B = u.state_dict[k.replace("lora_A", "lora_B")]
                ref[m] = ref.get(m, 0) + u.num_examples / total * 2.0 * (B @ A)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()
    res = {}
    for setting, same in (("mixed ranks 2-32", False), ("one rank (8)", True)):
        for name in AGGREGATORS:
            if name == "fedit" and not same:
                res[(setting, name)] = None
                continue
            errs = []
            for t in range(args.trials):
                us = updates(args.clients, 4, args.width, seed=t, same_rank=same)
                got, ref = delta_weights(get_aggregator(name).aggregate(us)), exact(us)
                errs += [float(torch.linalg.norm(got[m] - ref[m]) / torch.linalg.norm(ref[m])) for m in ref]
            res[(setting, name)] = statistics.mean(errs)
    rows = [[name] + [("refuses" if res[(s, name)] is None else f"{res[(s, name)]:.2e}") for s in ("mixed ranks 2-32", "one rank (8)")]
            for name in AGGREGATORS]
    print(table(rows, ["rule", "rel. error, mixed ranks 2-32", "rel. error, one rank (8)"]))
    print("reference: the exact Σ p_k B_k A_k of the same updates (flora should sit at float precision)")
    print("wrote", write("aggregation_noise", {"clients": args.clients, "trials": args.trials, "width": args.width,
                                               "errors": {f"{s}|{n}": v for (s, n), v in res.items()}}))


if __name__ == "__main__":
    main()
