"""THE training step: the profiler traces and measures this function, the executor runs it.

It is the step of ``transformers.Trainer.training_step``: the model's output object is released
before backward (only the loss is kept), so logits and any cache are gone at the backward peak;
keeping ``out = model(**batch)`` alive instead costs at least one logits tensor there (5-16 % on
small decoders). It imports nothing of lora-planner, so both floors above can call it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

STEP_DESCRIPTION = ("lora_planner.training.step.train_step: zero_grad(set_to_none=True); loss = model(**batch, "
                    "use_cache=False).loss (outputs released before backward); loss.backward(); [clip]; optimizer.step()")


def _no_phase(_: str) -> None:
    pass


def cache_off(model, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``use_cache=False`` for models that have a cache (a training step keeps no KV cache)."""
    config = getattr(model, "config", None)
    if "use_cache" in batch or getattr(config, "use_cache", None) is None:
        return {}
    return {"use_cache": False}


def train_step(model, batch: Mapping[str, Any], optimizer, max_grad_norm: float | None = None,
               on_phase: Callable[[str], None] = _no_phase):
    """One optimiser step on one mini-batch; returns the loss, detached (a 0-d tensor).

    Args:
        model: a model whose forward returns an object with ``.loss`` (transformers, PEFT).
        batch: keyword inputs, labels included.
        optimizer: over the trainable parameters.
        max_grad_norm: clip the gradients' global norm to this (None: no clipping).
        on_phase: called with "fwd", "bwd", "opt" as the step enters each phase (memory trackers).
    """
    import torch

    optimizer.zero_grad(set_to_none=True)
    on_phase("fwd")
    loss = model(**batch, **cache_off(model, batch)).loss
    on_phase("bwd")
    loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    on_phase("opt")
    optimizer.step()
    return loss.detach()
