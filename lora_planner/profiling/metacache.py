"""Remembered meta-kernel outputs: what makes a traced step (and a meta-quantised build) fast.

Meta kernels of most aten ops are Python reference implementations (``torch._refs``, ``torch._prims``):
about 0.3 ms an op, most of a traced step's time. On meta tensors an op's outputs depend only on the op,
its inputs' shapes, strides, offsets and dtypes and its other arguments. For an op whose schema aliases and
mutates nothing (its outputs are fresh tensors) the outputs' layout is remembered per such key, for the
process, and later calls get new empty meta tensors of that layout. Anything else runs: an input not on
meta, an argument not comparable by value, an op that may alias or mutate, an output that shares a storage.
The tracker runs a composite op (bitsandbytes' ``gemm_4bit``) before asking here: its inner ops are remembered
one by one, its transients counted.
``tests/profiling/test_trace.py`` checks traces are the same to the byte with nothing remembered.
"""
from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

OUTPUTS: dict[tuple, tuple] = {}  # key -> layout of the outputs
_FRESH: dict[int, bool] = {}  # id(op) -> whether its schema returns only fresh tensors and mutates nothing
_ATOMS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_SCALAR = torch.ops.aten._local_scalar_dense.default


def remembered(func, args, kwargs, run):
    """``run(func, args, kwargs)``, or its remembered outputs rebuilt."""
    key = _key(func, args, kwargs)
    if key is not None:
        spec = OUTPUTS.get(key)
        if spec is not None:
            return _rebuild(spec)
    out = run(func, args, kwargs)
    if key is not None:
        inputs = {id(t.untyped_storage()) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        spec = _spec(out, inputs)
        if spec is not None:
            OUTPUTS[key] = spec
    return out


class MetaCache(TorchDispatchMode):
    """The cache alone, for meta work that is not traced (``build.build_quantized``'s meta quantisation)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return remembered(func, args, kwargs, lambda f, a, k: f(*a, **(k or {})))


def _fresh(func) -> bool:
    known = _FRESH.get(id(func))  # by id: ops are process-long singletons, and hashing one is slow
    if known is None:
        schema = getattr(func, "_schema", None)
        known = schema is not None and func is not _SCALAR and not any(
            a.alias_info is not None for a in list(schema.arguments) + list(schema.returns))
        _FRESH[id(func)] = known
    return known


def _key(func, args, kwargs):
    """The cache key of one op, or None when it must run."""
    if not _fresh(func):
        return None
    parts: list = [id(func)]
    seen_meta = False

    def add(x) -> bool:
        nonlocal seen_meta
        if isinstance(x, torch.Tensor):
            if not x.is_meta or type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):
                return False
            seen_meta = True
            parts.append((tuple(x.shape), x.stride(), x.dtype, x.storage_offset()))
        elif isinstance(x, (list, tuple)):
            parts.append(len(x))
            return all(add(y) for y in x)
        elif isinstance(x, _ATOMS):
            parts.append((type(x), x))
        else:
            return False
        return True
    if not all(add(a) for a in args):
        return None
    for k in sorted(kwargs or {}):
        parts.append(k)
        if not add(kwargs[k]):
            return None
    return tuple(parts) if seen_meta else None


def _spec(out, inputs: set[int]):
    """Layout of fresh meta outputs (each with a storage of its own, none an input's), or None."""
    storages: set[int] = set(inputs)

    def one(x):
        if isinstance(x, torch.Tensor):
            if not x.is_meta or x.storage_offset() != 0 or id(x.untyped_storage()) in storages:
                return None
            storages.add(id(x.untyped_storage()))
            layout = (tuple(x.shape), x.stride(), x.dtype)
            if torch.empty_strided(layout[0], layout[1], dtype=layout[2], device="meta").untyped_storage().nbytes() \
                    != x.untyped_storage().nbytes():
                return None
            return ("t", layout)
        if isinstance(x, (list, tuple)):
            parts = [one(y) for y in x]
            return None if any(p is None for p in parts) else ("tuple" if isinstance(x, tuple) else "list", tuple(parts))
        if isinstance(x, _ATOMS):
            return ("v", x)
        return None
    return one(out)


def _rebuild(spec):
    kind, body = spec
    if kind == "t":
        return torch.empty_strided(body[0], body[1], dtype=body[2], device="meta")
    if kind == "v":
        return body
    parts = [_rebuild(s) for s in body]
    return tuple(parts) if kind == "tuple" else parts
