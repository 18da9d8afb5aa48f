"""Gradient checkpointing from the command line, on the shipped Llama-2-7B profiles (planning path only)."""
import json

from lora_planner import shipped_profile
from lora_planner.cli.main import main
from lora_planner.memory import predict_tensor_bytes


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_auto_turns_checkpointing_on_only_where_it_fits_more_value(capsys):
    code, out, _ = run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "13GiB,14GiB,24GiB",
                       "--gradient-checkpointing", "auto", "--format", "json")
    assert code == 0
    clients = json.loads(out)["clients"]
    # 13 GiB: without checkpointing only the top blocks fit (backward stops at the lowest trained block),
    # with it every block does (one block's activations at a time): more value, so on; 24 GiB: a tie, so off
    assert [c["extras"]["gradient_checkpointing"] for c in clients] == [True, True, False]
    on = shipped_profile("llama-2-7b", gradient_checkpointing=True)
    for c in clients:
        a = {(e["layer"], e["module"]): e["rank"] for e in c["entries"]}
        prof = on if c["extras"]["gradient_checkpointing"] else shipped_profile("llama-2-7b")
        assert c["predicted_tensor_bytes"] == predict_tensor_bytes(prof, a) <= c["budget_bytes"]


def test_on_plans_from_the_checkpointed_profile_and_off_is_the_plain_one(capsys):
    plans = {}
    for lever in ("off", "on", None):
        argv = ["solve", "--model", "llama-2-7b", "--memory-budget", "13GiB", "--format", "json"]
        code, out, _ = run(capsys, *argv, *(["--gradient-checkpointing", lever] if lever else []))
        assert code == 0
        plans[lever] = json.loads(out)
    assert plans[None] == {**plans["off"], "seconds": plans[None]["seconds"]}  # no flag: today's plan
    off, on = plans["off"]["clients"][0], plans["on"]["clients"][0]
    assert plans["on"]["gradient_checkpointing"] is True and on["extras"]["gradient_checkpointing"] is True
    assert len({e["layer"] for e in on["entries"]}) == 32 > len({e["layer"] for e in off["entries"]})
    assert on["objective"] > off["objective"]


def test_the_lever_must_match_a_given_profile_and_auto_needs_shipped_ones(capsys, tmp_path):
    path = tmp_path / "p.json"
    shipped_profile("gpt2").save(path)
    code, _, err = run(capsys, "solve", "--profile", str(path), "--memory-budget", "4GiB", "--gradient-checkpointing", "on")
    assert code == 2 and "--gradient-checkpointing must be the condition" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "solve", "--profile", str(path), "--memory-budget", "4GiB", "--gradient-checkpointing", "auto")
    assert code == 2 and "used with --model" in err


def test_profile_list_shows_the_condition_sets(capsys):
    code, out, _ = run(capsys, "profile", "--list")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("llama-2-7b "))
    assert "plain" in line and "gradient-checkpointing" in line
    assert "config only" in next(l for l in out.splitlines() if l.startswith("llama-2-70b"))


def test_estimate_reads_the_condition_from_the_profile(capsys, tmp_path):
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}))
    code, out, _ = run(capsys, "estimate", "--model", "llama-2-7b", "--gradient-checkpointing", "on", "--lora-config", str(cfg),
                       "--json")
    on = json.loads(out)
    code2, out2, _ = run(capsys, "estimate", "--model", "llama-2-7b", "--lora-config", str(cfg), "--json")
    off = json.loads(out2)
    assert code == code2 == 0 and on["gradient_checkpointing"] is True and off["gradient_checkpointing"] is False
    assert on["predicted_bytes"] < off["predicted_bytes"]


def test_the_time_model_charges_checkpointing_a_full_backward_and_one_more_forward_of_the_blocks():
    from lora_planner.timing import backward_flops_per_token, block_params

    plain, on = shipped_profile("llama-2-7b"), shipped_profile("llama-2-7b", gradient_checkpointing=True)
    L = plain.num_layers
    assert backward_flops_per_token(plain, 2) < backward_flops_per_token(plain, L)
    for depth in (1, 2, L):  # the backward reaches every block whatever the depth; the recompute is one forward of them
        assert backward_flops_per_token(on, depth) == backward_flops_per_token(plain, L) + 2.0 * L * block_params(plain)


# ---- quantised bases (the shipped nf4 / int8 profiles) --------------------------------------------------

def test_solve_plans_llama_2_7b_on_an_nf4_base_where_the_plain_one_cannot(capsys):
    code, _, err = run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "8GiB,12GiB")
    assert code == 2 and "at least" in err  # bf16: 12.81 GiB is the least a step needs (bench/llama7b_levers.py)
    code, out, _ = run(capsys, "solve", "--model", "llama-2-7b", "--quantization", "nf4", "--memory-budget", "8GiB,12GiB",
                       "--format", "json")
    assert code == 0
    plan = json.loads(out)
    assert plan["quantization"] == "nf4" and all(c["status"] == "planned" for c in plan["clients"])
    nf4 = shipped_profile("llama-2-7b", quantization="nf4")
    for c in plan["clients"]:
        assert c["extras"]["quantization"] == "nf4"
        a = {(e["layer"], e["module"]): e["rank"] for e in c["entries"]}
        assert c["predicted_tensor_bytes"] == predict_tensor_bytes(nf4, a) <= c["budget_bytes"]
    small, big = plan["clients"]
    assert small["objective"] < big["objective"]


def test_quantization_and_checkpointing_auto_combine(capsys):
    code, out, _ = run(capsys, "solve", "--model", "llama-2-7b", "--quantization", "nf4", "--gradient-checkpointing", "auto",
                       "--memory-budget", "6GiB,24GiB", "--format", "json")
    assert code == 0
    clients = json.loads(out)["clients"]
    assert clients[0]["status"] == "planned" and clients[0]["extras"]["gradient_checkpointing"] is True
    assert clients[1]["extras"]["gradient_checkpointing"] is False  # room for every layer without it: a tie keeps it off
    assert all(c["extras"]["quantization"] == "nf4" for c in clients)


def test_the_quantization_flag_must_match_a_given_profile(capsys, tmp_path):
    path = tmp_path / "p.json"
    shipped_profile("llama-2-7b").save(path)
    code, _, err = run(capsys, "solve", "--profile", str(path), "--memory-budget", "40GiB", "--quantization", "nf4")
    assert code == 2 and "--quantization" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "solve", "--model", "gpt2", "--memory-budget", "4GiB", "--quantization", "int8")
    assert code == 2 and "--quantization" in err and "lora-planner profile gpt2 --quantization int8" in err


def test_estimate_reads_the_quantisation_from_the_profile(capsys, tmp_path):
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"}))
    code, out, _ = run(capsys, "estimate", "--model", "llama-2-7b", "--quantization", "int8", "--lora-config", str(cfg), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["quantization"] == "int8"
    int8 = shipped_profile("llama-2-7b", quantization="int8")
    assert result["predicted_tensor_bytes"] < predict_tensor_bytes(shipped_profile("llama-2-7b"),
                                                                    {(l, m): 8 for l in range(32) for m in ("self_attn.q_proj", "self_attn.v_proj")})
    assert int8.quantization == "int8"


def test_profile_list_shows_the_quantised_sets(capsys):
    code, out, _ = run(capsys, "profile", "--list")
    assert code == 0
    for name in ("llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "tinyllama-1.1b"):
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        for cond in ("nf4", "int8", "nf4+gradient-checkpointing", "int8+gradient-checkpointing"):
            assert cond in line, (name, cond)
    assert "nf4" not in next(l for l in out.splitlines() if l.startswith("gpt2 "))
