"""Tracing: one step with pre-created AdamW state is the steady state; meta traces match fake and real runs."""
import pytest

from lora_planner.profiling.build import discover, load_config
from lora_planner.profiling.config import num_layers
from lora_planner.profiling.trace import trace_assignment

ASSIGNMENTS = [
    {(3, "self_attn.v_proj"): 8},
    {(1, "self_attn.q_proj"): 4, (1, "self_attn.v_proj"): 16, (3, "mlp.down_proj"): 2},
    {(0, "mlp.gate_proj"): 8, (2, "self_attn.o_proj"): 32},
]


@pytest.fixture(scope="module")
def llama(tiny_llama_path):
    config = load_config(str(tiny_llama_path))
    return config, discover(config, "causal-lm", "bf16")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_one_prepared_step_equals_the_second_of_two_steps(llama, assignment):
    config, d = llama
    one = trace_assignment(config, "causal-lm", "bf16", d.prefix, assignment, 2, 32, steps=1)
    two = trace_assignment(config, "causal-lm", "bf16", d.prefix, assignment, 2, 32, steps=2)
    assert one == two


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_traces_match_real_cpu_execution(llama, assignment):
    config, d = llama
    traced = trace_assignment(config, "causal-lm", "bf16", d.prefix, assignment, 2, 32, method="traced")
    fake = trace_assignment(config, "causal-lm", "bf16", d.prefix, assignment, 2, 32, method="fake")
    real = trace_assignment(config, "causal-lm", "bf16", d.prefix, assignment, 2, 32, method="measured")
    # Same tracker, same step: meta, fake and real must agree to the byte (the packed-sequence check
    # that made transformers build an extra causal mask without real data is answered as a real run does).
    assert traced == fake == real


def test_remembered_meta_outputs_change_no_trace(llama, monkeypatch):
    """The meta-output cache (metacache.OUTPUTS) answers most ops of a second trace, in-place ones included;
    with it emptied before every op (nothing remembered) the per-phase peaks are the same to the byte: plain,
    with checkpointing, and on an nf4 base (whose meta quantisation runs under the cache too)."""
    pytest.importorskip("bitsandbytes")
    from lora_planner.profiling import metacache

    config, d = llama
    a = ASSIGNMENTS[1]
    for ckpt, quant in ((False, None), (True, None), (False, "nf4")):
        run = lambda: trace_assignment(config, "causal-lm", "bf16", d.prefix, a, 2, 32,  # noqa: E731
                                       gradient_checkpointing=ckpt, quantization=quant)
        run()  # fills it
        assert len(metacache.OUTPUTS) > 20
        hits: list[bool] = []
        monkeypatch.setattr(metacache, "OUTPUTS", _Counting(metacache.OUTPUTS, hits))
        warm = run()
        assert sum(h is not None for h in hits) > 100  # most ops came from the cache
        assert any(h is metacache._SELF for h in hits)  # in-place ops too (AdamW's)
        monkeypatch.setattr(metacache, "OUTPUTS", _Forgetful())
        cold = run()
        monkeypatch.undo()
        assert warm == cold


class _Counting(dict):
    def __init__(self, base, hits):
        super().__init__(base)
        self.hits = hits

    def get(self, key, default=None):
        out = super().get(key, default)
        self.hits.append(out)
        return out


