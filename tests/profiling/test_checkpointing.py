"""Gradient checkpointing as a profile condition: traced on meta tensors as the executor turns it on
(training.levers), a memory model per block phase (profiling/ckpt_fit.py), and exact plans for it."""

import pytest
import torch

from lora_planner import LoraPlannerError
from lora_planner.memory import predict_tensor_bytes
from lora_planner.profiling import fit, profile_model
from lora_planner.profiling.build import load_config
from lora_planner.profiling.trace import trace_assignment
from lora_planner.solvers import SOLVERS, build_problem
from lora_planner.training.levers import set_gradient_checkpointing

from brute_force import assert_exact_by_brute_force

TARGETS = ("self_attn.q_proj", "self_attn.v_proj")


@pytest.fixture(scope="module")
def ckpt_profile(tiny_llama_path):
    return profile_model(str(tiny_llama_path), batch_size=2, seq_len=32, dtype="fp32", validate=10, name="tiny-llama-ckpt",
                         gradient_checkpointing=True)


def test_the_profile_states_the_condition_and_validates_tightly(ckpt_profile):
    assert ckpt_profile.checkpointed and ckpt_profile.conditions["gradient_checkpointing"] is True
    v = ckpt_profile.validation
    assert v["max_abs_rel_error"] < 0.01 and v["worst_under_prediction"] < 0.005
    assert {"fwd@", "bwd@"} <= set(ckpt_profile.phases)


def test_a_traced_checkpointed_step_equals_real_cpu_execution(tiny_llama_path, ckpt_profile):
    config = load_config(str(tiny_llama_path))
    for a in fit.random_assignments(ckpt_profile.module_names, ckpt_profile.num_layers, 3, seed=5):
        traced = trace_assignment(config, "causal-lm", "fp32", ckpt_profile.layer_prefix, a, 2, 32, gradient_checkpointing=True)
        real = trace_assignment(config, "causal-lm", "fp32", ckpt_profile.layer_prefix, a, 2, 32, method="measured",
                                gradient_checkpointing=True)
        assert traced == real  # every phase, every block phase, to the byte
        assert "bwd@0" in real and "bwd@3" in real
        predicted = predict_tensor_bytes(ckpt_profile, a)
        assert -0.005 < (predicted - max(real.values())) / max(real.values()) < 0.01


def test_checkpointing_lowers_the_peak_of_a_dense_plan(tiny_llama_path, ckpt_profile):
    config = load_config(str(tiny_llama_path))
    dense = {(l, m): 16 for l in range(4) for m in ckpt_profile.module_names}
    on = max(trace_assignment(config, "causal-lm", "fp32", ckpt_profile.layer_prefix, dense, 2, 32, gradient_checkpointing=True).values())
    off = max(trace_assignment(config, "causal-lm", "fp32", ckpt_profile.layer_prefix, dense, 2, 32).values())
    assert on < off
    assert predict_tensor_bytes(ckpt_profile, dense) < off


def test_a_model_without_checkpointing_support_is_one_line():
    with pytest.raises(LoraPlannerError, match="gradient_checkpointing must be a model whose transformers class supports it"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2), True)


@pytest.mark.parametrize("name", [n for n, e in SOLVERS.items() if e.obj.exact and e.available()])
def test_exact_solvers_equal_brute_force_under_checkpointing(ckpt_profile, name):
    assert_exact_by_brute_force(build_problem(ckpt_profile, TARGETS, (2, 8), unit=256), ckpt_profile, name)
