"""Aggregation rules: thin classes wiring the pure functions of ``math.py`` per module.

Every rule: ``aggregate(updates) -> GlobalAdapter``; ``for_client(result, lora_config)``; server
state across rounds in ``state_dict()`` / ``load_state_dict()`` (tensors + JSON-able metadata).
Per module, only the clients that trained it take part, weighted by their examples renormalised
over those clients.
"""
from __future__ import annotations

import math as _m
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import LoraPlannerError
from . import math as agg
from .updates import ClientUpdate, Factors, client_slice, parse_update


@dataclass
class GlobalAdapter:
    """The aggregated adapter: per module, factors with the scale folded in (ΔW = B @ A).

    ``merge`` is True for FLoRA: clients merge ΔW into their base weights and start a fresh LoRA.
    """

    rule: str
    modules: dict[str, Factors]
    merge: bool = False
    round: int = 0
    info: dict = field(default_factory=dict)


def delta_weights(result: GlobalAdapter) -> dict[str, Any]:
    """Per adapted module name, the dense ΔW = scale · B·A (out x in) the result stands for."""
    return {name: (f.B @ f.A).mul_(f.scale) if f.scale != 1.0 else f.B @ f.A for name, f in result.modules.items()}


def _by_module(updates: Sequence[ClientUpdate]):
    parsed = [parse_update(u) for u in updates]
    modules: dict[str, list[tuple[int, Factors]]] = {}
    for k, (u, mods) in enumerate(zip(updates, parsed)):
        for name, f in mods.items():
            modules.setdefault(name, []).append((k, f))
    return modules, [u.num_examples for u in updates]


def _sc(items) -> list[float]:
    return [f.scale for _, f in items]


def _weights(items, examples) -> list[float]:
    total = sum(examples[k] for k, _ in items)
    return [examples[k] / total for k, _ in items]


class _Rule:
    name = ""
    merge = False

    def __init__(self) -> None:
        self.round = 0

    def aggregate(self, updates: Sequence[ClientUpdate]) -> GlobalAdapter:
        if not updates:
            raise LoraPlannerError("updates", "at least one client update", "none", "Aggregate after clients replied.")
        modules, examples = _by_module(updates)
        out = {name: self._module(name, items, examples) for name, items in sorted(modules.items())}
        self.round += 1
        return GlobalAdapter(self.name, out, self.merge, self.round)

    def _module(self, name, items, examples) -> Factors:  # pragma: no cover - overridden
        raise NotImplementedError

    def for_client(self, result: GlobalAdapter, lora_config: Any, seed: int = 0) -> dict[str, Any]:
        """The PEFT state dict this client loads: its planned modules at its planned ranks."""
        return client_slice(result.modules, lora_config, seed)

    def state_dict(self) -> dict:
        return {"tensors": {}, "meta": {"rule": self.name, "round": self.round}}

    def load_state_dict(self, state: dict) -> None:
        meta = state["meta"]
        if meta.get("rule") != self.name:
            raise LoraPlannerError("aggregator state", f"saved by '{self.name}'", meta.get("rule"), "Load it into the rule that saved it.")
        self.round = int(meta.get("round", 0))


class FedIT(_Rule):
    """FedAvg of A and B separately, one rank everywhere (inexact for the product)."""

    name = "fedit"

    def _module(self, name, items, examples):
        ranks = {f.rank for _, f in items}
        if len(ranks) > 1:
            raise LoraPlannerError(f"rank of {name}", "the same for every client under fedit", sorted(ranks),
                                   "Use hetlora, flora, stagg or flexlora for mixed ranks.")
        A, B = agg.fedavg([f.A for _, f in items], [f.B for _, f in items], _weights(items, examples), _sc(items))
        return Factors(A, B)


class HetLoRA(_Rule):
    """Zero-padding to the largest rank, data-size (or sparsity) weights; truncation back."""

    name = "hetlora"

    def __init__(self, weighting: str = "examples") -> None:
        super().__init__()
        if weighting not in ("examples", "sparsity"):
            raise LoraPlannerError("weighting", "'examples' or 'sparsity'", weighting, "")
        self.weighting = weighting

    def _module(self, name, items, examples):
        As, Bs = [f.A for _, f in items], [f.B for _, f in items]
        p = agg.sparsity_weights(As, Bs, _sc(items)) if self.weighting == "sparsity" else _weights(items, examples)
        A, B = agg.zero_pad_mean(As, Bs, p, _sc(items))
        return Factors(A, B)


class FLoRA(_Rule):
    """Stacking: exact Σ p_k B_k A_k for any mix of ranks; clients merge it and restart LoRA."""

    name = "flora"
    merge = True

    def _module(self, name, items, examples):
        A, B = agg.stack([f.A for _, f in items], [f.B for _, f in items], _weights(items, examples), _sc(items))
        return Factors(A, B)

    def for_client(self, result: GlobalAdapter, lora_config: Any = None, seed: int = 0) -> dict[str, Any]:
        """What every client merges into its base weights: module name -> dense ΔW (out x in)."""
        return delta_weights(result)


