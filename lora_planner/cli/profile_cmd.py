"""`lora-planner profile`: trace a model's training memory into a profile JSON."""
from __future__ import annotations

import argparse
import sys

from ..errors import LoraPlannerError
from ..units import format_size
from .common import positive_int, progress_factory, table

EXAMPLES = """examples:
  lora-planner profile llama-2-7b -o llama-2-7b.json              # a shipped config, traced on fake tensors
  lora-planner profile ./my-model/ --batch-size 4 --seq-len 1024 -o my.json
  lora-planner profile config.json --task seq-cls --num-labels 77 --target-modules query,value -o cls.json
  lora-planner profile --list                                      # shipped model names"""


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure per-layer LoRA training memory of a model", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="MODEL", help="shipped model name, local Hugging Face folder, or config.json path")
    p.add_argument("--list", action="store_true", help="list shipped model configs and exit")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=1)
    p.add_argument("--seq-len", type=positive_int("--seq-len"), default=512)
    p.add_argument("--dtype", default="bf16", help="frozen weights: bf16 | fp16 | fp32 (default bf16)")
    p.add_argument("--task", default=None, help="causal-lm | seq-cls (default: from the config's architecture)")
    p.add_argument("--num-labels", type=positive_int("--num-labels"), default=2, help="classes for seq-cls (default 2)")
    p.add_argument("--target-modules", default=None, help="default LoRA targets, comma-separated (default: PEFT's for the architecture)")
    p.add_argument("--method", default="traced", help="traced (fake tensors, default) | measured (real CPU tensors) | cuda")
    p.add_argument("--validate", type=int, default=10, metavar="N", help="full-depth random assignments to validate on (default 10)")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest validation error allowed before refusing to write (default 0.05)")
    p.add_argument("--force", action="store_true", help="write the profile even if its validation error exceeds --tolerance")
    p.add_argument("--workers", type=int, default=None, help="trace processes (default: 2)")
    p.add_argument("--name", default=None, help="name stored in the profile (default: MODEL)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the profile JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.list:
        from ..profiling.build import shipped_configs

        print("\n".join(shipped_configs()))
        return 0
    if not args.model:
        raise LoraPlannerError("MODEL", "given", "nothing", "Pass a shipped name (see --list), a folder or a config.json.")
    if not args.output:
        raise LoraPlannerError("-o/--output", "a file path for the profile", "nothing", "E.g. -o profile.json.")
    from ..profiling import profile_model

    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()] if args.target_modules else None
    profile = profile_model(args.model, batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype, task=args.task,
                            num_labels=args.num_labels, target_modules=targets, method=args.method, validate=args.validate,
                            name=args.name, workers=args.workers, progress=progress_factory())
    print(report(profile))
    worst = profile.validation.get("max_abs_rel_error", 0.0)
    if worst == worst and worst > args.tolerance and not args.force:
        raise LoraPlannerError("model error", f"at most --tolerance {args.tolerance:.3f}", f"{worst:.4f}",
                               "The profile was not written; use --force to write it anyway, or --method measured.")
    profile.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def report(profile) -> str:
    """Per-layer table (predicted next to measured where traced) and the validation summary."""
    from ..memory import predict_tensor_bytes, rule_of_thumb_bytes

    v = profile.validation
    measured = {r["lowest_layer"]: r["measured_bytes"] for r in v.get("rows", []) if r["entries"] == len(profile.default_targets)}
    rows = []
    for layer in range(profile.num_layers):
        a = {(layer, m): 8 for m in profile.default_targets}
        pred = predict_tensor_bytes(profile, a)
        meas = measured.get(layer)
        rows.append([str(layer), format_size(pred), format_size(meas) if meas else "-",
                     f"{(pred - meas) / meas:+.2%}" if meas else "", format_size(rule_of_thumb_bytes(profile, a))])
    c = profile.conditions
    head = (f"{profile.name}: {profile.num_layers} blocks, {profile.param_count / 1e9:.2f} B params, batch {c['batch_size']} x "
            f"{c['seq_len']} tokens, {c['dtype']}, AdamW, {c['method']}\n"
            f"peak of a step with LoRA r=8 on {', '.join(profile.default_targets)} of one layer only:")
    out = [head, table(rows, ["layer", "predicted", "measured", "error", "params-only"])]
    if v:
        h = v.get("shape_holdout", {})
        out.append(f"validation on {v['n']} full-depth assignments: median |error| {v['median_abs_rel_error']:.3%}, "
                   f"max {v['max_abs_rel_error']:.3%}, worst under-prediction {v['worst_under_prediction']:.3%}")
        if h.get("n"):
            r0 = h["rows"][0]
            out.append(f"shape not fitted on (batch {r0['batch_size']} x {r0['seq_len']}): max |error| {h['max_abs_rel_error']:.3%}")
        out.append(f"profiled in {v.get('seconds', 0):.1f} s")
    return "\n".join(out)
