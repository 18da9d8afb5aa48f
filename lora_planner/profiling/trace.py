"""One steady-state LoRA training step, traced (meta tensors) or measured (real tensors).

Traced = the model and its LoRA built on the meta device and run there under the live-bytes
tracker: no weights, no memory. Two places where meta kernels answer differently from CPU ones
are corrected so the trace equals a real CPU step to the byte (tests compare all shipped
architectures with fake-tensor and real runs): SDPA's backend choice (meta always decomposes to
the math path; CPU takes the fused flash kernel) and layer norm's saved statistics (fp32 on meta,
the input dtype on CPU). Meta dispatch runs in C++; fake tensors (``method="fake"``, kept as a
cross-check) wrap every op in Python and were 3-6x slower.

The step is ``training.step.train_step``, the executor's own (outputs released before backward).
Steady state = the second of two identical steps: AdamW state exists, gradients start as None
(``zero_grad(set_to_none=True)``), the step's outputs are released when it ends. We reach it in
one step by creating AdamW's state before the step (``tests`` check this equals two steps).
What a first step changes for good on a quantised base (bitsandbytes casts 4-bit biases) is done before
the step by one forward (``_settle``). A process reuses its built meta bases across traces (``_BASES``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Mapping

import torch

from ..training.levers import apply_levers, quant_state_tensors
from ..training.step import train_step
from . import metacache
from .build import build_base, build_quantized, example_inputs, lora_config_for, materialize_fake
from .tracker import LiveBytes, _composites


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


@contextlib.contextmanager
def _cpu_attention_on_meta():
    """On the meta device, SDPA always takes its decomposed math path (explicit attention matrix,
    kept for backward), while on CPU it takes the fused flash kernel when its conditions hold.
    Make meta tensors choose as CPU tensors would: ask the CPU chooser with same-shaped empty CPU
    tensors (never written), and call the CPU flash kernel (it has meta and autograd kernels)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend
    from torch.utils._python_dispatch import _disable_current_modes

    original = F.scaled_dot_product_attention
    choices: dict[tuple, int] = {}  # every block asks the same question: answer it once per shape

    def on_cpu(t):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype) if isinstance(t, torch.Tensor) and t.is_meta else t

    def signature(t):
        return (tuple(t.shape), t.stride(), t.dtype) if isinstance(t, torch.Tensor) else t

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.is_meta:
            sig = (*map(signature, (query, key, value, attn_mask)), dropout_p, is_causal, scale, enable_gqa)
            if sig not in choices:
                with _disable_current_modes():  # the tracker must not count these stand-ins
                    choices[sig] = torch._fused_sdp_choice(on_cpu(query), on_cpu(key), on_cpu(value), on_cpu(attn_mask),
                                                           dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
            if choices[sig] == int(SDPBackend.FLASH_ATTENTION):
                if attn_mask is not None and attn_mask.dtype == torch.bool:
                    # what F.scaled_dot_product_attention does before the kernel (sdp::convert_boolean_attn_mask)
                    attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(attn_mask.logical_not(), float("-inf"))
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def _cpu_int8_on_meta():
    """bitsandbytes' ``matmul`` sends a training step's int8 layers on CPU through ``MatMul8bitFp``
    (dequantise the int8 weight, then ``linear``) and everything else, meta tensors included, through
    ``MatMul8bitLt``, whose meta kernels cannot shape its outlier output. Make meta tensors choose as CPU
    tensors would. Does nothing when bitsandbytes is not loaded."""
    import sys

    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        yield
        return
    from bitsandbytes.autograd._functions import MatMul8bitFp

    original = bnb.matmul

    def matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        if A.is_meta and state is not None and state.is_training:
            return MatMul8bitFp.apply(A, B, out, bias, state)
        return original(A, B, out=out, state=state, threshold=threshold, bias=bias)

    bnb.matmul = matmul
    try:
        yield
    finally:
        bnb.matmul = original


# A process's built meta bases, by (config, task, dtype, attention, levers), oldest first: building one (and on a
# quantised base its meta quantisation and the QLoRA preparation) was up to half a trace. A traced step leaves
# a base as it found it once PEFT's ``unload()`` takes its adapters out (tests/profiling/test_trace.py compares
# reused with fresh bases, to the byte, on every architecture and lever).
_BASES: dict[tuple, torch.nn.Module] = {}
_KEEP_BASES = 4


class _MetaLiveBytes(LiveBytes):
    """The live-bytes tracker for meta tensors: where a CPU kernel's outputs differ from the meta
    kernel's, it returns (and counts) what CPU returns. One dispatch mode, not two stacked: each
    Python mode layer costs every op a round trip.

    Known case: ``native_layer_norm`` on half-precision input keeps its saved mean/rstd in the
    input dtype on CPU, in float32 on meta.
    """

    def run(self, func, args, kwargs):
        if func in _composites():  # run as CPU runs it (LiveBytes.run): its inner ops come back here one by one
            return super().run(func, args, kwargs)
        return metacache.remembered(func, args, kwargs, self._run)

    def _run(self, func, args, kwargs):
        out = super().run(func, args, kwargs)
        if func is torch.ops.aten.native_layer_norm.default and args[0].dtype in (torch.bfloat16, torch.float16):
            out = (out[0], out[1].to(args[0].dtype), out[2].to(args[0].dtype))
        return out


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


def _block_phase_hooks(blocks, tracker: LiveBytes) -> list:
    """Mark each block's forward ("fwd@l") and backward ("bwd@l"): under gradient checkpointing a block's
    activations live only while it is recomputed and backpropagated, so each block has a peak of its own.
    The backward of block l starts when the gradient of its output is ready; a recompute (a forward inside
    the backward) does not change the phase."""
    def in_backward() -> bool:
        return torch._C._current_graph_task_id() != -1

    handles = []
    for l, block in enumerate(blocks):
        def pre(module, args, l=l):
            if not in_backward():
                tracker.set_phase(f"fwd@{l}")

        def post(module, args, out, l=l):
            if in_backward():
                return
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, torch.Tensor) and h.requires_grad:
                h.register_hook(lambda grad, l=l: tracker.set_phase(f"bwd@{l}"))
            tracker.set_phase("fwd")
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    return handles


