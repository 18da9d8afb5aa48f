"""Before/after of the shared training step: peak live bytes of THE step (``training.step.train_step``,
outputs released before backward, as ``transformers.Trainer``) against the step the profiler traced
until session 3 (``out = model(**batch); out.loss.backward()``: the output object, logits included,
alive through backward). Real CPU tensors, the same live-bytes tracker, small decoders (vocab 2048,
6 layers, batch 4 x 128, fp32, LoRA r=8 on every linear module of the top 3 blocks).

The difference is what every schema-3 profile over-predicted for a Trainer-style loop.

    python bench/step_outputs.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from lora_planner.profiling.build import build_base, example_inputs, find_blocks, linear_modules, lora_config_for
from lora_planner.profiling.trace import _init_adamw_state, tracked_step
from lora_planner.profiling.tracker import LiveBytes

COMMON = {"vocab_size": 2048, "num_hidden_layers": 6, "max_position_embeddings": 512}
MODELS = {
    "qwen2-style": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 256, "intermediate_size": 704,
                    "num_attention_heads": 4, "num_key_value_heads": 2},
    "opt-style": {"model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": 256, "ffn_dim": 1024,
                  "num_attention_heads": 4, "word_embed_proj_dim": 256},
    "gpt-neox-style": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 256,
                       "intermediate_size": 1024, "num_attention_heads": 4, "use_parallel_residual": True},
}


def kept_outputs_step(model, inputs, opt, tracker) -> int:
    """The old step, kept here only as the reference: the output object lives through backward."""
    tracker.track_all(model.parameters())
    tracker.track_all(model.buffers())
    tracker.track_all(v for v in inputs.values() if isinstance(v, torch.Tensor))
    for state in opt.state.values():
        tracker.track_all(state.values())
    with tracker:
        tracker.peaks = {}
        opt.zero_grad(set_to_none=True)
        out = model(**inputs)
        out.loss.backward()
        opt.step()
        del out
    return max(tracker.peaks.values())


def peak(config, step: str) -> int:
    from peft import get_peft_model

    torch.manual_seed(0)
    model = build_base(config, "causal-lm", "fp32", meta=False)
    prefix, blocks = find_blocks(model)
    mods = linear_modules(blocks[0])
    model = get_peft_model(model, lora_config_for(prefix, {(l, m): 8 for l in range(3, 6) for m in mods}, "causal-lm"))
    model.train()
    inputs = example_inputs(config, "causal-lm", 4, 128)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    _init_adamw_state(opt)
    if step == "train_step":
        return max(tracked_step(model, inputs, opt, LiveBytes())[1].values())
    return kept_outputs_step(model, inputs, opt, LiveBytes())


def main() -> None:
    from transformers import AutoConfig

    rows, out = [], {}
    for name, extra in MODELS.items():
        body = {**COMMON, **extra}
        config = AutoConfig.for_model(body.pop("model_type"), **{k: v for k, v in body.items() if k != "architectures"})
        new, old = peak(config, "train_step"), peak(config, "kept")
        out[name] = {"train_step_bytes": new, "kept_outputs_bytes": old, "over": (old - new) / new}
        rows.append([name, f"{new / 2**20:.1f} MiB", f"{old / 2**20:.1f} MiB", f"{(old - new) / 2**20:+.1f} MiB", f"{(old - new) / new:+.1%}"])
        print(rows[-1], flush=True)
    print(table(rows, ["model", "train_step peak", "kept-outputs peak", "difference", "old over-prediction"]))
    print("wrote", write("step_outputs", {"batch": 4, "seq": 128, "dtype": "fp32", "models": out}))


if __name__ == "__main__":
    main()
