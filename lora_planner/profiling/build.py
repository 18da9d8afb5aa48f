"""Build a Hugging Face model from its config with LoRA attached, on meta, fake or real tensors.

Fake: the model and its PEFT wrapper are built on the meta device, then, inside a
``FakeTensorMode``, every parameter and buffer is replaced by a fresh fake tensor (tied weights
stay tied). No weights, no memory, no GPU. (Building under FakeTensorMode and then calling
``get_peft_model`` fails in torch 2.13; plain meta tensors fail in transformers' mask code.)
"""
from __future__ import annotations

import contextlib
import re
from typing import Mapping

import torch

from ..errors import LoraPlannerError
from ..profile import ModuleInfo
from .config import TASKS, Discovery, default_task, load_config, num_layers, shipped_configs, truncated  # noqa: F401 - re-exported

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _model_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def build_base(config, task: str, dtype: str, meta: bool, attn_implementation: str | None = None):
    cls = _model_class(task)
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with ctx:
            return cls.from_config(config, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        other = "seq-cls" if task == "causal-lm" else "causal-lm"
        raise LoraPlannerError("task", f"a task that transformers' {cls.__name__} can build for model_type "
                               f"'{config.model_type}'", task, f"Try --task {other}; encoder-decoder models are not supported.") from None


def build_quantized(config, task: str, dtype: str, quantization: str, meta: bool, attn_implementation: str | None = None,
                    device_map: str = "cpu"):
    """A base with a bitsandbytes-quantised body, as ``from_pretrained(folder, quantization_config=...)`` loads it.

    meta: built on the meta device and quantised there (``levers.quantize_meta``). Real: ``from_config`` does
    not quantise, so the config-built model (its random weights) is saved to a temporary folder and loaded back
    with the quantisation config, the way a user loads a downloaded model.
    """
    import copy
    import tempfile

    from ..training.levers import bnb_config, quantize_meta

    config = copy.deepcopy(config)  # the quantizer writes quantization_config into the model's config
    if meta:
        from .metacache import MetaCache

        base = build_base(config, task, dtype, meta=True, attn_implementation=attn_implementation)
        with MetaCache():  # each weight's quantisation on meta: the same few shapes, over and over
            return quantize_meta(base, quantization, dtype)
    cls = _model_class(task)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with tempfile.TemporaryDirectory(prefix="lora-planner-q-") as folder:
        build_base(config, task, dtype, meta=False, attn_implementation=attn_implementation).save_pretrained(folder)
        return cls.from_pretrained(folder, quantization_config=bnb_config(quantization, dtype), device_map=device_map,
                                   dtype=DTYPES[dtype], **kwargs)


def find_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList of transformer blocks: the largest ModuleList of identical blocks."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise LoraPlannerError("MODEL", "a transformer with a list of blocks", type(model).__name__, "This architecture is not supported.")
    return best


def linear_modules(block) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of the LoRA-able linear layers in one block."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, mod in block.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[name] = (mod.in_features, mod.out_features)
        elif isinstance(mod, Conv1D):
            out[name] = (mod.weight.shape[0], mod.weight.shape[1])
    return out


def materialize_fake(model):
    """Swap every meta parameter and buffer for a fake tensor (call inside FakeTensorMode)."""
    memo: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for key, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
            mod._parameters[key] = memo[id(p)]
        for key, b in list(mod._buffers.items()):
            if b is None:
                continue
            if id(b) not in memo:
                memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype) if b.dtype in (torch.long, torch.int, torch.bool) else torch.empty(b.shape, dtype=b.dtype)
            mod._buffers[key] = memo[id(b)]


def lora_config_for(prefix: str, assignment: Mapping[tuple[int, str], int], task: str, alpha: float | None = None):
    """A peft.LoraConfig adapting exactly these (layer, module) entries at these ranks."""
    from peft import LoraConfig

    names = {k: f"{prefix}.{k[0]}.{k[1]}" for k in assignment}
    ranks = list(assignment.values())
    return LoraConfig(
        r=max(set(ranks), key=ranks.count),
        lora_alpha=alpha or 16,
        target_modules=sorted(names.values()),
        rank_pattern={re.escape(names[k]): r for k, r in assignment.items()},
        lora_dropout=0.0,
        task_type="CAUSAL_LM" if task == "causal-lm" else "SEQ_CLS",
    )


def discover(config, task: str, dtype: str) -> Discovery:
    """Find the blocks, their linear modules, forward order and input-sharing groups (one fake forward)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    small = truncated(config, min(num_layers(config), 2))  # grouping needs one block
    model = build_base(small, task, dtype, meta=True)
    prefix, blocks = find_blocks(model)
    lin = linear_modules(blocks[0])
    # each module's input storage, held until the grouping is done: an id is only unique among live objects, and
    # a freed input's id came back for a later module's input (down_proj grouped with q_proj, now and then)
    seen: list[tuple[str, torch.UntypedStorage]] = []
    hooks = [blocks[0].get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: seen.append((n, args[0].untyped_storage()))) for n in lin]
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        materialize_fake(model)
        model(**example_inputs(small, task, 1, 8))
    for h in hooks:
        h.remove()
    order, group_of, storage_group = {}, {}, {}
    for n, storage in seen:
        order.setdefault(n, len(order))
        group_of.setdefault(n, storage_group.setdefault(id(storage), n))
    modules = tuple(ModuleInfo(name=n, in_features=lin[n][0], out_features=lin[n][1], group=group_of.get(n, n),
                               order=order.get(n, len(lin))) for n in sorted(lin, key=lambda n: order.get(n, 99)))
    full = build_base(config, task, dtype, meta=True)
    params = sum(p.numel() for p in full.parameters())
    return Discovery(prefix=prefix, modules=modules, param_count=params,
                     max_positions=getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None),
                     attn_implementation=str(getattr(full.config, "_attn_implementation", "default")))


def example_inputs(config, task: str, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """A training batch of this shape as the executor feeds it: ids, an attention mask with one padded
    position (a real batch padded to ``seq`` has some, so its mask is materialised, not skipped), labels."""
    ids = torch.zeros((batch, seq), dtype=torch.long)
    mask = torch.ones((batch, seq), dtype=torch.long)
    if seq > 1:
        mask[0, -1] = 0
    if task == "causal-lm":
        # use_cache=False: a training step keeps no KV cache (it would hold k/v of every block).
        # labels are their own tensor, as in a real batch (prompt positions are -100 there)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone(), "use_cache": False}
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros((batch,), dtype=torch.long)}
