"""A Flower strategy that sends every node its own plan and aggregates heterogeneous LoRA with our rules.

Stock ``FedAvg`` sends one payload to all nodes and its reply check rejects replies whose array
keys differ (mixed layer sets and ranks). ``PlanStrategy.configure_train`` builds one ``Message``
per node, each with its own ``RecordDict`` (``records.task_record``), from the round's
``ClientTask``s; ``aggregate_train`` turns the replies into ``ClientUpdate``s and calls our
aggregator. The executor's loop (``federated.loop``) drives it through ``FlowerBackend``; a user
may also call ``Strategy.start`` with it (``tasks_fn`` then gives each round's tasks).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..aggregation.rules import AggregationRule, GlobalAdapter
from ..training.client import ClientResult, ClientTask
from .records import read_result, task_record


def node_error(reply) -> str:
    return f"Flower error code {reply.error.code}: {' '.join(str(reply.error.reason).split())[:300]}"


class PlanStrategy(Strategy):
    """One message per node with its own plan and slice; our rules aggregate the replies.

    Args:
        aggregator: any registered rule (``aggregation.get_aggregator``).
        settings: the run's ``RunSettings`` (its client-side part travels with every task).
        node_of: plan client id -> Flower node id (learned by ``FlowerBackend.map_nodes``).
        tasks_fn: for ``Strategy.start``: the round -> its ClientTasks.
    """

    def __init__(self, aggregator: AggregationRule, settings, node_of: dict[str, int] | None = None,
                 tasks_fn: Callable[[int], Sequence[ClientTask]] | None = None) -> None:
        self.aggregator, self.settings = aggregator, settings
        self.node_of = dict(node_of or {})
        self.tasks_fn = tasks_fn
        self.pending: list[ClientTask] = []
        self.sent: dict[str, str] = {}  # message id -> client id
        self.result: GlobalAdapter | None = None

    def summary(self) -> None:
        log(INFO, "\t├── PlanStrategy: one plan per node, aggregation '%s'", self.aggregator.name)
        log(INFO, "\t└── nodes: %s", self.node_of)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """A list (deployment iterates it twice) of one Message per task, each with a new RecordDict."""
        tasks = list(self.tasks_fn(server_round)) if self.tasks_fn else self.pending
        messages = []
        for t in tasks:
            messages.append(Message(task_record(t, self.settings), dst_node_id=self.node_of[t.client_id],
                                    message_type=MessageType.TRAIN, group_id=str(server_round)))
        self.pending = tasks
        return messages

    def results(self, messages: Sequence[Message], replies: Iterable[Message]) -> list[ClientResult]:
        """One ClientResult per task, in task order: a reply, Flower's error, or 'no reply' (timeout, dead node)."""
        by_id = {m.metadata.message_id: t for m, t in zip(messages, self.pending)}
        got: dict[str, ClientResult] = {}
        for reply in replies:
            task = by_id.get(reply.metadata.reply_to_message_id)
            if task is None:
                continue
            if reply.has_error():
                got[task.client_id] = ClientResult(task.client_id, None, error=node_error(reply))
            else:
                got[task.client_id] = read_result(reply.content)
        return [got.get(t.client_id) or ClientResult(t.client_id, None, error="no reply within the round timeout")
                for t in self.pending]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """For ``Strategy.start``: replies -> ClientUpdates -> our rule; the global adapter as one ArrayRecord."""
        from ..aggregation import UpdateRejected, check_update
        from .records import to_arrays

        updates = []
        for reply in replies:
            if reply.has_error():
                log(INFO, "\t> node %s: %s", reply.metadata.src_node_id, node_error(reply))
                continue
            r = read_result(reply.content)
            try:
                check_update(r.update)
            except (UpdateRejected, TypeError) as exc:
                log(INFO, "\t> %s dropped: %s", r.client_id, exc)
                continue
            updates.append(r.update)
        if not updates:
            return None, None
        self.result = self.aggregator.aggregate(updates)
        cfg = updates[0].lora_config
        payload = self.aggregator.for_client(self.result, cfg, 0)
        n = sum(u.num_examples for u in updates)
        loss = sum(u.metrics.get("train_loss", 0.0) * u.num_examples for u in updates) / n
        return to_arrays(payload.adapter), MetricRecord({"num-examples": n, "train-loss": loss})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []  # the server evaluates the global adapter itself (the executor's evaluation)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def query_partitions(grid: Grid, timeout: float) -> dict[int, int]:
    """Node id -> its ``partition-id`` (node_config), from a first query round."""
    nodes = list(grid.get_node_ids())
    messages = [Message(RecordDict({"ask": ConfigRecord({"what": "partition-id"})}), dst_node_id=n,
                        message_type=MessageType.QUERY, group_id="0") for n in nodes]
    out = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if not reply.has_error():
            out[reply.metadata.src_node_id] = int(reply.content["partition"]["partition-id"])
    return out
