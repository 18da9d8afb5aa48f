"""`lora-planner estimate`: predicted peak memory of one PEFT adapter_config.json."""
from __future__ import annotations

import argparse
import json

from ..adapter_config import assignment_from_adapter_config, read_adapter_config
from ..memory import predict_phases, rule_of_thumb_bytes, shape_note
from ..units import format_size, parse_size
from .common import add_profile_args, get_profile, positive_int

EXAMPLES = """examples:
  lora-planner estimate --model llama-2-7b --lora-config ./adapter/ 
  lora-planner estimate --profile my.json --lora-config adapter_config.json --batch-size 4 --seq-len 1024 --json
  lora-planner estimate --model llama-2-7b --lora-config ./adapter/ --reserve 600MiB   # + CUDA context etc."""


def register(sub) -> None:
    p = sub.add_parser("estimate", help="predict the peak training memory of one LoRA config", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(p)
    p.add_argument("--lora-config", required=True, metavar="DIR_OR_JSON", help="a PEFT adapter_config.json or its folder")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None, help="default: the profile's")
    p.add_argument("--seq-len", type=positive_int("--seq-len"), default=None, help="default: the profile's")
    p.add_argument("--reserve", default="0", help="runtime reserve added to the tensor peak (CUDA context, allocator); default 0")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=run)


def estimate(profile, cfg: dict, batch: int | None, seq: int | None, reserve_bytes: int) -> dict:
    a = assignment_from_adapter_config(profile, cfg)
    batch = batch or profile.batch_size
    seq = seq or profile.seq_len
    phases = predict_phases(profile, a, batch, seq)
    tensor = max(phases.values())
    return {
        "model": profile.name, "batch_size": batch, "seq_len": seq,
        "adapted_modules": len(a), "layers": sorted({layer for layer, _ in a}),
        "trainable_params": sum(r * (profile.module(m).in_features + profile.module(m).out_features) for (_, m), r in a.items()),
        "predicted_tensor_bytes": tensor, "reserve_bytes": reserve_bytes, "predicted_bytes": tensor + reserve_bytes,
        "phase_bytes": phases, "binding_phase": max(phases, key=phases.get),
        "rule_of_thumb_bytes": rule_of_thumb_bytes(profile, a),
        "gradient_checkpointing": profile.checkpointed,
        "quantization": profile.quantization,
        "note": shape_note(profile, batch, seq),
    }


def run(args) -> int:
    profile = get_profile(args)
    reserve = 0 if str(args.reserve).strip() in ("0", "") else parse_size(args.reserve, "--reserve")
    result = estimate(profile, read_adapter_config(args.lora_config), args.batch_size, args.seq_len, reserve)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['model']}: {result['adapted_modules']} adapted modules in {len(result['layers'])} layers, "
          f"{result['trainable_params']:,} trainable params, batch {result['batch_size']} x {result['seq_len']}")
    print(f"  predicted peak tensors  {format_size(result['predicted_tensor_bytes'])}  (binding phase: {result['binding_phase']}; "
          f"gradient checkpointing {'on' if result['gradient_checkpointing'] else 'off'}, "
          f"base {result['quantization'] or 'unquantised'}, from the profile)")
    print(f"  reserve                 {format_size(result['reserve_bytes'])}")
    print(f"  predicted total         {format_size(result['predicted_bytes'])}")
    print(f"  params-only estimate    {format_size(result['rule_of_thumb_bytes'])}  (what parameter calculators say; no activations)")
    if result["note"]:
        print(f"  note: {result['note']}")
    return 0
