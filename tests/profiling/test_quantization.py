"""A quantised base (bitsandbytes nf4 / int8, prepared the QLoRA way) as a profile condition: traced on a
meta-quantised twin, equal to real bitsandbytes execution on CPU, quant state counted, and planned from."""
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("bitsandbytes")

from lora_planner.profiling import fit, profile_model  # noqa: E402
from lora_planner.profiling.build import build_quantized, load_config  # noqa: E402
from lora_planner.profiling.trace import trace_assignment  # noqa: E402
from lora_planner.profiling.tracker import LiveBytes  # noqa: E402
from lora_planner.training.levers import apply_levers, quant_state_tensors, quantization_of  # noqa: E402

PREFIX = "model.layers"


@pytest.fixture(scope="module")
def nf4_profile(tiny_llama_path):
    return profile_model(str(tiny_llama_path), batch_size=2, seq_len=32, dtype="bf16", validate=10, name="tiny-llama-nf4",
                         quantization="nf4")


@pytest.mark.parametrize("quantization,ckpt", [("nf4", False), ("int8", False), ("nf4", True), ("int8", True)])
def test_a_traced_quantised_step_equals_real_bitsandbytes_execution_on_cpu(tiny_llama_path, quantization, ckpt):
    config = load_config(str(tiny_llama_path))
    names = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj", "mlp.gate_proj"]
    for a in fit.random_assignments(names, config.num_hidden_layers, 2, seed=3):
        kw = dict(gradient_checkpointing=ckpt, quantization=quantization)
        traced = trace_assignment(config, "causal-lm", "bf16", PREFIX, a, 2, 32, **kw)
        real = trace_assignment(config, "causal-lm", "bf16", PREFIX, a, 2, 32, method="measured", **kw)
        assert traced == real  # every phase (and block phase under checkpointing), to the byte


@pytest.mark.parametrize("method", ["traced", "measured"])
def test_one_prepared_step_on_a_4bit_base_with_biases_is_the_second_of_two_steps(tiny_gpt2_path, method):
    """bitsandbytes casts a 4-bit layer's bias to its input's dtype on its first forward, for good. With checkpointing
    each block's forward phase held the uncast biases of the blocks not yet run (2 bytes an entry over on GPT-2 and
    Qwen2) until the base was settled by one forward before the step (``trace._settle``)."""
    config = load_config(str(tiny_gpt2_path))
    a = {(0, "attn.c_attn"): 8, (1, "mlp.c_fc"): 4, (2, "attn.c_proj"): 8}
    one, two = (trace_assignment(config, "causal-lm", "bf16", "transformer.h", a, 2, 32, method=method, steps=steps,
                                 gradient_checkpointing=True, quantization="nf4") for steps in (1, 2))
    assert one == two


def test_the_real_load_is_quantised_and_prepared_the_qlora_way(tiny_llama_path):
    import bitsandbytes as bnb

    config = load_config(str(tiny_llama_path))
    model = apply_levers(build_quantized(config, "causal-lm", "bf16", "nf4", meta=False), quantization="nf4")
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.dtype == torch.uint8 and q.weight.quant_state.nested
    assert model.model.norm.weight.dtype == torch.float32, "prepare_model_for_kbit_training keeps norms in fp32"
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit), "transformers leaves the output head unquantised"
    assert quantization_of(model) == "nf4"
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_the_live_set_counts_quant_state_that_is_neither_parameter_nor_buffer(tiny_llama_path, quantization):
    config = load_config(str(tiny_llama_path))
    model = apply_levers(build_quantized(config, "causal-lm", "bf16", quantization, meta=False), quantization=quantization)
    extra = quant_state_tensors(model)
    owned = {id(t.untyped_storage()) for t in list(model.parameters()) + list(model.buffers())}
    hidden = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in extra if id(t.untyped_storage()) not in owned}
    assert hidden, "absmax / SCB are not parameters or buffers"
    tracker = LiveBytes()
    tracker.track_all(model.parameters())
    tracker.track_all(model.buffers())
    before = tracker.live
    tracker.track_all(extra)
    assert tracker.live - before == sum(hidden.values())


