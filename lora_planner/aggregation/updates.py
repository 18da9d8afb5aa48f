"""Client updates as PEFT saves them: parsing by key name, validation, and the client's own slice.

A PEFT adapter state dict (``get_peft_model_state_dict``) holds, per adapted module,
``<prefix><module>.lora_A.weight`` (r x in) and ``<prefix><module>.lora_B.weight`` (out x r).
Factors are told apart by these names, never by comparing a dimension to the rank. Each
module's scale alpha/r (alpha/sqrt(r) with rsLoRA) travels with its factors (ΔW = scale·B·A)
and is applied inside the first arithmetic any rule does with B (the same pass that weights it),
so it is in before ranks are mixed, without an extra copy of every client's B.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..adapter_config import _pattern_value, _target_found
from ..errors import LoraPlannerError

PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


class UpdateRejected(LoraPlannerError):
    """A client update that its plan does not allow (shape, rank, module, NaN/Inf)."""


@dataclass
class ClientUpdate:
    """What one client returns after local training.

    Attributes:
        state_dict: the adapter state dict as PEFT saves it (keys with or without 'base_model.model.').
        lora_config: that client's ``peft.LoraConfig`` or its adapter_config dict.
        num_examples: local examples trained on (aggregation weight).
        metrics: optional numbers (loss, accuracy, ...).
    """

    state_dict: Mapping[str, Any]
    lora_config: Any
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    client_id: str = ""


@dataclass(frozen=True)
class Factors:
    """One module's LoRA: ΔW = scale · B @ A; A (r x in), B (out x r). Rules' outputs have scale 1."""

    A: Any
    B: Any
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def finite(t) -> bool:
    """No NaN or Inf in ``t``: one summing pass (NaN/Inf propagate), an exact check only if the sum is not finite."""
    import torch

    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


def config_dict(cfg: Any) -> dict:
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if hasattr(cfg, "to_dict"):
        d = cfg.to_dict()
        tm = d.get("target_modules")
        if isinstance(tm, set):
            d["target_modules"] = sorted(tm)
        return d
    raise LoraPlannerError("lora_config", "a peft.LoraConfig or an adapter_config dict", type(cfg).__name__, "")


def module_rank_alpha(cfg: Mapping, module: str) -> tuple[int, float]:
    r = int(_pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8)))
    alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8)))
    return r, alpha


def scale_of(cfg: Mapping, module: str) -> float:
    r, alpha = module_rank_alpha(cfg, module)
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def strip(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def parse_update(update: ClientUpdate) -> dict[str, Factors]:
    """module name -> Factors (float32, with the module's scale); raises UpdateRejected with the reason."""
    import torch

    cfg = config_dict(update.lora_config)
    who = update.client_id or "client update"
    if not isinstance(update.num_examples, int) or update.num_examples <= 0:
        raise UpdateRejected(f"{who}: num_examples", "a positive whole number", update.num_examples, "")
    a_keys = {strip(k)[: -len(A_SUFFIX)]: k for k in update.state_dict if k.endswith(A_SUFFIX)}
    b_keys = {strip(k)[: -len(B_SUFFIX)]: k for k in update.state_dict if k.endswith(B_SUFFIX)}
    if set(a_keys) != set(b_keys):
        odd = sorted(set(a_keys) ^ set(b_keys))[0]
        raise UpdateRejected(f"{who}: {odd}", "present with both lora_A and lora_B", "one factor only", "Send both factors.")
    if not a_keys:
        raise UpdateRejected(f"{who}: state_dict", "LoRA factors (*.lora_A.weight, *.lora_B.weight)", "none", "")
    out = {}
    for module in sorted(a_keys):
        A, B = update.state_dict[a_keys[module]], update.state_dict[b_keys[module]]
        if not _target_found(cfg, module):
            raise UpdateRejected(f"{who}: {module}", "a module its plan adapts", "an unplanned module", "Drop this update.")
        r, _ = module_rank_alpha(cfg, module)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            raise UpdateRejected(f"{who}: {module}", f"rank {r} (A: {r} x in, B: out x {r})",
                                 f"A {tuple(A.shape)}, B {tuple(B.shape)}", "Drop this update.")
        A32 = A.detach() if A.dtype == torch.float32 else A.detach().to(torch.float32)
        B32 = B.detach() if B.dtype == torch.float32 else B.detach().to(torch.float32)
        if not (finite(A32) and finite(B32)):
            raise UpdateRejected(f"{who}: {module}", "finite", "NaN or Inf values", "Drop this update.")
        out[module] = Factors(A32, B32, scale_of(cfg, module))
    return out


def parse_extras(update: ClientUpdate) -> dict[str, Any]:
    """The update's trainable parameters outside LoRA (a classifier head, PEFT's ``modules_to_save``),
    by their PEFT state-dict key; raises UpdateRejected if one is not finite."""
    import torch

    who = update.client_id or "client update"
    out = {}
    for key, t in update.state_dict.items():
        if key.endswith(A_SUFFIX) or key.endswith(B_SUFFIX):
            continue
        t32 = t.detach().to(torch.float32)
        if not finite(t32):
            raise UpdateRejected(f"{who}: {key}", "finite", "NaN or Inf values", "Drop this update.")
        out[key] = t.detach()
    return out


def client_slice(modules: Mapping[str, Factors], lora_config: Any, seed: int = 0) -> dict[str, Any]:
    """A PEFT state dict for one client: its own modules at its own ranks, scale unfolded.

    Truncation keeps the leading rank components (HetLoRA); a client rank above the global one is
    filled with small random A rows and zero B columns, so ΔW is unchanged and those rows can still learn.
    """
    import torch

    cfg = config_dict(lora_config)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module, f in modules.items():
        if not _target_found(cfg, module):
            continue
        r, _ = module_rank_alpha(cfg, module)
        A, B = f.A[:r], f.B[:, :r]
        if r > f.rank:
            extra = r - f.rank
            bound = 1.0 / math.sqrt(f.A.shape[1])
            A = torch.cat([A, (torch.rand(extra, f.A.shape[1], generator=gen) * 2 - 1) * bound])
            B = torch.cat([B, torch.zeros(f.B.shape[0], extra)], dim=1)
        out[PREFIX + module + A_SUFFIX] = A.contiguous().clone()
        out[PREFIX + module + B_SUFFIX] = (B * (f.scale / scale_of(cfg, module))).contiguous()
    return out
