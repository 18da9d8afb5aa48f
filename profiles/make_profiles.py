"""Regenerate every shipped profile: `python profiles/make_profiles.py [--conditions LIST] [NAME ...]`.

Condition sets: every model plain and with gradient checkpointing (NAME.json, NAME@gc.json); the quantised
ones (QUANTIZED below) also on an nf4 and an int8 base, each with checkpointing off and on (NAME@nf4.json,
NAME@nf4+gc.json, NAME@int8.json, NAME@int8+gc.json). Each model's sets are profiled in one run
(`profile_conditions`: the trace workers start once). `--conditions` (e.g. `gc,nf4+gc`) limits the sets.

Shipped profiles: batch 1 x 512 tokens, bf16 frozen weights, PEFT's default adapter dtype (fp32),
AdamW, transformers' default attention, every linear module in the blocks as a candidate target (PEFT's
default targets recorded as the default), traced on meta tensors, validated on 10 full-depth assignments
(3 single-layer, 7 random) + 2 at a held-out shape. Sequence-classification models use 2 labels.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.05
SHIPPED = ["llama-2-7b", "llama-3-8b", "mistral-7b", "tinyllama-1.1b", "qwen2.5-0.5b", "qwen2.5-7b", "phi-3-mini",
           "gpt2", "roberta-large", "all-minilm-l6-v2"]
QUANTIZED = ["llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "tinyllama-1.1b"]


def main(argv: list[str]) -> None:
    from lora_planner.profile import CONDITION_SUFFIX, condition_name, parse_conditions
    from lora_planner.profiling import profile_conditions

    wanted = None
    if "--conditions" in argv:
        i = argv.index("--conditions")
        wanted = {condition_name(gc, q) for gc, q in parse_conditions(argv[i + 1])}
        argv = argv[:i] + argv[i + 2:]
    for name in argv or SHIPPED:
        sets = [c for c in CONDITION_SUFFIX if name in QUANTIZED or c in ("plain", "gradient-checkpointing")]
        sets = [c for c in sets if wanted is None or c in wanted]
        if not sets:
            continue
        t = time.perf_counter()
        profiles = profile_conditions(name, sets, batch_size=1, seq_len=512, dtype="bf16", validate=10, name=name)
        for cond, profile in profiles.items():
            worst = profile.validation["max_abs_rel_error"]
            if worst > TOLERANCE:  # the same gate as `lora-planner profile --tolerance`
                print(f"{name} {cond}: NOT written, max validation error {worst:.2%} > {TOLERANCE:.0%}", flush=True)
                continue
            profile.save(HERE / f"{name}{CONDITION_SUFFIX[cond]}.json")
            print(f"{name} {cond}: max error {worst:.3%}, {profile.validation['seconds']:.1f} s", flush=True)
        print(f"{name}: {len(profiles)} sets in {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
