"""`lora-planner profile`: trace a model's training memory into a profile JSON."""
from __future__ import annotations

import argparse
import sys

from ..errors import LoraPlannerError
from ..units import format_size
from .common import positive_int, progress_factory, table

EXAMPLES = """examples:
  lora-planner profile llama-2-7b -o llama-2-7b.json              # a shipped config, traced on meta tensors
  lora-planner profile ./my-model/ --batch-size 4 --seq-len 1024 -o my.json
  lora-planner profile config.json --task seq-cls --num-labels 77 --target-modules query,value -o cls.json
  lora-planner profile llama-2-7b --quantization nf4 --gradient-checkpointing -o q.json   # QLoRA's levers
  lora-planner profile llama-2-7b --conditions all -o profiles/      # all six condition sets in one run:
                                                                   # llama-2-7b.json, llama-2-7b@gc.json, ...@nf4+gc.json
  lora-planner profile --list                                      # shipped model names and condition sets

layer importance (stored in the profile; `lora-planner solve --profile` then uses it):
  lora-planner profile all-minilm-l6-v2 --task seq-cls --num-labels 77 --seq-len 64 \\
      --importance ig --data ../shared/data/banking77/train.csv --label-column category --samples 256 -o minilm-b77.json
  lora-planner profile ./my-llama/ --importance ig --data dolly.jsonl --samples 64 -o my.json   # causal-LM prompt template
  lora-planner profile llama-2-7b --importance depth-prior -o llama-depth.json

importance scores: {scores}"""


