"""Block-subset census: the evidence behind the memory model's block structure (docs/memory-model.md).

For each architecture (truncated to 6 full-width blocks, meta-traced), every subset of one block's
LoRA-able modules is adapted (rank 8) once in a middle block (block 3) and once in the top block
(block 5), with block 1 as the lowest trained block. Measured against the single modules:

* middle: is a subset's cost the sum of its modules' costs? (worst residual per phase)
* top: which rule gives the top block's extra over the sum -- ``sum`` of the singles' extras, their
  ``max``, or the ``moment`` rule the memory model uses (``memory.top_extra``)? Worst over- and
  under-prediction per phase.

    python bench/block_census.py [--models gpt2,...] [--shape 1x512] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from lora_planner.memory import DTYPE_BYTES, adapter_state_per_rank
from lora_planner.profile import PHASES, shipped_models
from lora_planner.profiling.build import default_task, discover, load_config, truncated
from lora_planner.profiling.trace import trace_assignment

LAYERS, LOW, MIDDLE, TOP, RANK = 6, 1, 3, 5, 8


def census(name: str, batch: int, seq: int, dtype: str) -> dict:
    config = truncated(load_config(name), LAYERS)
    task = default_task(config)
    if task == "seq-cls":
        config.num_labels = 2
    disc = discover(config, task, dtype)
    modules, prefix = disc.modules, disc.prefix
    names = [m.name for m in modules]
    ref = names[-1]

    def trace(block, subset):
        a = {(LOW, ref): RANK, **{(block, m): RANK for m in subset}}
        return trace_assignment(config, task, dtype, prefix, a, batch, seq)

    base = trace(MIDDLE, ())
    inc = lambda peaks: {p: peaks[p] - base[p] for p in PHASES}  # noqa: E731
    subsets = [s for k in range(1, len(names) + 1) for s in itertools.combinations(names, k)]
    mid = {s: inc(trace(MIDDLE, s)) for s in subsets}
    top = {s: inc(trace(TOP, s)) for s in subsets}
    single = {m: mid[(m,)] for m in names}
    extra1 = {m: {p: top[(m,)][p] - single[m][p] for p in PHASES} for m in names}
    state = {p: adapter_state_per_rank(modules, p) for p in PHASES}  # what the memory model subtracts
    static = {m: {p: RANK * state[p][m] for p in PHASES} for m in names}
    out = {"modules": names, "subsets": len(subsets), "middle_residual": {}, "rules": {}}
    for p in PHASES:
        out["middle_residual"][p] = max((mid[s][p] - sum(single[m][p] for m in s) for s in subsets), key=abs)
        errs = {"sum": [], "max": [], "moment": []}
        for s in subsets:
            if len(s) < 2:
                continue
            true = top[s][p] - sum(single[m][p] for m in s)
            errs["sum"].append(sum(extra1[m][p] for m in s) - true)
            errs["max"].append(max(extra1[m][p] for m in s) - true)
            moment = max(extra1[m][p] - sum(single[j][p] - static[j][p] for j in s[i + 1:]) for i, m in enumerate(s))
            errs["moment"].append(moment - true)
        out["rules"][p] = {r: {"over": max(max(e), 0), "under": -min(min(e), 0)} for r, e in errs.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(shipped_models()))
    ap.add_argument("--shape", default="1x512", help="BATCHxSEQ")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    args = ap.parse_args()
    batch, seq = (int(x) for x in args.shape.split("x"))
    rows, results = [], {}
    for name in args.models.split(","):
        if name == "llama-2-70b":
            continue  # the same block structure as Llama-2-7B, 8x the tracing time
        t = time.perf_counter()
        r = census(name, batch, seq, args.dtype)
        r["seconds"] = time.perf_counter() - t
        results[name] = r
        mr = max(abs(v) for p, v in r["middle_residual"].items() if p != "opt")
        cells = [f"{r['rules'][p][rule]['under'] / 1e6:.2f}/{r['rules'][p][rule]['over'] / 1e6:.2f}"
                 for rule in ("sum", "max", "moment") for p in ("fwd", "bwd")]
        rows.append([name, r["subsets"], f"{mr / 1e6:.2f}", *cells, f"{r['seconds']:.0f}"])
        print(rows[-1], flush=True)
    head = ["model", "subsets", "middle resid. MB"] + [f"{rule} {p} under/over MB" for rule in ("sum", "max", "moment")
                                                       for p in ("fwd", "bwd")] + ["s"]
    print(table(rows, head))
    print("wrote", write(f"block_census_{args.shape}_{args.dtype}", {"shape": [batch, seq], "dtype": args.dtype,
                                                                       "models": results}))


if __name__ == "__main__":
    main()
