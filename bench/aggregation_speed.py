"""Seconds per round and peak memory for each rule: 100 clients, Llama-2-7B-shaped adapters
(32 layers x q,v, 4096 wide, ranks 4-64). Reference in the same run: the time to compute the exact
dense Σ p_k B_k A_k for every module (what a naive server would do).

    python bench/aggregation_speed.py [--clients 100] [--rules fedit,hetlora,stagg,flora,flexlora]

Each rule is timed on a fresh aggregator (round 1); stagg also on round 2, where its temporal
step (history, relative change per module) runs too.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_update, table, write  # noqa: E402

from lora_planner.aggregation import AGGREGATORS, get_aggregator

RANKS = (4, 8, 16, 32, 64)


def fleet(n: int, width: int, layers: int, same_rank: bool):
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{l}.self_attn.{m}" for l in range(layers) for m in ("q_proj", "v_proj")]
    return [random_update(names, 16 if same_rank else RANKS[k % len(RANKS)], width, 100 + k, g, a_scale=0.01, b_scale=0.01)
            for k in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rules", default=",".join(AGGREGATORS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    mixed = fleet(args.clients, args.width, args.layers, same_rank=False)
    same = None
    rows, out = [], {}
    name = "model.layers.0.self_attn.q_proj"
    t = time.perf_counter()
    dense = sum(u.state_dict[f"base_model.model.{name}.lora_B.weight"] @ u.state_dict[f"base_model.model.{name}.lora_A.weight"]
                for u in mixed)
    dense_s = (time.perf_counter() - t) * 2 * args.layers  # one module timed, scaled to all modules
    del dense
    input_gib = sum(t.numel() * t.element_size() for u in mixed for t in u.state_dict.values()) / 2**30
    print(f"{args.clients} clients, {2 * args.layers} modules each, {args.width} wide: {input_gib:.2f} GiB of mixed-rank updates", flush=True)
    for name in args.rules.split(","):
        us = mixed
        if name == "fedit":
            same = same or fleet(args.clients, args.width, args.layers, same_rank=True)
            us = same
        agg = get_aggregator(name)
        for rnd in (1, 2) if name == "stagg" else (1,):
            t = time.perf_counter()
            agg.aggregate(us)
            sec = time.perf_counter() - t
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            key = name if rnd == 1 else f"{name} (round 2)"
            out[key] = {"seconds": sec, "peak_rss_bytes_so_far": rss}
            rows.append([key, "16 (same)" if name == "fedit" else "4-64", f"{sec:.2f}", f"{sec / dense_s:.3f}", f"{rss / 2**30:.2f}"])
            print(rows[-1], flush=True)
    print(table(rows, ["rule", "ranks", "s/round", "vs dense Σ p BA", "peak RSS GiB (process, cumulative)"]))
    print(f"input: {input_gib:.2f} GiB of client factors (mixed ranks) held by the process throughout")
    print(f"reference: dense Σ p_k B_k A_k over all {2 * args.layers} modules ≈ {dense_s:.1f} s (timed on one module)")
    print("wrote", write("aggregation_speed", {"clients": args.clients, "width": args.width, "layers": args.layers,
                                               "dense_reference_s": dense_s, "input_gib": input_gib,
                                               "rules": out}))


if __name__ == "__main__":
    main()
