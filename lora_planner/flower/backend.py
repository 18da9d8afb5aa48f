"""The executor's ``flower`` backend: clients are Flower nodes; the round loop, evaluation, metrics,
checkpoints and ``--resume`` are the executor's own (``federated.loop``), run inside the ServerApp.

Node ids map to plan clients through each node's ``partition-id`` (the k-th client of the fleet
is partition k), learned in a first query round; the map is recorded in every checkpoint's ``server.json``. Flower's ``context.state`` does not survive a restart; our checkpoint does.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from ..errors import LoraPlannerError
from ..federated.backends import InProcessBackend, ScoreTask
from ..training.client import ClientResult, ClientTask
from .records import CLIENT_SETTINGS
from .strategy import PlanStrategy, node_error, query_partitions



class FlowerBackend:
    """Sends each round's tasks to their nodes through a Flower ``Grid``; evaluates on the server."""

    def __init__(self, settings, data, eval_data, eval_indices=None, faults=None, fleet_ids: Sequence[str] = (),
                 grid=None) -> None:
        if grid is None:
            raise LoraPlannerError("backend", "flower only inside a Flower ServerApp (it needs the Grid)", "flower",
                                   "Use `lora-planner train --backend flower --num-supernodes N`, or `flwr run`.")
        self.settings, self.grid, self.round_timeout = settings, grid, settings.round_timeout
        self.faults = dict(faults or {})
        self.local = InProcessBackend(settings, data, eval_data, eval_indices)  # server-side evaluation and final/
        self.strategy = PlanStrategy(None, settings)
        self.node_of = self.map_nodes(list(fleet_ids))
        self.strategy.node_of = self.node_of

    def map_nodes(self, fleet_ids: list[str]) -> dict[str, int]:
        partitions = query_partitions(self.grid, timeout=self.round_timeout)
        by_partition = {p: n for n, p in partitions.items()}
        missing = [cid for k, cid in enumerate(fleet_ids) if k not in by_partition]
        if missing:
            raise LoraPlannerError("flower nodes", f"one node per plan client (partition-id 0..{len(fleet_ids) - 1})",
                                   f"{len(partitions)} nodes answering, none for {missing[0]}",
                                   "Start a SuperNode per client with --node-config \"partition-id=K num-partitions=N\".")
        return {cid: by_partition[k] for k, cid in enumerate(fleet_ids)}

    def score(self, tasks: Sequence[ScoreTask]) -> list[Any]:
        import numpy as np

        settings = {k: getattr(self.settings, k) for k in CLIENT_SETTINGS}
        messages = []
        for t in tasks:
            body = {"indices": list(t.indices), "targets": list(t.targets), "probe_rank": t.probe_rank,
                    "batch_size": t.batch_size, "seq_len": t.seq_len, "settings": settings}
            messages.append(Message(RecordDict({"score": ConfigRecord({"json": json.dumps(body)})}),
                                    dst_node_id=self.node_of[t.client_id], message_type=MessageType.QUERY, group_id="score"))
        by_id = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.round_timeout):
            if reply.has_error():
                raise LoraPlannerError("local IG-Score", "computed by every node", node_error(reply), "Check the node's logs.")
            by_id[reply.metadata.reply_to_message_id] = np.asarray(reply.content["score"]["values"].numpy())
        return [by_id[m.metadata.message_id] for m in messages]

    def train(self, tasks: Sequence[ClientTask], tick=None) -> list[ClientResult]:
        tasks = [replace(t, fault=self.faults[(t.client_id, t.round)]) if (t.client_id, t.round) in self.faults else t
                 for t in tasks]
        self.strategy.pending = tasks
        messages = self.strategy.configure_train(tasks[0].round if tasks else 0, ArrayRecord(), ConfigRecord(), self.grid)
        replies = list(self.grid.send_and_receive(messages, timeout=self.round_timeout))
        results = self.strategy.results(messages, replies)
        if tick:
            for _ in results:
                tick()
        return results

    def evaluate(self, adapter_config, payload):
        return self.local.evaluate(adapter_config, payload)

    def save_adapter(self, adapter_config, payload, folder):
        self.local.save_adapter(adapter_config, payload, folder)

    def state(self) -> dict:
        """Recorded in every checkpoint; a resumed run learns the map again (node ids change when nodes restart)."""
        return {"backend": "flower", "node_of": dict(self.node_of)}

    def close(self) -> None:
        self.local.close()

