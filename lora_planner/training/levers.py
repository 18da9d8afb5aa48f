"""Memory levers applied to a model the way users turn them on; the profiler and the executor call
these same functions, so what is traced is what is trained.

Gradient checkpointing: ``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=
{"use_reentrant": False})`` and ``model.enable_input_require_grads()`` (as PEFT and
``transformers.Trainer`` do for adapters on a frozen base: without it no block input needs a
gradient and checkpointed blocks would keep nothing to recompute from). Each block then keeps only
its input through the forward; its activations are recomputed, one block at a time, in the backward.
"""
from __future__ import annotations

import warnings

from ..errors import LoraPlannerError

CHECKPOINT_KWARGS = {"use_reentrant": False}
# PEFT 0.21 calls transformers 5.2x's deprecated `is_gradient_checkpointing` (every wrap) and
# `gradient_checkpointing_enable` (prepare_model_for_kbit_training): a FutureWarning per trace that says nothing
# to our users (the names it asks for, *activation_checkpointing*, are the same switches).
warnings.filterwarnings("ignore", message="`(is_gradient_checkpointing|gradient_checkpointing_enable)` is deprecated",
                        category=FutureWarning)


def set_gradient_checkpointing(model, on: bool) -> None:
    """Turn gradient checkpointing on or off on a transformers model (the base, before or after PEFT wraps it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        _require_support(base)
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x: the same, undeprecated name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        base.enable_input_require_grads()
    else:
        _checkpointing_off(base)
        base.disable_input_require_grads()


def _require_support(base) -> None:
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise LoraPlannerError("gradient_checkpointing", "a model whose transformers class supports it",
                               type(base).__name__, "Profile and train this model with gradient checkpointing off.")


def _checkpointing_off(base) -> None:
    if is_checkpointing(base):
        (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()


def is_checkpointing(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(getattr(m, "gradient_checkpointing", False) is True for m in base.modules())


# --- Quantised base (QLoRA) ------------------------------------------------------------------------------
#
# nf4: ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
# bnb_4bit_compute_dtype=<dtype>)``, the QLoRA paper's recipe (double quantisation of the absmax statistics);
# int8: ``BitsAndBytesConfig(load_in_8bit=True)`` (LLM.int8(); on CPU it trains through dequantise + matmul).
# Both are loaded the way transformers' ``from_pretrained(..., quantization_config=...)`` loads them (the
# output head is not converted) and prepared with ``peft.prepare_model_for_kbit_training``, which freezes
# the base and casts every fp16/bf16 parameter that is not 4-bit (embeddings, norms, head) to fp32.

QUANTIZATIONS = ("nf4", "int8")
QUANT_DESCRIPTION = {
    "nf4": "bitsandbytes 4-bit NF4, double quantisation, blocksize 64, compute dtype = dtype; output head unquantised",
    "int8": "bitsandbytes LLM.int8() (threshold 6.0; CPU training: dequantise + matmul); output head unquantised",
}


def require_bitsandbytes(field: str = "--quantization") -> None:
    """One line, not a traceback, when the quantisation library is missing."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise LoraPlannerError(field, "run where bitsandbytes is installed", "no bitsandbytes",
                               "Install it: pip install -c constraints.txt bitsandbytes (or the '[quant]' extra).")


def check_quantization(quantization: str | None, field: str = "--quantization") -> str | None:
    if quantization in (None, "", "none"):
        return None
    if quantization not in QUANTIZATIONS:
        raise LoraPlannerError(field, f"one of {', '.join(QUANTIZATIONS)}", quantization, "E.g. --quantization nf4.")
    return quantization


def bnb_config(quantization: str, dtype: str):
    """The transformers ``BitsAndBytesConfig`` of a lever name; ``dtype`` is the 4-bit compute dtype."""
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        compute = _torch_dtype(dtype)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute)
    return BitsAndBytesConfig(load_in_8bit=True)


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def apply_levers(model, gradient_checkpointing: bool = False, quantization: str | None = None):
    """THE lever function (before ``get_peft_model``): a quantised base is prepared the QLoRA way,
    ``prepare_model_for_kbit_training(model, use_gradient_checkpointing=<flag>, gradient_checkpointing_kwargs=
    {"use_reentrant": False})``; a plain one gets ``set_gradient_checkpointing``. Returns the model."""
    if quantization is None:
        set_gradient_checkpointing(model, gradient_checkpointing)
        return model
    from peft import prepare_model_for_kbit_training

    if gradient_checkpointing:
        _require_support(model)
    else:
        _checkpointing_off(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))


def quantization_of(model) -> str | None:
    """The lever a loaded model carries ("nf4", "int8" or None)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False):
        return "nf4"
    return "int8" if getattr(base, "is_loaded_in_8bit", False) else None


def quant_state_tensors(model) -> list:
    """bitsandbytes' per-weight state that is neither a parameter nor a buffer: a 4-bit weight's
    ``quant_state`` (absmax, code; with double quantisation the offset and the nested absmax and code),
    an int8 weight's row scales ``SCB`` (on the weight until the first forward, then on the layer's state)."""
    out = []
    for module in model.modules():
        w = getattr(module, "weight", None)
        qs = getattr(w, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, qs.code]
            if qs.nested:
                out += [qs.offset, qs.state2.absmax, qs.state2.code]
        for holder in (w, getattr(module, "state", None)):
            for key in ("CB", "SCB"):
                t = getattr(holder, key, None) if holder is not None else None
                if t is not None and hasattr(t, "untyped_storage"):
                    out.append(t)
    return out


def quantize_meta(model, quantization: str, dtype: str):
    """The meta-device twin of ``from_pretrained(..., quantization_config=bnb_config(...))``: transformers'
    own quantizer swaps the linear layers for bitsandbytes ones (same skips), then each weight is quantised
    on meta through bitsandbytes' shape functions (packed 4-bit bytes and their quant state; int8 bytes and
    row scales). No weights, no memory."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_f
    import torch
    from transformers.quantizers import AutoHfQuantizer

    torch_dtype = _torch_dtype(dtype)
    quantizer = AutoHfQuantizer.from_config(bnb_config(quantization, dtype), pre_quantized=False)
    quantizer.preprocess_model(model, device_map={"": "cpu"}, dtype=torch_dtype)
    # bitsandbytes caches the nested-quantisation code map per process and moves it to each weight's device:
    # on CPU every weight shares the one cached map. Share one meta map here, and leave the cache as found.
    cache = dict(bnb_f.name2qmap)
    bnb_f.name2qmap["dynamic"] = bnb_f.create_dynamic_map().to("meta")
    try:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.weight.data = torch.empty(module.weight.shape, dtype=torch_dtype, device="meta")
                module.weight._quantize("meta")
            elif isinstance(module, bnb.nn.Linear8bitLt):
                w = module.weight
                # Int8Params._quantize's int8_vectorwise_quant has a data-dependent outlier output meta cannot
                # shape; at threshold 0 (what _quantize passes) it is None, so the results are these two.
                w.data = torch.empty(w.shape, dtype=torch.int8, device="meta")
                w.CB, w.SCB = w.data, torch.empty(w.shape[0], dtype=torch.float32, device="meta")
    finally:
        bnb_f.name2qmap.clear()
        bnb_f.name2qmap.update(cache)
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    return model
