"""One steady-state LoRA training step, traced (fake tensors) or measured (real tensors).

Steady state = the second of two identical steps: AdamW state exists, gradients start as None
(``zero_grad(set_to_none=True)``), the step's outputs are released when it ends. We reach it in
one step by creating AdamW's state before the step (``tests`` check this equals two steps).
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import torch

from .build import build_base, example_inputs, lora_config_for, materialize_fake
from .tracker import LiveBytes


@contextlib.contextmanager
def _unpacked_sequences():
    """Under fake tensors, transformers cannot look at position ids to rule out packed sequences,
    so it builds an explicit causal mask that a real run skips (kept per block for backward). Our
    traced inputs are one sequence per row by construction: answer the check as a real run does."""
    try:
        from transformers import masking_utils
    except ImportError:  # pragma: no cover - older transformers without the check
        yield
        return
    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:
        yield
        return
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def _head(model):
    head = model.get_output_embeddings()
    if head is None:
        for name in ("classifier", "score", "lm_head"):
            head = getattr(model, name, None)
            if head is not None:
                break
    return head


def _init_adamw_state(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p] = {
                "step": torch.tensor(1.0, dtype=torch.float32),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }


def step_peaks(model, inputs: Mapping[str, torch.Tensor], tracker: LiveBytes, steps: int = 1) -> dict[str, int]:
    """Run ``steps`` training steps; return the per-phase peak live bytes of the last one."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    if steps == 1:
        _init_adamw_state(opt)
    tracker.track_all(model.parameters())
    tracker.track_all(model.buffers())
    tracker.track_all(v for v in inputs.values() if isinstance(v, torch.Tensor))
    for state in opt.state.values():
        tracker.track_all(state.values())
    head = _head(base)
    hook = head.register_forward_pre_hook(lambda *a: tracker.set_phase("loss")) if head is not None else None
    try:
        with tracker:
            for _ in range(steps):
                tracker.peaks = {}
                opt.zero_grad(set_to_none=True)
                tracker.set_phase("fwd")
                out = model(**inputs)
                tracker.set_phase("bwd")
                out.loss.backward()
                tracker.set_phase("opt")
                opt.step()
                del out
    finally:
        if hook is not None:
            hook.remove()
    peaks = {k: v for k, v in tracker.peaks.items() if k in ("fwd", "loss", "bwd", "opt")}
    peaks.setdefault("loss", peaks["fwd"])
    return peaks


def trace_assignment(config, task: str, dtype: str, prefix: str, assignment: Mapping[tuple[int, str], int],
                     batch: int, seq: int, method: str = "traced", steps: int = 1, attn_implementation: str | None = None,
                     seed: int = 0) -> dict[str, int]:
    """Per-phase peak live tensor bytes of one steady-state step of this LoRA assignment.

    ``method``: "traced" (fake tensors, no memory used), "measured" (real CPU tensors, same
    tracker), or "cuda" (real CUDA tensors, ``torch.cuda.max_memory_allocated``).
    """
    from peft import get_peft_model

    if method == "cuda":
        return _cuda_peak(config, task, dtype, prefix, assignment, batch, seq, steps, attn_implementation, seed)
    torch.manual_seed(seed)
    fake = method == "traced"
    model = build_base(config, task, dtype, meta=fake, attn_implementation=attn_implementation)
    model = get_peft_model(model, lora_config_for(prefix, assignment, task))
    if not fake:
        model.train()
    ctx = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        ctx = FakeTensorMode(allow_non_fake_inputs=True)
    with ctx, (_unpacked_sequences() if fake else contextlib.nullcontext()):
        if fake:
            materialize_fake(model)
        model.train()
        inputs = example_inputs(config, task, batch, seq)
        return step_peaks(model, inputs, LiveBytes(), steps=steps)


def _cuda_peak(config, task, dtype, prefix, assignment, batch, seq, steps, attn_implementation, seed) -> dict[str, int]:
    """Measured on a GPU: allocator statistics around the last step (all phases folded into one)."""
    from peft import get_peft_model

    if not torch.cuda.is_available():
        from ..errors import LoraPlannerError

        raise LoraPlannerError("--method", "cuda only where a CUDA GPU is visible", "cuda", "Use --method traced or measured.")
    torch.manual_seed(seed)
    model = build_base(config, task, dtype, meta=False, attn_implementation=attn_implementation).cuda()
    model = get_peft_model(model, lora_config_for(prefix, assignment, task))
    model.train()
    inputs = {k: v.cuda() for k, v in example_inputs(config, task, batch, seq).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for i in range(max(steps, 2)):
        if i == max(steps, 2) - 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        opt.zero_grad(set_to_none=True)
        out = model(**inputs)
        out.loss.backward()
        opt.step()
        del out
    torch.cuda.synchronize()
    peak = int(torch.cuda.max_memory_allocated())
    return {"fwd": peak, "loss": peak, "bwd": peak, "opt": peak}
