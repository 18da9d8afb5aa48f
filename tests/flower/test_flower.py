"""lora-planner on Flower 1.41: one record per node, the ClientApp's real training, interop with stock
FedAvg, and a Simulation Engine run (Ray) that matches the in-process backend."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import Context, Message, Metadata, RecordDict  # noqa: E402

from lora_planner.aggregation import get_aggregator  # noqa: E402
from lora_planner.aggregation.rules import ClientPayload  # noqa: E402
from lora_planner.federated import RunSettings, start  # noqa: E402
from lora_planner.training.client import ClientTask  # noqa: E402

BANKING = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"
LABELS = 6  # conftest.LABELS
pytestmark = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")


@pytest.fixture
def task_identity():
    """The identity Flower's runtime gives a ServerApp process before any Message is built."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def settings(tiny_bert_folder, banking_small, bert_profile, **kw) -> RunSettings:
    train, test = banking_small
    base = dict(model=str(tiny_bert_folder), task="seq-cls", num_labels=LABELS, data=str(train), eval_data=str(test),
                label_column="category", budgets=("64MiB",) * 3, profile=str(bert_profile), rounds=2, local_steps=3,
                batch_size=4, seq_len=16, lr=5e-3, partition="iid")
    base.update(kw)
    return RunSettings(**base)


def a_task(cid: str, cfg: dict, indices, rnd: int = 1) -> ClientTask:
    return ClientTask(cid, rnd, 7, cfg, ClientPayload.empty(), tuple(indices), 2, 4, 16, 5e-3, 2**30, 0)


def configs(bert_profile, ranks):
    from lora_planner.adapter_config import to_adapter_config
    from lora_planner.profile import load_profile

    prof = load_profile(bert_profile)
    return [to_adapter_config(prof, {(l, m): r for l in range(prof.num_layers) for m in prof.resolve_targets(None)})
            for r in ranks]


def reply_to(msg_id: str, node: int, content: RecordDict) -> Message:
    return Message(content=content, metadata=Metadata(run_id=1, message_id=f"r-{msg_id}", src_node_id=node, dst_node_id=1,
                                                      reply_to_message_id=msg_id, group_id="1", created_at=time.time(),
                                                      ttl=3600.0, message_type="train"))


def client_reply(task: ClientTask, s: RunSettings, partition: int) -> RecordDict:
    """What the real ClientApp answers to this task (its handler called directly, as the runtime would)."""
    from lora_planner.flower.client_app import train
    from lora_planner.flower.records import task_record

    msg = Message(content=task_record(task, s), metadata=Metadata(run_id=1, message_id=f"m-{task.client_id}", src_node_id=1,
                                                                  dst_node_id=100 + partition, reply_to_message_id="",
                                                                  group_id="1", created_at=time.time(), ttl=3600.0,
                                                                  message_type="train"))
    ctx = Context(run_id=1, node_id=100 + partition, node_config={"partition-id": partition, "num-partitions": 3},
                  state=RecordDict(), run_config={})
    return train(msg, ctx).content


def test_configure_train_gives_every_node_its_own_record(task_identity, tiny_bert_folder, banking_small, bert_profile):
    from lora_planner.flower.strategy import PlanStrategy

    s = settings(tiny_bert_folder, banking_small, bert_profile)
    cfgs = configs(bert_profile, (2, 4, 8))
    strategy = PlanStrategy(get_aggregator("hetlora"), s, node_of={"a": 11, "b": 12, "c": 13})
    strategy.pending = [a_task(cid, cfg, range(k, k + 8)) for k, (cid, cfg) in enumerate(zip("abc", cfgs))]
    messages = strategy.configure_train(1, None, None, None)
    assert isinstance(messages, list) and [m.metadata.dst_node_id for m in messages] == [11, 12, 13]
    assert len({id(m.content) for m in messages}) == 3, "never one shared record object"
    ranks = [json.loads(m.content["task"]["json"])["task"]["adapter_config"]["r"] for m in messages]
    assert ranks == [2, 4, 8]


def test_the_client_app_trains_its_task_with_the_executors_client_code(tiny_bert_folder, banking_small, bert_profile):
    from lora_planner.flower.records import read_result

    s = settings(tiny_bert_folder, banking_small, bert_profile)
    cfg = configs(bert_profile, (4,))[0]
    result = read_result(client_reply(a_task("c0", cfg, range(16)), s, partition=0))
    assert result.error is None and result.update is not None
    assert result.measured_peak_bytes > 0 and result.update.num_examples == 16
    assert {k.split(".lora_")[1] for k in result.update.state_dict if ".lora_" in k} == {"A.weight", "B.weight"}


