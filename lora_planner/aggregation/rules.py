"""Aggregation rules: thin classes wiring the pure functions of ``math.py`` (no shared base class).

Every rule satisfies :class:`AggregationRule`: ``aggregate(updates) -> GlobalAdapter``;
``for_client(result, lora_config) -> ClientPayload`` (what that client loads, whatever the rule);
server state across rounds in ``state_dict()`` / ``load_state_dict()`` (tensors + JSON-able
metadata). Per module, only the clients that trained it take part, weighted by their examples
renormalised over those clients. Trainable parameters outside LoRA (a classifier head) are
averaged by examples over the clients that sent them and travel with every payload.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from ..errors import LoraPlannerError
from . import math as agg
from .updates import ClientUpdate, Factors, client_slice, parse_extras, parse_update


@dataclass
class GlobalAdapter:
    """The aggregated adapter: per module, factors with the scale folded in (ΔW = B @ A).

    Attributes:
        modules: this round's aggregate per adapted module.
        extras: example-weighted means of the trainable non-LoRA parameters (PEFT keys).
        base_delta: merge rules (FLoRA): per module, the dense ΔW (out x in) that every client's
            base weight carries from now on, summed over all rounds so far.
    """

    rule: str
    modules: dict[str, Factors]
    round: int = 0
    info: dict = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    base_delta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientPayload:
    """What a client receives from any rule.

    Attributes:
        adapter: a PEFT state dict to load (its planned modules at its ranks, and the averaged head);
            empty LoRA entries mean "start a fresh LoRA".
        base_delta: module name -> dense ΔW (out x in) that its frozen base weight must carry before
            training: the base weight is set to pristine + ΔW (absolute, so applying it twice is harmless).
    """

    adapter: dict[str, Any]
    base_delta: dict[str, Any] = field(default_factory=dict)
    wire_bytes: int = 0  # what a transport sends: the adapter, and for merge rules this round's stacked factors

    @classmethod
    def empty(cls) -> "ClientPayload":
        """Round 1: a fresh LoRA on the pristine base."""
        return cls({})


class AggregationRule(Protocol):
    name: str

    def aggregate(self, updates: Sequence[ClientUpdate]) -> GlobalAdapter: ...

    def for_client(self, result: GlobalAdapter, lora_config: Any, seed: int = 0) -> ClientPayload: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def delta_weights(result: GlobalAdapter) -> dict[str, Any]:
    """Per adapted module name, the dense ΔW = scale · B·A (out x in) this round's result stands for."""
    return {name: (f.B @ f.A).mul_(f.scale) if f.scale != 1.0 else f.B @ f.A for name, f in result.modules.items()}


def by_module(updates: Sequence[ClientUpdate]) -> tuple[dict[str, list[tuple[int, Factors]]], list[int]]:
    """module -> [(client index, its factors)] over the clients that trained it; and every client's examples."""
    if not updates:
        raise LoraPlannerError("updates", "at least one client update", "none", "Aggregate after clients replied.")
    modules: dict[str, list[tuple[int, Factors]]] = {}
    for k, u in enumerate(updates):
        for name, f in parse_update(u).items():
            modules.setdefault(name, []).append((k, f))
    return modules, [u.num_examples for u in updates]


def scales_of(items) -> list[float]:
    return [f.scale for _, f in items]


def example_weights(items, examples) -> list[float]:
    """Each contributing client's examples over the examples of the clients that trained this module."""
    total = sum(examples[k] for k, _ in items)
    return [examples[k] / total for k, _ in items]


def average_extras(updates: Sequence[ClientUpdate]) -> dict[str, Any]:
    """Per non-LoRA key, the example-weighted mean over the clients that sent it."""
    per_key: dict[str, list[tuple[int, Any]]] = {}
    for u in updates:
        for key, t in parse_extras(u).items():
            per_key.setdefault(key, []).append((u.num_examples, t))
    out = {}
    for key, items in sorted(per_key.items()):
        total = sum(n for n, _ in items)
        out[key] = agg.weighted_mean([t for _, t in items], [n / total for n, _ in items])
    return out


def payload(result: GlobalAdapter, lora_config: Any, seed: int, modules: dict[str, Factors] | None = None) -> ClientPayload:
    """The client's slice of ``modules`` (default: the result's), the averaged extras and the base delta."""
    adapter = client_slice(result.modules if modules is None else modules, lora_config, seed)
    adapter.update({k: v.clone() for k, v in result.extras.items()})
    wire = sum(t.numel() * t.element_size() for t in adapter.values())
    if result.base_delta:  # the base's ΔW travels as this round's stacked factors; clients add them up
        wire += sum(f.A.numel() * f.A.element_size() + f.B.numel() * f.B.element_size() for f in result.modules.values())
    return ClientPayload(adapter, dict(result.base_delta), wire)