def test_the_dequantised_weight_inside_gemm_4bit_is_counted_while_it_lives():
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(256, 512, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").to("cpu")  # quantises
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    tracker = LiveBytes()
    tracker.track_all([x])
    with torch.no_grad(), tracker:
        tracker.set_phase("fwd")
        out = layer(x)
    dequantised = 512 * 256 * 2  # the bf16 weight bitsandbytes' CPU gemm_4bit builds, then drops
    assert tracker.peaks["fwd"] >= x.nbytes + out.nbytes + dequantised


def test_a_quantised_profile_states_its_condition_and_validates_tightly(nf4_profile):
    c = nf4_profile.conditions
    assert c["quantization"] == "nf4" and nf4_profile.quantization == "nf4" and nf4_profile.condition_set == "nf4"
    assert "prepare_model_for_kbit_training" in c["step"] and "bitsandbytes" in c["versions"]
    v = nf4_profile.validation
    # the goals (median 1 %, max 3 %, under-prediction 0.5 %); on this tiny model the 4-bit backward's
    # dequantised weights (one at a time, summed by the separable model) over-predict by up to 1.6 %
    assert v["median_abs_rel_error"] < 0.01 and v["max_abs_rel_error"] < 0.03 and v["worst_under_prediction"] < 0.005
    assert v["shape_holdout"]["max_abs_rel_error"] < 0.03


def test_the_quantised_base_needs_less_than_the_plain_one(nf4_profile, tiny_llama_path):
    from lora_planner.memory import predict_tensor_bytes, rule_of_thumb_bytes

    plain = profile_model(str(tiny_llama_path), batch_size=2, seq_len=32, dtype="bf16", validate=2, name="tiny-llama-bf16")
    a = {(2, "self_attn.q_proj"): 8}
    # this tiny model is mostly embeddings, which QLoRA's preparation casts to fp32: its quantised step needs MORE
    assert predict_tensor_bytes(nf4_profile, a) != predict_tensor_bytes(plain, a)
    assert rule_of_thumb_bytes(nf4_profile, a) < rule_of_thumb_bytes(plain, a), "calculators charge nf4 half a byte"


def test_quantization_without_bitsandbytes_is_one_line_and_exit_2(tiny_llama_path, tmp_path):
    code = ("import sys; sys.modules['bitsandbytes'] = None; from lora_planner.cli.main import main; "
            f"sys.exit(main(['profile', {str(tiny_llama_path)!r}, '--quantization', 'nf4', '-o', {str(tmp_path / 'p.json')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bitsandbytes" in lines[0] and "pip install" in lines[0], out.stderr
    assert not (tmp_path / "p.json").exists()


def test_the_fake_method_is_refused_on_a_quantised_base(tiny_llama_path):
    from lora_planner import LoraPlannerError

    config = load_config(str(tiny_llama_path))
    with pytest.raises(LoraPlannerError, match="method"):
        trace_assignment(config, "causal-lm", "bf16", PREFIX, {(0, "self_attn.q_proj"): 4}, 1, 8, method="fake",
                         quantization="nf4")


def test_a_quantised_profile_round_trips_its_condition(nf4_profile, tmp_path):
    from lora_planner.profile import load_profile

    nf4_profile.save(tmp_path / "p.json")
    back = load_profile(tmp_path / "p.json")
    assert back.quantization == "nf4" and json.loads((tmp_path / "p.json").read_text())["conditions"]["quantization"] == "nf4"


NEOX = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 256,
        "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 300, "max_position_embeddings": 128,
        "use_parallel_residual": True, "rotary_pct": 0.25, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def neox_nf4_gc(tmp_path_factory):
    path = tmp_path_factory.mktemp("neox-nf4") / "config.json"
    path.write_text(json.dumps(NEOX))
    return str(path), profile_model(str(path), batch_size=2, seq_len=32, dtype="fp32", validate=4, name="neox-nf4-gc",
                                    workers=1, gradient_checkpointing=True, quantization="nf4")


def test_modules_of_a_checkpointed_block_that_do_not_add_up_get_a_pair_term(neox_nf4_gc):
    """GPT-NeoX on nf4 with checkpointing: the two MLP layers' backward peaks fall at different moments, so their
    single-module terms summed over-predict the block (5 % on bench/profile_accuracy.py's NeoX-style model). The
    all-modules check trace finds it, the pairs are traced, and the pair term brings the error back."""
    import dataclasses

    from lora_planner.memory import predict_tensor_bytes

    src, prof = neox_nf4_gc
    assert prof.conditions["pair_check"] > 0.01  # the sum of singles missed the all-modules trace
    key = "mlp.dense_h_to_4h+mlp.dense_4h_to_h"
    assert key in prof.phases["bwd@"].pair
    no_pairs = dataclasses.replace(prof, phases={k: dataclasses.replace(v, pair={}) for k, v in prof.phases.items()})
    config = load_config(src)
    both = {(l, m): 8 for l in (1, 2) for m in ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h", "attention.dense")}
    real = max(trace_assignment(config, "causal-lm", "fp32", prof.layer_prefix, both, 2, 32, gradient_checkpointing=True,
                                quantization="nf4").values())
    with_pair, without = ((predict_tensor_bytes(p, both) - real) / real for p in (prof, no_pairs))
    assert -0.005 <= with_pair < 0.01 and without > 0.02


@pytest.mark.parametrize("name", ["cpsat", "milp"])
def test_exact_solvers_stay_exact_with_pair_terms(neox_nf4_gc, name):
    """Brute force over every plan of the two MLP layers in 4 blocks (3^8) at five budgets, on the problem's own
    integer costs (which include the pair term: ``solvers/ckpt.py``)."""
    from brute_force import assert_exact_by_brute_force
    from lora_planner.solvers import build_problem

    _, prof = neox_nf4_gc
    problem = build_problem(prof, ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), (2, 8), unit=256)
    assert problem.ckpt.pairs == ((0, 1),) and problem.ckpt.pair.min() < 0
    assert_exact_by_brute_force(problem, prof, name)
