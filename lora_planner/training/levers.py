"""Memory levers applied to a model the way users turn them on; the profiler and the executor call
these same functions, so what is traced is what is trained.

Gradient checkpointing: ``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=
{"use_reentrant": False})`` and ``model.enable_input_require_grads()`` (as PEFT and
``transformers.Trainer`` do for adapters on a frozen base: without it no block input needs a
gradient and checkpointed blocks would keep nothing to recompute from). Each block then keeps only
its input through the forward; its activations are recomputed, one block at a time, in the backward.
"""
from __future__ import annotations

from ..errors import LoraPlannerError

CHECKPOINT_KWARGS = {"use_reentrant": False}


def set_gradient_checkpointing(model, on: bool) -> None:
    """Turn gradient checkpointing on or off on a transformers model (the base, before or after PEFT wraps it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise LoraPlannerError("gradient_checkpointing", "a model whose transformers class supports it",
                                   type(base).__name__, "Profile and train this model with gradient checkpointing off.")
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x: the same, undeprecated name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        base.enable_input_require_grads()
    else:
        if is_checkpointing(base):
            (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()
        base.disable_input_require_grads()


def is_checkpointing(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(getattr(m, "gradient_checkpointing", False) is True for m in base.modules())