def is_block_phase(phase: str) -> bool:
    return "@" in phase


def tracked_step(model, inputs: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer, tracker: LiveBytes,
                 max_grad_norm: float | None = None, per_block: bool = False):
    """One ``train_step`` under the live-bytes tracker: (the loss, per-phase peak live bytes).

    The live set starts as what exists between two steps: parameters, buffers, a quantised base's quant
    state (neither parameters nor buffers: ``levers.quant_state_tensors``), the inputs and the optimiser's state. The head's forward marks the "loss" phase (logits and the loss). ``per_block``:
    each block's forward and backward are phases of their own too ("fwd@l", "bwd@l"; checkpointing).
    """
    from peft import PeftModel

    from .build import find_blocks

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    tracker.track_all(model.parameters())
    tracker.track_all(model.buffers())
    tracker.track_all(quant_state_tensors(base))
    tracker.track_all(v for v in inputs.values() if isinstance(v, torch.Tensor))
    for state in opt.state.values():
        tracker.track_all(state.values())
    head = _head(base)
    hooks = [head.register_forward_pre_hook(lambda *a: tracker.set_phase("loss"))] if head is not None else []
    if per_block:
        hooks += _block_phase_hooks(find_blocks(base)[1], tracker)
    try:
        with tracker:
            tracker.peaks = {}
            loss = train_step(model, inputs, opt, max_grad_norm=max_grad_norm, on_phase=tracker.set_phase)
    finally:
        for hook in hooks:
            hook.remove()
    peaks = {k: v for k, v in tracker.peaks.items() if k in ("fwd", "loss", "bwd", "opt") or is_block_phase(k)}
    peaks.setdefault("loss", peaks["fwd"])
    return loss, peaks


