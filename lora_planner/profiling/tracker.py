"""Live tensor bytes, tracked at the dispatcher: works on meta and fake tensors (no memory) and real ones.

Every tensor an op returns is counted once per storage; a weak reference to the storage takes its
bytes off again when autograd or Python frees it. Peaks are kept per phase of the step.

A custom op whose CPU kernel is a composite of torch ops (bitsandbytes' ``gemm_4bit``: dequantise the
4-bit weight, then ``linear``) would hide its transients inside one dispatch: the tracker runs that
composite itself, under the tracker, so the dequantised weight is counted while it lives (on meta and
CPU alike; CPU runs exactly this composite).
"""
from __future__ import annotations

import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


_SCALAR = torch.ops.aten._local_scalar_dense.default
_COMPOSITES: dict | None = None


def _composites() -> dict:
    """op -> the Python composite its CPU kernel runs (bitsandbytes, when it is loaded)."""
    global _COMPOSITES
    if _COMPOSITES is None:
        if "bitsandbytes" not in sys.modules:
            return {}
        try:
            from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl
        except ImportError:  # bitsandbytes is being imported (its import runs torch ops): nothing to run yet
            return {}

        _COMPOSITES = {torch.ops.bitsandbytes.gemm_4bit.default: _gemm_4bit_default_impl}
    return _COMPOSITES


def _no_data(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return t.is_meta or isinstance(t, FakeTensor)


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._refs: dict[int, weakref.ref] = {}

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        n = storage.nbytes()
        self.live += n
        if self.live > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = self.live

        def free(_ref, key=key, n=n):
            self.live -= n
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, free)

    def track_all(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.track(t)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.peaks[phase] = max(self.peaks.get(phase, 0), self.live)

    def run(self, func, args, kwargs):
        """The op itself; a subclass may correct its outputs before they are counted.

        A tensor without data (meta, fake) cannot answer a yes/no question about its values; the
        only ones a training step asks are transformers' "is the attention mask all ones?" checks,
        and our traced batches have a padded position, as real padded batches do: the answer is no.
        """
        if func is _SCALAR and args[0].dtype == torch.bool and _no_data(args[0]):
            return False
        composite = _composites().get(func)
        if composite is not None and args[0].device.type in ("cpu", "meta"):
            with self:  # its inner ops are counted too
                return composite(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = self.run(func, args, kwargs)
        self._track_out(out)
        return out

    def _track_out(self, out) -> None:
        """Every tensor an op returned (ops return a tensor, or a tuple or list that may nest)."""
        if isinstance(out, torch.Tensor):
            self.track(out)
        elif isinstance(out, (tuple, list)):
            for x in out:
                self._track_out(x)
