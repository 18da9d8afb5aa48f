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
