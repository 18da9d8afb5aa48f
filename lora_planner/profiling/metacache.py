"""Remembered meta-kernel outputs: what makes a traced step (and a meta-quantised build) fast.

Meta kernels of most aten ops are Python reference implementations (``torch._refs``, ``torch._prims``):
about 0.3 ms an op, most of a traced step's time. On meta tensors an op's outputs depend only on the op,
its inputs' shapes, strides, offsets and dtypes and its other arguments. Per such key, for the process:

- an op whose schema aliases and mutates nothing (its outputs are fresh tensors): the outputs' layout is
  remembered, and later calls get new empty meta tensors of that layout;
- an in-place op (writes its first argument, returns it; no other argument aliased; not a view-changing
  ``inplace_view`` op such as ``set_`` or ``resize_``) seen returning its first argument with shape, strides,
  offset, dtype and storage unchanged: later calls return that argument at once (AdamW's ``addcdiv_`` is
  0.8 ms an op on meta). Autograd's version counter is bumped above this dispatch level, so it still counts;
- an op seen returning an output that shares an input's storage (``_unsafe_view``): remembered as "must
  run", so its outputs are not examined again.

Anything else runs: an input not on meta, an argument not comparable by value, an op that may alias.
The tracker runs a composite op (bitsandbytes' ``gemm_4bit``) before asking here: its inner ops are remembered
one by one, its transients counted.
``tests/profiling/test_trace.py`` checks traces are the same to the byte with nothing remembered.
"""
from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

OUTPUTS: dict[tuple, tuple] = {}  # key -> layout of the outputs, or _SELF, or _RUN
_SELF, _RUN = ("self",), ("run",)  # an in-place op that returns its first argument unchanged in layout; must run
_FRESH, _IN_PLACE = 1, 2
_KIND: dict[int, int] = {}  # id(op) -> _FRESH (fresh outputs, nothing mutated), _IN_PLACE, or 0 (always run)
_ATOMS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_ATOM_TYPES = frozenset(_ATOMS)
_SCALAR = torch.ops.aten._local_scalar_dense.default


def remembered(func, args, kwargs, run):
    """``run(func, args, kwargs)``, or its remembered outputs rebuilt."""
    kind = _kind(func)
    key = _key(func, args, kwargs) if kind and (kind == _FRESH or args and isinstance(args[0], torch.Tensor)) else None
    if key is None:
        return run(func, args, kwargs)
    spec = OUTPUTS.get(key)
    if spec is not None:
        if spec is _SELF:
            return args[0]
        if spec is not _RUN:
            return _rebuild(spec)
        return run(func, args, kwargs)
    if kind == _IN_PLACE:
        before = _layout(args[0])
        out = run(func, args, kwargs)
        # remembered only as seen: it returned its first argument and left that argument's layout alone
        OUTPUTS[key] = _SELF if out is args[0] and _layout(out) == before else _RUN
        return out
    out = run(func, args, kwargs)
    inputs = {id(t.untyped_storage()) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    spec = _spec(out, inputs)
    OUTPUTS[key] = _RUN if spec is None else spec  # _RUN: an output shares an input's storage (_unsafe_view)
    return out


class MetaCache(TorchDispatchMode):
    """The cache alone, for meta work that is not traced (``build.build_quantized``'s meta quantisation)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return remembered(func, args, kwargs, lambda f, a, k: f(*a, **(k or {})))


def _kind(func) -> int:
    known = _KIND.get(id(func))  # by id: ops are process-long singletons, and hashing one is slow
    if known is None:
        known = 0
        schema = getattr(func, "_schema", None)
        if schema is not None and func is not _SCALAR:
            args, rets = list(schema.arguments), list(schema.returns)
            if not any(a.alias_info is not None for a in args + rets):
                known = _FRESH
            elif (len(rets) == 1 and args and _writes(args[0]) and _writes(rets[0])
                  and all(a.alias_info is None for a in args[1:]) and torch.Tag.inplace_view not in func.tags):
                known = _IN_PLACE
        _KIND[id(func)] = known
    return known


def _writes(a) -> bool:
    return a.alias_info is not None and a.alias_info.is_write


def _layout(t) -> tuple:
    storage = t.untyped_storage()
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, storage._cdata, storage.nbytes())


def _key(func, args, kwargs):
    """The cache key of one op, or None when it must run."""
    parts: list = [id(func)]
    seen_meta = False
    stack = list(args)
    if kwargs:
        for k in sorted(kwargs):
            stack += [k, kwargs[k]]
    for x in stack:
        t = type(x)
        if t is torch.Tensor or isinstance(x, torch.nn.Parameter):
            if not x.is_meta:
                return None
            seen_meta = True
            parts.append((x.shape, x.stride(), x.dtype, x.storage_offset()))
        elif t in _ATOM_TYPES:
            parts.append((t, x))
        elif t is list or t is tuple:
            ok = _sequence(x, parts)
            if not ok:
                return None
            seen_meta = seen_meta or ok == 2
        elif isinstance(x, _ATOMS):
            parts.append((t, x))
        else:
            return None
    return tuple(parts) if seen_meta else None


def _sequence(xs, parts) -> int:
    """Append a list or tuple argument to the key: 0 if it cannot be keyed, 2 if it holds a meta tensor, else 1."""
    parts.append(len(xs))
    found = 1
    for x in xs:
        t = type(x)
        if t is torch.Tensor or isinstance(x, torch.nn.Parameter):
            if not x.is_meta:
                return 0
            found = 2
            parts.append((x.shape, x.stride(), x.dtype, x.storage_offset()))
        elif t in _ATOM_TYPES or isinstance(x, _ATOMS):
            parts.append((t, x))
        elif t is list or t is tuple:
            inner = _sequence(x, parts)
            if not inner:
                return 0
            found = max(found, inner)
        else:
            return 0
    return found


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