def step_peaks(model, inputs: Mapping[str, torch.Tensor], tracker: LiveBytes, steps: int = 1,
               per_block: bool = False) -> dict[str, int]:
    """Run ``steps`` training steps; return the per-phase peak live bytes of the last one."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    if steps == 1:
        _init_adamw_state(opt)
    with tracker:  # earlier steps run under the tracker too: every storage they leave is counted
        for _ in range(steps - 1):
            train_step(model, inputs, opt)
    return tracked_step(model, inputs, opt, tracker, per_block=per_block)[1]


def trace_assignment(config, task: str, dtype: str, prefix: str, assignment: Mapping[tuple[int, str], int],
                     batch: int, seq: int, method: str = "traced", steps: int = 1, attn_implementation: str | None = None,
                     seed: int = 0, gradient_checkpointing: bool = False, quantization: str | None = None) -> dict[str, int]:
    """Per-phase peak live tensor bytes of one steady-state step of this LoRA assignment.

    ``method``: "traced" (meta tensors, no memory used), "fake" (fake tensors; same numbers,
    slower), "measured" (real CPU tensors, same tracker), or "cuda" (real CUDA tensors,
    ``torch.cuda.max_memory_allocated``). ``gradient_checkpointing``, ``quantization`` ("nf4", "int8"):
    the levers as the executor turns them on (``training.levers.apply_levers``).
    """
    from peft import get_peft_model

    levers = functools.partial(apply_levers, gradient_checkpointing=gradient_checkpointing, quantization=quantization)
    if method == "cuda":
        return _cuda_peak(config, task, dtype, prefix, assignment, batch, seq, steps, attn_implementation, seed, levers,
                          quantization)
    torch.manual_seed(seed)
    if quantization is not None and method == "fake":
        from ..errors import LoraPlannerError

        raise LoraPlannerError("method", "traced or measured with a quantised base", "fake", "Use --method traced.")

    def build(meta: bool):  # a bitsandbytes base is built on its meta-quantised twin, or loaded quantised for real
        if quantization is not None:  # builds from its own copy of the config
            return build_quantized(config, task, dtype, quantization, meta=meta, attn_implementation=attn_implementation)
        # the model's own config: a step writes to it (a classifier's problem_type), the caller's stays as it was
        return build_base(copy.deepcopy(config), task, dtype, meta=meta, attn_implementation=attn_implementation)

    if method == "traced":
        key = (config.to_json_string(use_diff=False), task, dtype, attn_implementation, gradient_checkpointing, quantization)
        base = _BASES.pop(key, None)
        if base is None:
            base = build(meta=True)
            levers(base)
            _settle(base, config, task, quantization, meta=True)
        # adapters made on the meta device at once (not made and initialised on CPU, then moved): same tensors
        model = get_peft_model(base, lora_config_for(prefix, assignment, task), low_cpu_mem_usage=True)
        model.train()
        with _as_on_cpu():
            peaks = step_peaks(model, _inputs_on("meta", config, task, batch, seq), _MetaLiveBytes(), steps=steps,
                               per_block=gradient_checkpointing)
        _BASES[key] = model.unload()  # the base as built, its levers on: the next trace of this model starts here
        while len(_BASES) > _KEEP_BASES:
            _BASES.pop(next(iter(_BASES)))
        return peaks
    fake = method == "fake"
    model = build(meta=fake)
    levers(model)
    if not fake:
        _settle(model, config, task, quantization, meta=False)
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
        return step_peaks(model, inputs, LiveBytes(), steps=steps, per_block=gradient_checkpointing)


def _settle(model, config, task: str, quantization: str | None, meta: bool) -> None:
    """Make a quantised base what it is after its first training step: one forward without gradients (a 1 x 8
    batch). bitsandbytes changes a layer for good on its first forward: a 4-bit layer casts its bias, in place,
    to its input's dtype (fp32 -> bf16 on a QLoRA-prepared base with checkpointing on: 2 bytes a bias entry
    less in every block not yet run). A step after the first, the steady state, starts without that."""
    if quantization is None:
        return
    with (_as_on_cpu() if meta else contextlib.nullcontext()), (_MetaLiveBytes() if meta else contextlib.nullcontext()), \
            torch.no_grad():
        model(**_inputs_on("meta" if meta else "cpu", config, task, 1, 8))


def _inputs_on(device: str, config, task: str, batch: int, seq: int) -> dict:
    """``example_inputs`` on ``device``, aliases kept aliased (causal LM: labels is input_ids)."""
    memo: dict[int, torch.Tensor] = {}
    return {k: memo.setdefault(id(v), v.to(device)) if isinstance(v, torch.Tensor) else v
            for k, v in example_inputs(config, task, batch, seq).items()}


@contextlib.contextmanager
def _as_on_cpu():
    """Meta tensors answer as CPU ones where a meta step differs: packed-sequence check, SDPA choice, int8 path."""
    with _unpacked_sequences(), _cpu_attention_on_meta(), _cpu_int8_on_meta():
        yield


def _cuda_peak(config, task, dtype, prefix, assignment, batch, seq, steps, attn_implementation, seed, levers,
               quantization=None) -> dict[str, int]:
    """Measured on a GPU: allocator statistics around the last step (all phases folded into one)."""
    from peft import get_peft_model

    if not torch.cuda.is_available():
        from ..errors import LoraPlannerError

        raise LoraPlannerError("method", "cuda only where a CUDA GPU is visible", "cuda", "Use --method traced or measured.")
    torch.manual_seed(seed)
    if quantization is not None:
        model = build_quantized(config, task, dtype, quantization, meta=False, attn_implementation=attn_implementation,
                                device_map="cuda")
    else:
        model = build_base(copy.deepcopy(config), task, dtype, meta=False, attn_implementation=attn_implementation).cuda()
    levers(model)
    model = get_peft_model(model, lora_config_for(prefix, assignment, task))
    model.train()
    inputs = {k: v.cuda() for k, v in example_inputs(config, task, batch, seq).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for i in range(max(steps, 2)):
        if i == max(steps, 2) - 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        train_step(model, inputs, opt)
    torch.cuda.synchronize()
    peak = int(torch.cuda.max_memory_allocated())
    return {"fwd": peak, "loss": peak, "bwd": peak, "opt": peak}
