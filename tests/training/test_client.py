"""A client on the shared base: training one leaves the base exactly as it was (the next client must not
start from the previous one's head), and the same task gives the same result on a used or a fresh base."""
from pathlib import Path

import pytest

BANKING = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"
pytestmark = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")


def test_a_trained_client_leaves_the_shared_base_untouched(tiny_bert_folder, banking_small, bert_profile):
    import torch

    from lora_planner.adapter_config import to_adapter_config
    from lora_planner.aggregation.rules import ClientPayload
    from lora_planner.data import load_records
    from lora_planner.profile import load_profile
    from lora_planner.training.client import ClientTask, SharedBase, run_client

    prof = load_profile(bert_profile)
    data = load_records(banking_small[0], "text", "category", 6)
    cfg = to_adapter_config(prof, {(l, m): 4 for l in range(prof.num_layers) for m in prof.resolve_targets(None)})
    task = ClientTask("c0", 1, 3, cfg, ClientPayload.empty(), tuple(range(24)), 3, 4, 16, 1e-2, 2**30, 0)
    base = SharedBase(str(tiny_bert_folder), "seq-cls", 6)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    first = run_client(base, data, task)
    after = base.model.state_dict()
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == [], "the head must not leak into the base"
    assert run_client(base, data, task).train_loss == first.train_loss