def _check_rule(meta: dict, name: str) -> None:
    if meta.get("rule") != name:
        raise LoraPlannerError("aggregator state", f"saved by '{name}'", meta.get("rule"), "Load it into the rule that saved it.")


# ---- per-module rules: one aggregate per module from this round's updates ---------------------

ModuleFn = Callable[[str, list, list[int]], Factors]


class PerModuleRule:
    """A rule whose round result is one pure function per module of this round's updates."""

    def __init__(self, name: str, module_fn: ModuleFn) -> None:
        self.name, self.module_fn, self.round = name, module_fn, 0

    def aggregate(self, updates: Sequence[ClientUpdate]) -> GlobalAdapter:
        modules, examples = by_module(updates)
        out = {name: self.module_fn(name, items, examples) for name, items in sorted(modules.items())}
        self.round += 1
        return GlobalAdapter(self.name, out, self.round, extras=average_extras(updates))

    def for_client(self, result: GlobalAdapter, lora_config: Any, seed: int = 0) -> ClientPayload:
        """Its planned modules at its planned ranks (HetLoRA truncation, FlexLoRA's SVD truncation)."""
        return payload(result, lora_config, seed)

    def state_dict(self) -> dict:
        return {"tensors": {}, "meta": {"rule": self.name, "round": self.round}}

    def load_state_dict(self, state: dict) -> None:
        _check_rule(state["meta"], self.name)
        self.round = int(state["meta"].get("round", 0))


def fedit_module(name, items, examples) -> Factors:
    """FedAvg of A and B separately, one rank everywhere (inexact for the product)."""
    ranks = {f.rank for _, f in items}
    if len(ranks) > 1:
        raise LoraPlannerError(f"rank of {name}", "the same for every client under fedit", sorted(ranks),
                               "Use hetlora, flora, stagg or flexlora for mixed ranks.")
    return Factors(*agg.fedavg([f.A for _, f in items], [f.B for _, f in items], example_weights(items, examples), scales_of(items)))


def hetlora_module(weighting: str = "examples") -> ModuleFn:
    """Zero-padding to the largest rank, data-size (or sparsity) weights; truncation back."""
    if weighting not in ("examples", "sparsity"):
        raise LoraPlannerError("weighting", "'examples' or 'sparsity'", weighting, "")

    def module(name, items, examples) -> Factors:
        As, Bs = [f.A for _, f in items], [f.B for _, f in items]
        p = agg.sparsity_weights(As, Bs, scales_of(items)) if weighting == "sparsity" else example_weights(items, examples)
        return Factors(*agg.zero_pad_mean(As, Bs, p, scales_of(items)))
    return module


def stack_module(name, items, examples) -> Factors:
    return Factors(*agg.stack([f.A for _, f in items], [f.B for _, f in items], example_weights(items, examples), scales_of(items)))


def flexlora_module(name, items, examples) -> Factors:
    """SVD of Σ p_k B_k A_k (from the stacked factors), truncated to the largest client rank."""
    A, B = agg.stack([f.A for _, f in items], [f.B for _, f in items], example_weights(items, examples), scales_of(items))
    return Factors(*agg.svd_of_product(A, B, max(f.rank for _, f in items)))


def FedIT() -> PerModuleRule:
    return PerModuleRule("fedit", fedit_module)


def HetLoRA(weighting: str = "examples") -> PerModuleRule:
    return PerModuleRule("hetlora", hetlora_module(weighting))


def FlexLoRA() -> PerModuleRule:
    return PerModuleRule("flexlora", flexlora_module)


# ---- FLoRA: stacking, merged into every client's base ------------------------------------------

