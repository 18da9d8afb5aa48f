"""The ClientApp: a node's side of a round. The frozen base and the data are loaded once per process
(Ray actors serve several nodes in simulation; deployment starts a process per message)."""
from __future__ import annotations

import functools

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from ..training.client import run_client
from .records import read_task, result_record

app = ClientApp()


@functools.lru_cache(maxsize=2)
def shared_base(model: str, task: str, num_labels: int, dtype: str, seed: int, device: str, quantization: str | None = None):
    from ..training.client import SharedBase

    return SharedBase(model, task, num_labels, dtype, seed, device, quantization=quantization)


@functools.lru_cache(maxsize=2)
def dataset(path: str, task: str, text: str, label: str, instruction: str, context: str, response: str, num_labels: int):
    from ..data import load_instructions, load_records

    if task == "causal-lm":
        return load_instructions(path, instruction, context, response)
    return load_records(path, text, label, num_labels=num_labels)


def partition_id(context: Context) -> int:
    return int(context.node_config.get("partition-id", -1))


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which partition this node holds (the server maps node ids to plan clients with it), or a local score."""
    if "score" in msg.content:
        return Message(score(msg.content), reply_to=msg)
    return Message(RecordDict({"partition": ConfigRecord({"partition-id": partition_id(context)})}), reply_to=msg)


def score(content) -> RecordDict:
    import json

    from flwr.app import Array, ArrayRecord

    from ..importance.measure import local_ig

    body = json.loads(content["score"]["json"])
    s = body["settings"]
    base = shared_base(s["model"], s["task"], s["num_labels"], s["dtype"], s["seed"], s["device"], s.get("quantization"))
    data = dataset(s["data"], s["task"], s["text_column"], s["label_column"], s["instruction_column"], s["context_column"],
                   s["response_column"], s["num_labels"])
    idx, bs = body["indices"], body["batch_size"]
    batches = [base.batch(data, idx[i:i + bs], body["seq_len"]) for i in range(0, len(idx), bs)]
    mat, _ = local_ig(base.model, batches, body["targets"], s["task"], probe_rank=body["probe_rank"])
    return RecordDict({"score": ArrayRecord({"values": Array(mat.astype("float64"))})})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this node's task with the executor's client code; a failing client reports its error."""
    task, s = read_task(msg.content)
    if task.fault == "crash-app":
        raise RuntimeError("injected fault: the ClientApp raised")
    base = shared_base(s["model"], s["task"], s["num_labels"], s["dtype"], s["seed"], s["device"], s.get("quantization"))
    data = dataset(s["data"], s["task"], s["text_column"], s["label_column"], s["instruction_column"], s["context_column"],
                   s["response_column"], s["num_labels"])
    return Message(result_record(run_client(base, data, task), partition_id(context)), reply_to=msg)
