"""The meta-output cache on single ops (lora_planner/profiling/metacache.py): what it remembers, what it runs."""
import torch

from lora_planner.profiling import metacache
from lora_planner.profiling.metacache import MetaCache


def _entries(op):
    return [v for k, v in metacache.OUTPUTS.items() if k[0] == id(op)]


def test_an_in_place_op_is_answered_with_its_first_argument_once_seen(monkeypatch):
    monkeypatch.setattr(metacache, "OUTPUTS", {})
    ran: list = []
    p = torch.empty(4, 8, device="meta")
    g = torch.empty(4, 8, device="meta")

    def run(func, args, kwargs):
        ran.append(func)
        return func(*args, **(kwargs or {}))
    op = torch.ops.aten.addcdiv_.default
    first = metacache.remembered(op, (p, g, g), {"value": 0.5}, run)
    second = metacache.remembered(op, (p, g, g), {"value": 0.5}, run)
    assert first is p and second is p
    assert ran == [op]  # the second call did not run
    assert _entries(op) == [metacache._SELF]
    # another layout is another key: it runs
    q = torch.empty(8, 4, device="meta")
    assert metacache.remembered(op, (q, q, q), {"value": 0.5}, run) is q
    assert ran == [op, op]


def test_ops_that_change_a_tensors_storage_or_view_always_run(monkeypatch):
    monkeypatch.setattr(metacache, "OUTPUTS", {})
    t = torch.empty(4, 8, device="meta")
    with MetaCache():
        t.resize_(64)
        t.resize_(64)
        t.unsqueeze_(0)
        src = torch.empty(2, 3, device="meta")
        t.set_(src)
    assert t.shape == (2, 3) and t.untyped_storage()._cdata == src.untyped_storage()._cdata
    for op in (torch.ops.aten.resize_.default, torch.ops.aten.unsqueeze_.default, torch.ops.aten.set_.source_Tensor):
        assert _entries(op) == []


def test_an_output_sharing_an_input_storage_is_remembered_as_must_run(monkeypatch):
    monkeypatch.setattr(metacache, "OUTPUTS", {})
    ran: list = []
    x = torch.empty(4, 8, device="meta")

    def run(func, args, kwargs):
        ran.append(func)
        return func(*args, **(kwargs or {}))
    op = torch.ops.aten._unsafe_view.default
    for _ in range(2):
        y = metacache.remembered(op, (x, [32]), {}, run)
        assert y.untyped_storage()._cdata == x.untyped_storage()._cdata  # still a view of x: it ran
    assert ran == [op, op]
    assert _entries(op) == [metacache._RUN]


def test_fresh_outputs_are_rebuilt_with_the_remembered_layout(monkeypatch):
    monkeypatch.setattr(metacache, "OUTPUTS", {})
    a = torch.empty(4, 8, device="meta", dtype=torch.bfloat16)
    b = torch.empty(8, 3, device="meta", dtype=torch.bfloat16)
    with MetaCache():
        one = a @ b
        two = a @ b
    assert one.shape == two.shape == (4, 3) and two.dtype == torch.bfloat16 and two.stride() == one.stride()
    assert one.untyped_storage()._cdata != two.untyped_storage()._cdata  # a new tensor each time
    assert len(metacache.OUTPUTS) == 1


def test_cpu_tensors_are_never_remembered(monkeypatch):
    monkeypatch.setattr(metacache, "OUTPUTS", {})
    a = torch.ones(3)
    with MetaCache():
        a.add_(1)
        b = a * 2
    assert metacache.OUTPUTS == {}
    assert torch.equal(b, torch.full((3,), 4.0))