class _Forgetful(dict):
    def get(self, key, default=None):
        return default


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_meta_trace_matches_real_execution_with_layer_norm_and_fused_attention(tmp_path, arch):
    """BERT and GPT-2 use layer norm (saved statistics in bf16 on CPU, fp32 on meta) and SDPA."""
    import json

    cfgs = {"bert": {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300, "max_position_embeddings": 128},
            "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                     "vocab_size": 300, "n_positions": 128}}
    (tmp_path / "config.json").write_text(json.dumps(cfgs[arch]))
    config = load_config(str(tmp_path / "config.json"))
    task = "seq-cls" if arch == "bert" else "causal-lm"
    d = discover(config, task, "bf16")
    a = {(1, d.modules[0].name): 4, (0, d.modules[-1].name): 8}
    traced = trace_assignment(config, task, "bf16", d.prefix, a, 2, 48, method="traced")
    assert traced == trace_assignment(config, task, "bf16", d.prefix, a, 2, 48, method="measured")


def test_meta_trace_matches_fake_tensors_on_every_shipped_architecture():
    """Two real-width blocks of each shipped config: the meta trace equals the fake-tensor trace to the byte."""
    from lora_planner.profile import shipped_models, shipped_profile
    from lora_planner.profiling.build import truncated
    from lora_planner.profiling.fit import random_assignments

    for name in shipped_models():
        prof = shipped_profile(name)
        config = truncated(load_config(name), 2)
        if prof.task == "seq-cls":
            config.num_labels = 3
        a = random_assignments(prof.module_names, 2, 1, seed=5)[0]
        meta = trace_assignment(config, prof.task, "bf16", prof.layer_prefix, a, 2, 64, method="traced")
        assert meta == trace_assignment(config, prof.task, "bf16", prof.layer_prefix, a, 2, 64, method="fake"), name


def test_a_reused_base_traces_as_a_freshly_built_one(tiny_llama_path, tiny_bert_path, tiny_gpt2_path):
    """trace.py keeps a process's built meta bases and hands each trace the last one back (PEFT's ``unload()``):
    a run of traces on one reused base equals, to the byte, the same traces each on a base built for it. Llama,
    BERT (a classifier head that PEFT trains a copy of) and GPT-2 (Conv1D, biases); plain, checkpointed and, with
    bitsandbytes, on nf4 / int8 bases."""
    import importlib.util

    from lora_planner.profiling import trace
    from lora_planner.profiling.fit import random_assignments

    levers = [(False, None), (True, None)]
    if importlib.util.find_spec("bitsandbytes"):
        levers += [(False, "nf4"), (True, "nf4"), (True, "int8")]
    for path, task in ((tiny_llama_path, "causal-lm"), (tiny_bert_path, "seq-cls"), (tiny_gpt2_path, "causal-lm")):
        config = load_config(str(path))
        d = discover(config, task, "bf16")
        for ckpt, quant in levers if task == "causal-lm" else levers[:2]:
            assignments = random_assignments([m.name for m in d.modules], num_layers(config), 3, seed=7)
            run = lambda a: trace_assignment(config, task, "bf16", d.prefix, a, 2, 32,  # noqa: E731
                                             gradient_checkpointing=ckpt, quantization=quant)
            trace._BASES.clear()
            reused, bases = [], set()
            for a in assignments:
                reused.append(run(a))
                bases |= {id(b) for b in trace._BASES.values()}
            assert len(bases) == 1, ("one base, built once and reused", path, ckpt, quant)
            fresh = []
            for a in assignments:
                trace._BASES.clear()
                fresh.append(run(a))
            assert reused == fresh, (path, ckpt, quant)


def test_discovery_finds_blocks_modules_and_shared_inputs(llama):
    _, d = llama
    names = [m.name for m in d.modules]
    assert d.prefix == "model.layers"
    assert names == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    groups = {m.name: m.group for m in d.modules}
    assert groups["self_attn.q_proj"] == groups["self_attn.k_proj"] == groups["self_attn.v_proj"]
    assert groups["mlp.gate_proj"] == groups["mlp.up_proj"] != groups["mlp.down_proj"]


def test_cuda_method_refuses_cleanly_without_a_gpu(llama):
    import torch

    from lora_planner import LoraPlannerError

    config, d = llama
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the cuda path runs instead")
    with pytest.raises(LoraPlannerError, match="^method must"):
        trace_assignment(config, "causal-lm", "bf16", d.prefix, ASSIGNMENTS[0], 1, 8, method="cuda")
