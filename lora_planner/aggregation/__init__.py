"""Aggregation of heterogeneous LoRA adapters (imports torch when used).

    from lora_planner.aggregation import get_aggregator, ClientUpdate, delta_weights
    agg = get_aggregator("flora")
    result = agg.aggregate([ClientUpdate(state_dict=sd, lora_config=cfg, num_examples=n), ...])
    payload = agg.for_client(result, client_lora_config)   # a ClientPayload, whatever the rule
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import read_dir_verified, write_dir_atomic
from ..registry import Plugin, Registry
from .rules import (AggregationRule, ClientPayload, FedIT, FlexLoRA, FLoRA, GlobalAdapter, HetLoRA, STAgg, delta_weights)
from .updates import ClientUpdate, Factors, UpdateRejected, parse_update

AGGREGATORS: Registry = Registry("aggregation rule", "aggregation", [
    Plugin("fedit", "FedAvg of A and B separately; one rank everywhere (inexact for B·A)", FedIT),
    Plugin("hetlora", "zero-padding to the largest rank, example (or sparsity) weights; truncation back", HetLoRA),
    Plugin("flora", "stacking: exact Σ p·B·A for any ranks; clients merge it and restart LoRA", FLoRA),
    Plugin("stagg", "Fed-piLot STAgg: spatial per-module mean + temporal dynamic weight adjustment", STAgg),
    Plugin("flexlora", "SVD of the exact Σ p·B·A, truncated to each client's rank", FlexLoRA),
])


def get_aggregator(name: str, **options) -> AggregationRule:
    """A fresh aggregator by name: fedit, hetlora, flora, stagg, flexlora."""
    return AGGREGATORS.get(name).obj(**options)


def check_update(update: ClientUpdate) -> None:
    """Raise UpdateRejected (with the reason) if the update breaks its plan; the caller may drop it."""
    parse_update(update)


def save_state(aggregator: AggregationRule, directory: str | os.PathLike) -> None:
    """Server state as one folder (safetensors + JSON + a manifest of checksums), written as a unit."""
    from safetensors.torch import save_file

    state = aggregator.state_dict()

    def write(tmp: Path) -> None:
        if state["tensors"]:
            save_file(state["tensors"], str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state["meta"], indent=1))

    write_dir_atomic(directory, write)


def load_state(aggregator: AggregationRule, directory: str | os.PathLike) -> None:
    """Load what save_state wrote; a torn or edited folder is refused with one line."""
    from safetensors.torch import load_file

    d = Path(directory)
    read_dir_verified(d, "aggregator state")
    meta = json.loads((d / "state.json").read_text())
    blob = d / "state.safetensors"
    tensors = load_file(str(blob)) if blob.exists() else {}
    aggregator.load_state_dict({"tensors": tensors, "meta": meta})


__all__ = ["AGGREGATORS", "AggregationRule", "ClientPayload", "ClientUpdate", "Factors", "GlobalAdapter", "UpdateRejected",
           "check_update", "delta_weights", "get_aggregator", "load_state", "save_state"]