class FlexLoRA(_Rule):
    """SVD of Σ p_k B_k A_k (from the stacked factors), truncated to each client's rank."""

    name = "flexlora"

    def _module(self, name, items, examples):
        A, B = agg.stack([f.A for _, f in items], [f.B for _, f in items], _weights(items, examples), _sc(items))
        return Factors(*agg.svd_of_product(A, B, max(f.rank for _, f in items)))


class STAgg(_Rule):
    """Fed-piLot's spatial-temporal aggregation with dynamic weight adjustment (our definition, DESIGN §6).

    Spatial: per module over the clients that trained it, data-size weights, scale folded, padded to
    the global rank. Untrained modules keep their value. Temporal: W ← W + η (agg − W) with
    η = n·softmax(ρ/T) over this round's modules (mean 1), capped at eta_max, where
    ρ_j = (c̄ − c_j)/c̄ (under-updated modules) + (m_j − m̄)/(m̄ + ε) (modules still moving),
    c_j = update count, m_j = EMA of the relative change ‖agg − W‖/‖W‖.
    """

    name = "stagg"

    def __init__(self, temperature: float = 1.0, eta_max: float = 2.0, ema: float = 0.5) -> None:
        super().__init__()
        self.temperature, self.eta_max, self.ema = temperature, eta_max, ema
        self.W: dict[str, Factors] = {}
        self.count: dict[str, int] = {}
        self.moving: dict[str, float] = {}

    def aggregate(self, updates: Sequence[ClientUpdate]) -> GlobalAdapter:
        import torch

        if not updates:
            raise LoraPlannerError("updates", "at least one client update", "none", "Aggregate after clients replied.")
        modules, examples = _by_module(updates)
        spatial = {}
        for name, items in modules.items():
            R = max([f.rank for _, f in items] + ([self.W[name].rank] if name in self.W else []))
            A, B = agg.zero_pad_mean([f.A for _, f in items], [f.B for _, f in items], _weights(items, examples), _sc(items), R)
            spatial[name] = Factors(A, B)
        change = {}
        for name, f in spatial.items():
            if name in self.W:  # ‖agg − W‖/‖W‖ of the products, from Gram matrices (never out x in)
                Wa, Wb = self.W[name].A, self.W[name].B
                diff = agg.product_norm(torch.cat([f.A, Wa]), torch.cat([f.B, -Wb], dim=1))
                base = agg.product_norm(Wa, Wb)
                change[name] = diff / base if base > 0 else 1.0
        for name, c in change.items():
            self.moving[name] = self.ema * self.moving.get(name, c) + (1 - self.ema) * c
        names = sorted(spatial)
        counts = [self.count.get(n, 0) for n in names]
        c_bar = sum(counts) / len(counts)
        mov = [self.moving.get(n, 0.0) for n in names]
        m_bar = sum(mov) / len(mov)
        rho = [((c_bar - c) / c_bar if c_bar > 0 else 0.0) + ((m - m_bar) / (m_bar + 1e-12) if m_bar > 0 else 0.0)
               for c, m in zip(counts, mov)]
        top = max(rho)
        ex = [_m.exp((r - top) / self.temperature) for r in rho]
        eta = [min(len(ex) * e / sum(ex), self.eta_max) for e in ex]
        etas = {}
        for name, e in zip(names, eta):
            f = spatial[name]
            if name in self.W:
                Wa, Wb = self.W[name].A, self.W[name].B
                if Wa.shape[0] < f.rank:
                    Wa, Wb = agg.pad(Wa, Wb, f.rank)
                self.W[name] = Factors(torch.lerp(Wa, f.A, e), torch.lerp(Wb, f.B, e))  # W + e (agg - W), one pass
            else:
                self.W[name] = f
            self.count[name] = self.count.get(name, 0) + 1
            etas[name] = e
        self.round += 1
        return GlobalAdapter(self.name, dict(sorted(self.W.items())), False, self.round, {"eta": etas})

    def state_dict(self) -> dict:
        tensors = {}
        for name, f in self.W.items():
            tensors[f"{name}.A"] = f.A.contiguous()
            tensors[f"{name}.B"] = f.B.contiguous()
        meta = {"rule": self.name, "round": self.round, "count": self.count, "moving": self.moving,
                "temperature": self.temperature, "eta_max": self.eta_max, "ema": self.ema}
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        meta, t = state["meta"], state["tensors"]
        self.count = {k: int(v) for k, v in meta["count"].items()}
        self.moving = {k: float(v) for k, v in meta["moving"].items()}
        self.temperature, self.eta_max, self.ema = meta["temperature"], meta["eta_max"], meta["ema"]
        self.W = {n: Factors(t[f"{n}.A"], t[f"{n}.B"]) for n in self.count}