def register(sub) -> None:
    from ..importance import SCORES

    scores = "; ".join(f"{k} ({v.summary})" for k, v in SCORES.items())
    p = sub.add_parser("profile", help="measure per-layer LoRA training memory of a model", epilog=EXAMPLES.format(scores=scores),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="MODEL", help="shipped model name, local Hugging Face folder, or config.json path")
    p.add_argument("--list", action="store_true", help="list shipped model configs and the shipped profiles' conditions, and exit")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="profile the step with gradient checkpointing on (non-reentrant, input embeddings requiring grad)")
    p.add_argument("--quantization", choices=("nf4", "int8"), default=None,
                   help="profile on a bitsandbytes base prepared the QLoRA way (peft.prepare_model_for_kbit_training): nf4 "
                        "(4-bit NF4, double quantisation, compute dtype = --dtype) or int8 (LLM.int8()); needs bitsandbytes")
    p.add_argument("--conditions", metavar="LIST", default=None,
                   help="several condition sets in one run (the trace workers start once): all, or e.g. "
                        "plain,gc,nf4,nf4+gc,int8,int8+gc; -o is then a folder, one NAME[@set].json per set (the shipped "
                        "layout; NAME: --name or the model's name)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=1)
    p.add_argument("--seq-len", type=positive_int("--seq-len"), default=512)
    p.add_argument("--dtype", default="bf16", help="frozen weights: bf16 | fp16 | fp32 (default bf16)")
    p.add_argument("--task", default=None, help="causal-lm | seq-cls (default: from the config's architecture)")
    p.add_argument("--num-labels", type=positive_int("--num-labels"), default=2, help="classes for seq-cls (default 2)")
    p.add_argument("--target-modules", default=None, help="default LoRA targets, comma-separated (default: PEFT's for the architecture)")
    p.add_argument("--method", default="traced", help="traced (meta tensors, no weights; default) | measured (real CPU tensors) | cuda")
    p.add_argument("--validate", type=int, default=10, metavar="N", help="full-depth random assignments to validate on (default 10)")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest validation error allowed before refusing to write (default 0.05)")
    p.add_argument("--force", action="store_true", help="write the profile even if its validation error exceeds --tolerance")
    p.add_argument("--workers", type=int, default=None, help="trace processes (default: 2)")
    p.add_argument("--name", default=None, help="name stored in the profile (default: MODEL)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the profile JSON (a folder with --conditions)")
    g = p.add_argument_group("layer importance")
    g.add_argument("--importance", metavar="SCORE", default=None, help="ig | uniform | depth-prior | weight-norm (default: none stored)")
    g.add_argument("--data", metavar="PATH", help="CSV, JSONL or local datasets folder for --importance ig")
    g.add_argument("--text-column", default="text", help="seq-cls text column (default text)")
    g.add_argument("--label-column", default="label", help="seq-cls label column (default label)")
    g.add_argument("--instruction-column", default="instruction", help="causal-lm instruction field (default instruction)")
    g.add_argument("--context-column", default="context", help="causal-lm context field, optional (default context)")
    g.add_argument("--response-column", default="response", help="causal-lm response field (default response)")
    g.add_argument("--samples", type=positive_int("--samples"), default=128, help="records in the IG sample (default 128)")
    g.add_argument("--seed", type=int, default=0, help="draws the IG sample and any new head (default 0)")
    g.add_argument("--probe-rank", type=positive_int("--probe-rank"), default=8, help="LoRA rank while scoring (default 8)")
    g.add_argument("--ig-batch-size", type=positive_int("--ig-batch-size"), default=8, help="mini-batch of the IG sample (default 8)")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.list:
        from ..profile import shipped_conditions
        from ..profiling.config import shipped_configs

        conditions = shipped_conditions()
        for name in shipped_configs():
            sets = conditions.get(name)
            print(f"{name:18s} {', '.join(sets) if sets else '(config only: profile it yourself)'}")
        return 0
    if not args.model:
        raise LoraPlannerError("MODEL", "given", "nothing", "Pass a shipped name (see --list), a folder or a config.json.")
    if args.conditions is not None:
        return _run_conditions(args)
    if not args.output:
        raise LoraPlannerError("-o/--output", "a file path for the profile", "nothing", "E.g. -o profile.json.")
    importance = _importance_job(args)  # checks data and weights before the long trace
    from ..profiling import profile_model

    profile = profile_model(args.model, **_profile_kwargs(args), gradient_checkpointing=args.gradient_checkpointing,
                            quantization=args.quantization)
    if importance:
        import dataclasses

        profile = dataclasses.replace(profile, importance=importance(profile))
    print(report(profile))
    worst = profile.validation.get("max_abs_rel_error", 0.0)
    if _refused(worst, args):
        raise LoraPlannerError("model error", f"at most --tolerance {args.tolerance:.3f}", f"{worst:.4f}",
                               "The profile was not written; use --force to write it anyway, or --method measured.")
    profile.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _run_conditions(args) -> int:
    """``--conditions``: every set profiled with one pool of workers; written only if every one passes."""
    from pathlib import Path

    from ..profile import CONDITION_SUFFIX, condition_name, parse_conditions

    if args.gradient_checkpointing or args.quantization:
        raise LoraPlannerError("--conditions", "not combined with --gradient-checkpointing or --quantization",
                               args.conditions, "Name the sets in --conditions, e.g. --conditions nf4+gc.")
    sets = parse_conditions(args.conditions)
    if not args.output:
        raise LoraPlannerError("-o/--output", "a folder for the profiles with --conditions", "nothing", "E.g. -o profiles/.")
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise LoraPlannerError("-o/--output", "a folder with --conditions (one file per set)", args.output,
                               "E.g. -o profiles/.")
    stem = args.name or _model_stem(args.model)
    importance = _importance_job(args)
    from ..profiling import profile_conditions

    profiles = profile_conditions(args.model, [condition_name(gc, q) for gc, q in sets], **_profile_kwargs(args))
    if importance:
        import dataclasses

        block = importance(next(iter(profiles.values())))  # the same layers and modules in every set
        profiles = {k: dataclasses.replace(p, importance=block) for k, p in profiles.items()}
    rows, failed = [], []
    for cond, profile in profiles.items():
        print(report(profile))
        worst = profile.validation.get("max_abs_rel_error", 0.0)
        if _refused(worst, args):
            failed.append(f"{cond} {worst:.4f}")
        rows.append([cond, f"{stem}{CONDITION_SUFFIX[cond]}.json", f"{worst:.3%}", f"{profile.validation.get('seconds', 0):.1f}"])
    if failed:
        raise LoraPlannerError("model error", f"at most --tolerance {args.tolerance:.3f} in every set", ", ".join(failed),
                               "No profile was written; use --force to write them anyway, or --method measured.")
    folder.mkdir(parents=True, exist_ok=True)
    for cond, profile in profiles.items():
        profile.save(folder / f"{stem}{CONDITION_SUFFIX[cond]}.json")
    print(table(rows, ["condition set", "file", "max validation error", "seconds"]))
    print(f"wrote {len(profiles)} profiles to {folder}", file=sys.stderr)
    return 0


def _profile_kwargs(args) -> dict:
    """What ``profile_model`` and ``profile_conditions`` both take from the flags."""
    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()] if args.target_modules else None
    return dict(batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype, task=args.task,
                num_labels=args.num_labels, target_modules=targets, method=args.method, validate=args.validate,
                name=args.name, workers=args.workers, progress=progress_factory())


