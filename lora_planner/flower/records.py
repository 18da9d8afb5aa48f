"""What crosses the wire, as Flower records: a client's task out, its result back (no transport of our own).

Out (one new RecordDict per node, never shared): ``ConfigRecord "task"`` with the ClientTask and the
client-side settings as JSON, ``ArrayRecord "adapter"`` (its slice of the global adapter and the
head) and ``ArrayRecord "base_delta"`` (merge rules). Back: ``ArrayRecord "arrays"`` (its adapter
state), ``MetricRecord "metrics"`` (``num-examples``, ``train-loss``: what stock FedAvg reads) and
``ConfigRecord "result"`` (the rest of the ClientResult as JSON). Tensors travel as float32
(ArrayRecord refuses bf16) with their dtypes in the JSON, and are cast back on arrival.
"""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from ..aggregation.rules import ClientPayload
from ..aggregation.updates import ClientUpdate
from ..training.client import ClientResult, ClientTask

CLIENT_SETTINGS = ("model", "task", "num_labels", "dtype", "seed", "data", "text_column", "label_column",
                   "instruction_column", "context_column", "response_column", "device", "quantization")


def _dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def to_arrays(tensors: dict[str, Any]):
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().to("cpu").float().contiguous() for k, v in tensors.items()})


def from_arrays(record, dtypes: dict[str, str]) -> dict[str, Any]:
    import torch

    out = record.to_torch_state_dict() if len(record) else {}
    return {k: v.to(getattr(torch, dtypes.get(k, "float32"))) for k, v in out.items()}


def task_record(task: ClientTask, settings) -> Any:
    """The RecordDict a node receives for this task."""
    from flwr.app import ConfigRecord, RecordDict

    body = {f.name: getattr(task, f.name) for f in fields(task) if f.name != "payload"}
    body["indices"] = list(task.indices)
    payload = task.payload
    meta = {"task": body, "settings": {k: getattr(settings, k) for k in CLIENT_SETTINGS}, "wire_bytes": payload.wire_bytes,
            "dtypes": {k: _dtype_name(v) for k, v in {**payload.adapter, **payload.base_delta}.items()}}
    return RecordDict({"task": ConfigRecord({"json": json.dumps(meta)}), "adapter": to_arrays(payload.adapter),
                       "base_delta": to_arrays(payload.base_delta)})


def read_task(content) -> tuple[ClientTask, dict]:
    """(the ClientTask, the client-side settings) from a received RecordDict."""
    meta = json.loads(content["task"]["json"])
    dtypes = meta["dtypes"]
    payload = ClientPayload(from_arrays(content["adapter"], dtypes), from_arrays(content["base_delta"], dtypes),
                            meta["wire_bytes"])
    body = meta["task"]
    body["indices"] = tuple(body["indices"])
    return ClientTask(payload=payload, **body), meta["settings"]


def result_record(result: ClientResult, partition_id: int) -> Any:
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    state = dict(result.update.state_dict) if result.update is not None else {}
    body = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("update", "extras")}
    body.update(partition_id=partition_id, dtypes={k: _dtype_name(v) for k, v in state.items()},
                lora_config=dict(result.update.lora_config) if result.update is not None else None)
    metrics = {"num-examples": result.update.num_examples if result.update is not None else 0,
               "train-loss": float(result.train_loss) if result.train_loss is not None else float("nan")}
    return RecordDict({"arrays": to_arrays(state), "metrics": MetricRecord(metrics),
                       "result": ConfigRecord({"json": json.dumps(body)})})


def read_result(content) -> ClientResult:
    body = json.loads(content["result"]["json"])
    state = from_arrays(content["arrays"], body.pop("dtypes"))
    body.pop("partition_id", None)
    cfg = body.pop("lora_config")
    update = None
    if cfg is not None:
        update = ClientUpdate(state, cfg, int(content["metrics"]["num-examples"]), {"train_loss": body["train_loss"]},
                              body["client_id"])
    return ClientResult(update=update, **body)
