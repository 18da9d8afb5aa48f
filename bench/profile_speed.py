"""Wall time and peak RSS (whole process tree) to profile Llama-2-7B and a 70B-sized Llama, traced.
Reference in the same run: one full-depth trace of the same model (profile time / trace time).

    python bench/profile_speed.py [--validate 10]
    python bench/profile_speed.py --conditions [--validate 10]

``--conditions``: Llama-2-7B's six condition sets (plain, gc, nf4, nf4+gc, int8, int8+gc), each in a fresh
process of its own (the reference: what six `lora-planner profile` runs cost), then all six in one fresh
process (``profile_conditions``, as ``profile --conditions all``); the ratio is one run / six runs.
Machine speed drifts on shared VMs (2x between two days here): each mode also times a fresh process that only
imports torch, transformers and peft (``import_s``), the fixed cost in every single-set run, to compare days.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

PROFILE = "from lora_planner.profiling import profile_model; profile_model('{m}', validate={v})"
ONE_SET = ("from lora_planner.profiling import profile_model; "
           "profile_model('{m}', validate={v}, gradient_checkpointing={gc}, quantization={q!r})")
ALL_SETS = "from lora_planner.profiling import profile_conditions; profile_conditions('{m}', 'all', validate={v})"
SETS = [(False, None), (True, None), (False, "nf4"), (True, "nf4"), (False, "int8"), (True, "int8")]
IMPORTS = "import torch, transformers, peft"
TRACE = ("from lora_planner.profiling.build import load_config, discover; from lora_planner.profiling.trace import trace_assignment;"
         "c = load_config('{m}'); d = discover(c, 'causal-lm', 'bf16');"
         "trace_assignment(c, 'causal-lm', 'bf16', d.prefix, {{(0, 'self_attn.q_proj'): 8, (0, 'self_attn.v_proj'): 8}}, 1, 512)")


def measure(code: str) -> tuple[float, int]:
    """Wall seconds and the peak summed RSS of the process and all its descendants."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(proc.stderr.read().decode()[-2000:])
    return time.perf_counter() - t, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--validate", type=int, default=10)
    ap.add_argument("--conditions", action="store_true", help="Llama-2-7B's six condition sets: one run vs six runs")
    args = ap.parse_args()
    if args.conditions:
        return conditions(args.validate)
    rows, out = [], {}
    import_s, _ = measure(IMPORTS)
    print(f"fresh process importing torch, transformers, peft: {import_s:.1f} s", flush=True)
    for model, target in (("llama-2-7b", 30), ("llama-2-70b", 120)):
        wall, rss = measure(PROFILE.format(m=model, v=args.validate))
        trace_s, _ = measure(TRACE.format(m=model))
        out[model] = {"profile_s": wall, "peak_rss_bytes": rss, "one_full_trace_s": trace_s, "target_s": target}
        rows.append([model, f"{wall:.1f}", str(target), f"{rss / 2**30:.2f}", f"{trace_s:.1f}", f"{wall / trace_s:.1f}x"])
        print(rows[-1], flush=True)
    print(table(rows, ["model", "profile s", "target s", "peak RSS GiB (tree)", "one full trace s", "ratio"]))
    print("wrote", write("profile_speed", {"validate": args.validate, "import_s": import_s, "models": out}))


def conditions(validate: int, model: str = "llama-2-7b", target: float = 90.0) -> None:
    from lora_planner.profile import condition_name

    rows, out = [], {"validate": validate, "model": model, "target_all_s": target, "each_s": {}}
    out["import_s"], _ = measure(IMPORTS)
    rows.append(["(imports only)", "own process", f"{out['import_s']:.1f}", ""])
    print(rows[-1], flush=True)
    for gc, q in SETS:
        wall, _ = measure(ONE_SET.format(m=model, v=validate, gc=gc, q=q))
        out["each_s"][condition_name(gc, q)] = wall
        rows.append([condition_name(gc, q), "own process", f"{wall:.1f}", "30"])
        print(rows[-1], flush=True)
        write("profile_speed_conditions", out)
    separate = sum(out["each_s"].values())
    wall, rss = measure(ALL_SETS.format(m=model, v=validate))
    out.update(all_in_one_s=wall, six_runs_s=separate, ratio=wall / separate, peak_rss_bytes=rss)
    rows += [["all six", "six processes", f"{separate:.1f}", ""],
             ["all six", "one process (--conditions all)", f"{wall:.1f}", f"{target:.0f}"]]
    print(table(rows, ["condition set", "how", "wall s", "target s"]))
    print(f"one run / six runs: {wall / separate:.2f}; peak RSS of the one run {rss / 2**30:.2f} GiB")
    print("wrote", write("profile_speed_conditions", out))


if __name__ == "__main__":
    main()
