"""Regenerate every shipped profile: `python profiles/make_profiles.py [--gradient-checkpointing] [--quantization nf4|int8] [NAME ...]`.

Condition sets: every model plain and with gradient checkpointing (NAME.json, NAME@gc.json); the quantised
ones (QUANTIZED below) also on an nf4 and an int8 base, each with checkpointing off and on (NAME@nf4.json,
NAME@nf4+gc.json, NAME@int8.json, NAME@int8+gc.json).

Shipped profiles: batch 1 x 512 tokens, bf16 frozen weights, PEFT's default adapter dtype (fp32),
AdamW, transformers' default attention, no gradient checkpointing, every linear module in the
blocks as a candidate target (PEFT's default targets recorded as the default), traced on meta
tensors, validated on 10 full-depth assignments (3 single-layer, 7 random) + 2 at a held-out shape. Sequence-classification models use 2 labels.
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


def main(names: list[str]) -> None:
    from lora_planner.cli.profile_cmd import report
    from lora_planner.profile import condition_suffix
    from lora_planner.profiling import profile_model

    ckpt = "--gradient-checkpointing" in names
    names = [n for n in names if n != "--gradient-checkpointing"]
    quant = None
    if "--quantization" in names:
        i = names.index("--quantization")
        quant = names[i + 1]
        names = names[:i] + names[i + 2:]
    for name in names or (QUANTIZED if quant else SHIPPED):
        t = time.perf_counter()
        profile = profile_model(name, batch_size=1, seq_len=512, dtype="bf16", validate=10, name=name, gradient_checkpointing=ckpt,
                                quantization=quant)
        worst = profile.validation["max_abs_rel_error"]
        if worst > TOLERANCE:  # the same gate as `lora-planner profile --tolerance`
            print(f"{name}: NOT written, max validation error {worst:.2%} > {TOLERANCE:.0%}", flush=True)
            continue
        profile.save(HERE / f"{name}{condition_suffix(ckpt, quant)}.json")
        print(report(profile).splitlines()[-3:], f"{time.perf_counter() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