def _refused(worst: float, args) -> bool:
    """A validation error over --tolerance (NaN: nothing validated) and no --force: the profile is not written."""
    return worst == worst and worst > args.tolerance and not args.force


def _model_stem(model: str) -> str:
    """A file name for a model: a shipped name as it is, a folder's name, a config.json's folder's name."""
    from pathlib import Path

    p = Path(model)
    if p.is_dir():
        return p.resolve().name
    if p.is_file():
        return p.resolve().parent.name if p.name == "config.json" else p.stem
    return model


def _importance_job(args):
    """None, or a function profile -> importance block, after checking every input it will need."""
    if args.importance is None and args.data is None:
        return None
    from ..importance import compute_importance, get_score

    name = args.importance or "ig"
    score = get_score(name)
    data = None
    if args.data:
        from ..data import load_instructions, load_records
        from ..profiling.build import default_task, load_config

        task = args.task or default_task(load_config(args.model))
        if task == "seq-cls":
            data = load_records(args.data, args.text_column, args.label_column, num_labels=args.num_labels)
        else:
            data = load_instructions(args.data, args.instruction_column, args.context_column, args.response_column)
        from ..data.tokenize import sample_indices

        sample_indices(len(data), args.samples, args.seed)  # the sampling rule, checked before tracing
    elif score.needs_data:
        raise LoraPlannerError("--data", f"a dataset for --importance {name}", "nothing", "E.g. --data train.csv.")
    if score.needs_model:
        from ..importance.measure import require_weights

        require_weights(args.model)

    def run_it(profile):
        return compute_importance(name, args.model, profile.module_names, profile.num_layers, task=profile.task,
                                  num_labels=args.num_labels, data=data, samples=args.samples, seed=args.seed,
                                  probe_rank=args.probe_rank, batch_size=args.ig_batch_size, max_length=args.seq_len,
                                  progress=progress_factory())
    return run_it


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
            f"{c['seq_len']} tokens, {c['dtype']}, AdamW, {c['method']}, condition set {profile.condition_set}\n"
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
    if profile.importance:
        out.append(importance_table(profile))
    return "\n".join(out)


def importance_table(profile) -> str:
    """Per-layer importance (share of the total, in %), one column per module."""
    from ..importance import from_values

    imp = profile.importance
    mat = from_values(imp["values"], profile.module_names)
    short = [m.split(".")[-1] if sum(n.split(".")[-1] == m.split(".")[-1] for n in profile.module_names) == 1 else m
             for m in profile.module_names]
    rows = [[str(layer)] + [f"{100 * x:.1f}" for x in mat[layer]] + [f"{100 * mat[layer].sum():.1f}"] for layer in range(len(mat))]
    facts = ", ".join(f"{k} {imp[k]}" for k in ("samples", "seed", "probe_rank") if k in imp)
    head = f"importance ({imp['method']}{', ' + facts if facts else ''}; {imp.get('seconds', 0):.1f} s), % of the total:"
    return head + "\n" + table(rows, ["layer"] + short + ["layer total"])