def test_our_fedit_equals_stock_fedavg_on_the_same_replies(tiny_bert_folder, banking_small, bert_profile):
    """Interop: one identical full plan for every client, fedit, the same reply Messages: the same arrays."""
    import torch
    from flwr.serverapp.strategy import FedAvg

    from lora_planner.flower.strategy import PlanStrategy

    s = settings(tiny_bert_folder, banking_small, bert_profile)
    cfg = configs(bert_profile, (4,))[0]
    replies = [reply_to(f"m{k}", 100 + k, client_reply(replace(a_task(f"c{k}", cfg, range(8 * k, 8 * k + 8 + 4 * k)), seed=k), s, k))
               for k in range(3)]
    ours, _ = PlanStrategy(get_aggregator("fedit"), s).aggregate_train(1, replies)
    stock, _ = FedAvg().aggregate_train(1, replies)
    a, b = ours.to_torch_state_dict(), stock.to_torch_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_heterogeneous_replies_that_stock_fedavg_refuses_are_aggregated(tiny_bert_folder, banking_small, bert_profile):
    from flwr.serverapp.strategy import FedAvg

    from lora_planner.flower.strategy import PlanStrategy

    s = settings(tiny_bert_folder, banking_small, bert_profile)
    cfgs = configs(bert_profile, (2, 8))
    cfgs[1] = {**cfgs[1], "target_modules": cfgs[1]["target_modules"][-2:], "layers_to_transform": [2],
               "rank_pattern": dict(list(cfgs[1]["rank_pattern"].items())[-2:]),
               "alpha_pattern": dict(list(cfgs[1]["alpha_pattern"].items())[-2:])}
    replies = [reply_to(f"m{k}", 100 + k, client_reply(a_task(f"c{k}", cfg, range(8)), s, k)) for k, cfg in enumerate(cfgs)]
    from flwr.serverapp.exception import InconsistentMessageReplies

    with pytest.raises(InconsistentMessageReplies, match="same keys"):  # stock FedAvg's reply check
        FedAvg().aggregate_train(1, replies)
    arrays, metrics = PlanStrategy(get_aggregator("hetlora"), s).aggregate_train(1, replies)
    assert arrays is not None and metrics["num-examples"] == 16


def test_flower_simulation_gives_the_in_process_metrics_and_adapter(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    """The Simulation Engine on Ray with the same seed and settings: same metrics, same final adapter (float tolerance)."""
    import torch
    from safetensors.torch import load_file

    from lora_planner.flower.server_app import simulate

    fleet = tmp_path / "fleet.csv"
    fleet.write_text("id,memory,ranks\nc0,64MiB,2\nc1,64MiB,4\nc2,64MiB,8\n")
    s = settings(tiny_bert_folder, banking_small, bert_profile, method="flora", budgets=(), clients_file=str(fleet))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray actor with num_cpus=1: the same float summation order on both sides
    try:
        local = start(s, tmp_path / "inprocess")
    finally:
        torch.set_num_threads(threads)
    remote = simulate(replace(s, backend="flower"), tmp_path / "flower", num_supernodes=3)
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (local, remote)]
    for a, b in zip(*rows):
        assert a["eval"]["accuracy"] == b["eval"]["accuracy"]
        assert a["eval"]["loss"] == pytest.approx(b["eval"]["loss"], rel=1e-4)
        assert [(c["id"], c["dropped"], c["measured_peak_bytes"]) for c in a["clients"]] == \
               [(c["id"], c["dropped"], c["measured_peak_bytes"]) for c in b["clients"]]
    x, y = (load_file(str(d / "final" / "adapter_model.safetensors")) for d in (local, remote))
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-4, atol=1e-5)
    assert json.loads((remote / "run.json").read_text())["settings"]["backend"] == "flower"


def test_error_replies_and_missing_replies_drop_the_client_with_the_reason(task_identity, tiny_bert_folder, banking_small,
                                                                          bert_profile):
    from flwr.app import Error

    from lora_planner.flower.strategy import PlanStrategy

    s = settings(tiny_bert_folder, banking_small, bert_profile)
    cfgs = configs(bert_profile, (2, 4))
    strategy = PlanStrategy(get_aggregator("hetlora"), s, node_of={"a": 11, "b": 12})
    strategy.pending = [a_task(cid, cfg, range(8)) for cid, cfg in zip("ab", cfgs)]
    messages = strategy.configure_train(1, None, None, None)
    for k, m in enumerate(messages):
        m.metadata.__dict__["_message_id"] = f"m{k}"  # what the Grid assigns when it pushes them
    raised = Message(error=Error(code=2, reason="RuntimeError: injected fault: the ClientApp raised"),
                     metadata=Metadata(run_id=1, message_id="r0", src_node_id=11, dst_node_id=1, reply_to_message_id="m0",
                                       group_id="1", created_at=time.time(), ttl=3600.0, message_type="train"))
    a, b = strategy.results(messages, [raised])  # node 12 never answers (killed, or slower than the round timeout)
    assert a.update is None and a.error.startswith("Flower error code 2: RuntimeError: injected fault")
    assert b.update is None and b.error == "no reply within the round timeout"
