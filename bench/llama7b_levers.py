"""Llama-2-7B at 1 x 512 tokens, LoRA r=8 on q_proj,v_proj in every block, bf16 base (nf4: bf16 compute):
the predicted peak of each memory lever beside a full-depth trace of the same step (meta tensors, no
weights; a quantised base traced on its meta-quantised twin), the frozen weights alone (parameters,
buffers and quant state after prepare_model_for_kbit_training), and the smallest budget at which `solve`
plans a client (default targets q,v and ranks 2-64).

    python bench/llama7b_levers.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from lora_planner import shipped_profile
from lora_planner.memory import predict_tensor_bytes
from lora_planner.plan import minimum_budget
from lora_planner.profiling.build import load_config
from lora_planner.profiling.trace import trace_assignment
from lora_planner.solvers import build_problem

GIB = 2**30


LEVERS = (("plain", False, None), ("gradient checkpointing", True, None), ("nf4", False, "nf4"),
          ("nf4 + checkpointing", True, "nf4"), ("int8", False, "int8"), ("int8 + checkpointing", True, "int8"))


def frozen_bytes(config, quantization) -> int:
    """What the base holds between steps: parameters, buffers and (quantised) quant state, once each."""
    from lora_planner.profiling.build import build_base, build_quantized
    from lora_planner.training.levers import apply_levers, quant_state_tensors

    if quantization is None:
        model = build_base(config, "causal-lm", "bf16", meta=True)
    else:
        model = apply_levers(build_quantized(config, "causal-lm", "bf16", quantization, meta=True), quantization=quantization)
    tensors = list(model.parameters()) + list(model.buffers()) + quant_state_tensors(model)
    return sum({id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}.values())


def main() -> None:
    rows, out = [], {}
    config = load_config("llama-2-7b")
    for lever, ckpt, quant in LEVERS:
        prof = shipped_profile("llama-2-7b", gradient_checkpointing=ckpt, quantization=quant)
        a = {(l, m): 8 for l in range(prof.num_layers) for m in prof.default_targets}
        predicted = predict_tensor_bytes(prof, a)
        t = time.perf_counter()
        traced = max(trace_assignment(config, "causal-lm", "bf16", prof.layer_prefix, a, 1, 512, gradient_checkpointing=ckpt,
                                      quantization=quant).values())
        trace_s = time.perf_counter() - t
        weights = frozen_bytes(config, quant)
        smallest = minimum_budget(build_problem(prof, prof.default_targets, (2, 4, 8, 16, 32, 64)))
        out[lever] = {"predicted_bytes": predicted, "traced_bytes": traced, "trace_seconds": trace_s, "smallest_budget_bytes": smallest,
                      "frozen_bytes": weights, "profile_seconds": prof.validation.get("seconds")}
        rows.append([lever, f"{predicted / GIB:.3f}", f"{traced / GIB:.3f}", f"{(predicted - traced) / traced:+.4%}",
                     f"{weights / GIB:.3f}", f"{smallest / GIB:.3f}", f"{prof.validation.get('seconds', 0):.1f}"])
    print(table(rows, ["lever", "predicted GiB", "full-depth trace GiB", "error", "frozen base GiB",
                       "smallest budget solve plans GiB", "profile s"]))
    print("wrote", write("llama7b_levers", out))


if __name__ == "__main__":
    main()