class FLoRA:
    """Stacking: exact Σ p_k B_k A_k for any mix of ranks; every client folds it into its base
    weights and starts a fresh LoRA of its own rank. The base's ΔW is summed over rounds here."""

    name = "flora"

    def __init__(self) -> None:
        self.round = 0
        self.base_delta: dict[str, Any] = {}

    def aggregate(self, updates: Sequence[ClientUpdate]) -> GlobalAdapter:
        modules, examples = by_module(updates)
        out = {name: stack_module(name, items, examples) for name, items in sorted(modules.items())}
        for name, f in out.items():
            d = f.B @ f.A
            self.base_delta[name] = self.base_delta[name] + d if name in self.base_delta else d
        self.round += 1
        return GlobalAdapter(self.name, out, self.round, extras=average_extras(updates), base_delta=dict(self.base_delta))

    def for_client(self, result: GlobalAdapter, lora_config: Any = None, seed: int = 0) -> ClientPayload:
        """No LoRA factors (a fresh LoRA), the averaged head, and the base's summed ΔW."""
        return payload(result, lora_config or {}, seed, modules={})

    def state_dict(self) -> dict:
        tensors = {f"{n}.delta": d.contiguous() for n, d in self.base_delta.items()}
        return {"tensors": tensors, "meta": {"rule": self.name, "round": self.round, "modules": sorted(self.base_delta)}}

    def load_state_dict(self, state: dict) -> None:
        _check_rule(state["meta"], self.name)
        self.round = int(state["meta"].get("round", 0))
        self.base_delta = {n: state["tensors"][f"{n}.delta"] for n in state["meta"].get("modules", [])}


# ---- STAgg: spatial aggregation + a temporal server step ---------------------------------------

class STAgg:
    """Fed-piLot's spatial-temporal aggregation with dynamic weight adjustment (our definition, DESIGN §6).

    Spatial: per module over the clients that trained it, data-size weights, scale folded, padded to
    the global rank. Untrained modules keep their value. Temporal (``math.dwa_*``, ``math.server_step``):
    W ← W + η (agg − W) with η = n·softmax(ρ/T) over this round's modules (mean 1), capped at
    eta_max, where ρ_j = u_j + ū·(m_j − m̄)/(m̄ + ε): u_j = (c̄ − c_j)/c̄ (under-updated modules),
    ū = mean |u| (how uneven the updates are), c_j = update count, m_j = EMA of the relative change
    ‖agg − W‖/‖W‖ (modules still moving). Every module updated equally often: ρ = 0, η = 1, FedAvg.
    """

    name = "stagg"

    def __init__(self, temperature: float = 1.0, eta_max: float = 2.0, ema: float = 0.5) -> None:
        self.temperature, self.eta_max, self.ema = temperature, eta_max, ema
        self.round = 0
        self.W: dict[str, Factors] = {}
        self.count: dict[str, int] = {}
        self.moving: dict[str, float] = {}

    def aggregate(self, updates: Sequence[ClientUpdate]) -> GlobalAdapter:
        modules, examples = by_module(updates)
        spatial = {}
        for name, items in modules.items():
            R = max([f.rank for _, f in items] + ([self.W[name].rank] if name in self.W else []))
            spatial[name] = Factors(*agg.zero_pad_mean([f.A for _, f in items], [f.B for _, f in items],
                                                       example_weights(items, examples), scales_of(items), R))
        for name, f in spatial.items():
            if name in self.W:
                change = agg.relative_change(self.W[name].A, self.W[name].B, f.A, f.B)
                self.moving[name] = agg.ema(self.moving.get(name), change, self.ema)
        names = sorted(spatial)
        rho = agg.dwa_pressure([self.count.get(n, 0) for n in names], [self.moving.get(n, 0.0) for n in names])
        etas = dict(zip(names, agg.dwa_steps(rho, self.temperature, self.eta_max)))
        for name in names:
            f = spatial[name]
            self.W[name] = Factors(*agg.server_step(self.W[name].A, self.W[name].B, f.A, f.B, etas[name])) if name in self.W else f
            self.count[name] = self.count.get(name, 0) + 1
        self.round += 1
        return GlobalAdapter(self.name, dict(sorted(self.W.items())), self.round, {"eta": etas}, extras=average_extras(updates))

    def for_client(self, result: GlobalAdapter, lora_config: Any, seed: int = 0) -> ClientPayload:
        return payload(result, lora_config, seed)

    def state_dict(self) -> dict:
        tensors = {}
        for name, f in self.W.items():
            tensors[f"{name}.A"] = f.A.contiguous()
            tensors[f"{name}.B"] = f.B.contiguous()
        meta = {"rule": self.name, "round": self.round, "count": self.count, "moving": self.moving,
                "temperature": self.temperature, "eta_max": self.eta_max, "ema": self.ema}
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: dict) -> None:
        meta, t = state["meta"], state["tensors"]
        _check_rule(meta, self.name)
        self.round = int(meta.get("round", 0))
        self.count = {k: int(v) for k, v in meta["count"].items()}
        self.moving = {k: float(v) for k, v in meta["moving"].items()}
        self.temperature, self.eta_max, self.ema = meta["temperature"], meta["eta_max"], meta["ema"]
        self.W = {n: Factors(t[f"{n}.A"], t[f"{n}.B"]) for n in self.count}
