"""Profiling a tiny Llama: the separable model predicts full traces it was not fitted on."""

from lora_planner import predict_tensor_bytes
from lora_planner.profiling import fit
from lora_planner.profiling.build import load_config
from lora_planner.profiling.trace import trace_assignment


def test_validation_errors_are_small_and_never_badly_under(tiny_llama_profile):
    v = tiny_llama_profile.validation
    assert v["n"] == 10
    assert v["median_abs_rel_error"] < 0.02
    assert v["worst_under_prediction"] < 0.01
    assert v["shape_holdout"]["max_abs_rel_error"] < 0.05


def test_prediction_matches_real_cpu_execution_on_fresh_assignments(tiny_llama_profile, tiny_llama_path):
    config = load_config(str(tiny_llama_path))
    p = tiny_llama_profile
    for a in fit.random_assignments(p.module_names, p.num_layers, 4, seed=123):
        real = max(trace_assignment(config, "causal-lm", "bf16", p.layer_prefix, a, 2, 32, method="measured").values())
        predicted = predict_tensor_bytes(p, a)
        assert -0.01 < (predicted - real) / real < 0.06


def test_other_shapes_are_predicted_by_the_scaling_law(tiny_llama_profile, tiny_llama_path):
    config = load_config(str(tiny_llama_path))
    p = tiny_llama_profile
    a = {(1, "self_attn.q_proj"): 8, (2, "mlp.up_proj"): 4}
    for batch, seq in [(1, 48), (3, 20)]:
        real = max(trace_assignment(config, "causal-lm", "bf16", p.layer_prefix, a, batch, seq).values())
        assert abs(predict_tensor_bytes(p, a, batch, seq) - real) / real < 0.02


def test_seq_cls_encoder_profiles_too(tiny_bert_path):
    from lora_planner.profiling import profile_model

    p = profile_model(str(tiny_bert_path), batch_size=2, seq_len=16, task="seq-cls", num_labels=5, validate=3)
    assert p.task == "seq-cls" and p.layer_prefix.endswith("layer")
    assert {"attention.self.query", "attention.self.value"} <= set(p.module_names)
    assert p.default_targets == ("attention.self.query", "attention.self.value")
    assert p.validation["max_abs_rel_error"] < 0.05
