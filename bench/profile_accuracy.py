"""Predicted vs measured peak on real CPU execution, 5 architectures x 20 random LoRA assignments.

Architectures: all-MiniLM-L6-v2 (BERT encoder, seq-cls), GPT-2 (Conv1D, tied), Qwen2.5-0.5B
(grouped-query attention, tied embeddings), a Llama-style model (8 blocks x 1024 wide) and a
GPT-NeoX-style one (fused query_key_value, parallel attention and MLP residual; 6 blocks x 256).
Measured = the same step on real tensors (random weights) with the live-bytes tracker; the
reference in the same run is the parameter-only rule of thumb.

    python bench/profile_accuracy.py [--n 20] [--seq-len 128] [--dtype fp32] [--models gpt2,...] [--gradient-checkpointing]
        [--quantization nf4|int8]

With --quantization the base is a real bitsandbytes load on CPU (the config-built model saved and loaded back
with its BitsAndBytesConfig, prepared with peft.prepare_model_for_kbit_training); --dtype is then the compute
dtype and the load dtype of what stays unquantised.

Real bf16 steps are ~20x slower than fp32 on this CPU (Qwen2.5-0.5B, 2x128: 347 s vs 17 s for
one assignment), so the default compares at fp32; the tracker and the model are the same.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from lora_planner.memory import predict_tensor_bytes, rule_of_thumb_bytes
from lora_planner.profiling import profile_model
from lora_planner.profiling.build import load_config
from lora_planner.profiling.fit import random_assignments
from lora_planner.profiling.trace import trace_assignment

LLAMA_STYLE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816,
               "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
               "max_position_embeddings": 2048, "tie_word_embeddings": False}
NEOX_STYLE = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 256, "intermediate_size": 1024,
              "num_hidden_layers": 6, "num_attention_heads": 4, "vocab_size": 2048, "max_position_embeddings": 512,
              "use_parallel_residual": True, "rotary_pct": 0.25, "tie_word_embeddings": False}
OWN = {"llama-style": LLAMA_STYLE, "neox-style": NEOX_STYLE}  # our own configs (no shipped profile)
MODELS = [("all-minilm-l6-v2", "encoder (BERT)", "seq-cls"), ("gpt2", "GPT-2", "causal-lm"),
          ("qwen2.5-0.5b", "GQA + tied embeddings", "causal-lm"), ("llama-style", "Llama-style", "causal-lm"),
          ("neox-style", "GPT-NeoX-style (parallel residual)", "causal-lm")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=128, help="profile and measure at batch 2 x this")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS), help="comma-separated subset")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="profile and measure with checkpointing on")
    ap.add_argument("--quantization", choices=["nf4", "int8"], default=None, help="profile and measure on a bitsandbytes base")
    args = ap.parse_args()
    wanted = args.models.split(",")
    tmp = Path(tempfile.mkdtemp())
    for own, body in OWN.items():
        (tmp / own).mkdir()
        (tmp / own / "config.json").write_text(json.dumps(body))
    rows, detail = [], {}
    for name, kind, task in [m for m in MODELS if m[0] in wanted]:
        src = str(tmp / name / "config.json") if name in OWN else name
        t = time.perf_counter()
        prof = profile_model(src, batch_size=2, seq_len=args.seq_len, dtype=args.dtype, task=task, validate=0, name=name,
                             gradient_checkpointing=args.gradient_checkpointing, quantization=args.quantization)
        t_prof = time.perf_counter() - t
        config = load_config(src)
        if task == "seq-cls":
            config.num_labels = 2
        errs, rot = [], []
        for a in random_assignments(prof.module_names, prof.num_layers, args.n, seed=7):
            real = max(trace_assignment(config, task, args.dtype, prof.layer_prefix, a, 2, args.seq_len, method="measured",
                                            gradient_checkpointing=args.gradient_checkpointing,
                                            quantization=args.quantization).values())
            errs.append((predict_tensor_bytes(prof, a) - real) / real)
            rot.append((rule_of_thumb_bytes(prof, a) - real) / real)
        detail[name] = {"kind": kind, "errors": errs, "rule_of_thumb_errors": rot, "profile_s": t_prof}
        rows.append([name, kind, args.n, f"{statistics.median(map(abs, errs)):.3%}", f"{max(map(abs, errs)):.3%}",
                     f"{-min(min(errs), 0):.3%}", f"{statistics.median(rot):+.1%}", f"{t_prof:.1f}"])
        print(rows[-1], flush=True)
    print(table(rows, ["model", "kind", "n", "median |err|", "max |err|", "worst under", "params-only median err", "profile s"]))
    name = "profile_accuracy" + ("" if args.dtype == "fp32" else f"_{args.dtype}") + ("" if args.seq_len == 128 else f"_s{args.seq_len}") \
        + (f"_{args.quantization}" if args.quantization else "") + ("_gc" if args.gradient_checkpointing else "")
    print("wrote", write(name, {"batch_size": 2, "seq_len": args.seq_len, "dtype": args.dtype,
                                "gradient_checkpointing": args.gradient_checkpointing, "quantization": args.quantization,
                                "models": detail}))


if __name__ == "__main__":
    main()
