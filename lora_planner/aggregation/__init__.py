"""Aggregation of heterogeneous LoRA adapters (imports torch when used).

    from lora_planner.aggregation import get_aggregator, ClientUpdate, delta_weights
    agg = get_aggregator("flora")
    result = agg.aggregate([ClientUpdate(state_dict=sd, lora_config=cfg, num_examples=n), ...])
    client_state = agg.for_client(result, client_lora_config)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import LoraPlannerError, nearest
from .rules import FedIT, FlexLoRA, FLoRA, GlobalAdapter, HetLoRA, STAgg, delta_weights
from .updates import ClientUpdate, Factors, UpdateRejected, parse_update

AGGREGATORS = {r.name: r for r in (FedIT, HetLoRA, FLoRA, STAgg, FlexLoRA)}


def get_aggregator(name: str, **options):
    """A fresh aggregator by name: fedit, hetlora, flora, stagg, flexlora."""
    if name not in AGGREGATORS:
        raise LoraPlannerError("aggregator", "a known rule", name, nearest(name, AGGREGATORS))
    return AGGREGATORS[name](**options)


def check_update(update: ClientUpdate) -> None:
    """Raise UpdateRejected (with the reason) if the update breaks its plan; the caller may drop it."""
    parse_update(update)


def save_state(aggregator, directory: str | os.PathLike) -> None:
    """Server state as safetensors + JSON (atomic renames; never pickle)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = aggregator.state_dict()
    tmp_t, tmp_j = d / ".state.safetensors.tmp", d / ".state.json.tmp"
    save_file(state["tensors"], str(tmp_t)) if state["tensors"] else tmp_t.write_bytes(b"")
    tmp_j.write_text(json.dumps(state["meta"], indent=1))
    os.replace(tmp_t, d / "state.safetensors")
    os.replace(tmp_j, d / "state.json")


def load_state(aggregator, directory: str | os.PathLike) -> None:
    from safetensors.torch import load_file

    d = Path(directory)
    meta = json.loads((d / "state.json").read_text())
    blob = d / "state.safetensors"
    tensors = load_file(str(blob)) if blob.stat().st_size else {}
    aggregator.load_state_dict({"tensors": tensors, "meta": meta})


__all__ = ["AGGREGATORS", "ClientUpdate", "Factors", "GlobalAdapter", "UpdateRejected", "check_update", "delta_weights",
           "get_aggregator", "load_state", "save_state"]
