"""The CLI end to end: one-line errors with exit code 2, nothing written on failure, PEFT-loadable output."""
import json
import subprocess
import sys

import pytest

from lora_planner.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_solve_prints_a_table_for_a_mixed_fleet(capsys):
    code, out, _ = run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "14GiB,24GiB", "--memory-budget", "16GiB:2")
    assert code == 0
    assert out.count("client-") == 4 and "predicted" in out


def test_solve_json_has_the_promised_fields(capsys):
    code, out, _ = run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "16GiB", "--format", "json")
    c = json.loads(out)["clients"][0]
    assert {"id", "budget_bytes", "predicted_bytes", "predicted_tensor_bytes", "reserve_bytes", "objective", "entries"} <= set(c)
    assert c["predicted_bytes"] <= c["budget_bytes"]
    assert {"layer", "module", "rank", "alpha"} == set(c["entries"][0])


def test_solve_writes_configs_that_peft_builds_exactly(capsys, tmp_path, tiny_llama_profile, tiny_llama_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    prof = tmp_path / "tiny.json"
    tiny_llama_profile.save(prof)
    out = tmp_path / "plans"
    code, _, _ = run(capsys, "solve", "--profile", str(prof), "--memory-budget", "3MiB,8MiB", "--ranks", "2,4,8", "-o", str(out))
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    body = json.loads(tiny_llama_path.read_text())
    for client in plan["clients"]:
        cfg = LoraConfig.from_pretrained(str(out / client["id"]))
        assert cfg.layers_to_transform
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**body}))
        model = get_peft_model(model, cfg)
        built = {(int(n.split(".")[2]), ".".join(n.split(".")[3:])): m.lora_A["default"].out_features
                 for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
        assert built == {(e["layer"], e["module"]): e["rank"] for e in client["entries"]}


def test_plot_draws_a_png(capsys, tmp_path):
    out = tmp_path / "plans"
    assert run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "14GiB,24GiB", "-o", str(out))[0] == 0
    code, _, _ = run(capsys, "plot", str(out / "plan.json"), "-o", str(tmp_path / "plan.png"))
    assert code == 0 and (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_below_fixed_cost_fails_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "plans"
    code, _, err = run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "6GiB,24GiB", "-o", str(out))
    assert_one_line_error(code, err, "client-0", "at least", "6.00 GiB", "--drop-infeasible")
    assert not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["--memory-budget", "16 parsecs"], ["--memory-budget", "16 parsecs"]),
    (["--memory-budget", "16GiB", "--solver", "knapsak"], ["--solver", "knapsack"]),
    (["--memory-budget", "16GiB", "--ranks", "0,4"], ["--ranks"]),
    (["--memory-budget", "16GiB:0"], ["--memory-budget"]),
    (["--memory-budget", "16GiB", "--target-modules", "q_prj"], ["target module", "q_proj"]),
    (["--memory-budget", "16GiB", "--seq-len", "9000"], ["--seq-len", "4096"]),
])
def test_bad_solve_input_is_one_line(capsys, args, needles):
    code, _, err = run(capsys, "solve", "--model", "llama-2-7b", *args)
    assert_one_line_error(code, err, *needles)


def test_unknown_model_lists_the_nearest(capsys):
    code, _, err = run(capsys, "solve", "--model", "llama2-7b", "--memory-budget", "16GiB")
    assert_one_line_error(code, err, "llama-2-7b")


@pytest.mark.parametrize("csv,needles", [
    ("id,memory\na,16GiB\na,24GiB\n", ["id", "unique", "a"]),
    ("id,memory\n", ["empty"]),
    ("id,memory,colour\na,16GiB,red\n", ["colour"]),
    ("id\na\n", ["memory", "missing"]),
    ("id,memory,throughput\na,16GiB,-3\n", ["throughput"]),
])
def test_bad_fleet_files_are_one_line(capsys, tmp_path, csv, needles):
    path = tmp_path / "fleet.csv"
    path.write_text(csv)
    code, _, err = run(capsys, "solve", "--model", "llama-2-7b", "--clients", str(path))
    assert_one_line_error(code, err, *needles)


def test_fleet_file_with_throughput_feeds_depth_rank(capsys, tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps([{"id": "phone", "memory": "14GiB", "throughput": 5e12, "bandwidth": "2MB"},
                                {"id": "server", "memory": "48GiB", "throughput": 300e12, "examples": 4000}]))
    code, out, _ = run(capsys, "solve", "--model", "llama-2-7b", "--clients", str(path), "--solver", "depth-rank", "--format", "json")
    assert code == 0
    for c in json.loads(out)["clients"]:
        assert c["extras"]["round_time_s"] > 0 and c["extras"]["bytes_up"] > 0


def test_estimate_json_adds_the_reserve(capsys, tmp_path):
    out = tmp_path / "plans"
    run(capsys, "solve", "--model", "llama-2-7b", "--memory-budget", "16GiB", "-o", str(out))
    code, text, _ = run(capsys, "estimate", "--model", "llama-2-7b", "--lora-config", str(out / "client-0"), "--json", "--reserve", "512MiB")
    est = json.loads(text)
    plan = json.loads((out / "plan.json").read_text())["clients"][0]
    assert est["predicted_tensor_bytes"] == plan["predicted_tensor_bytes"]
    assert est["reserve_bytes"] == 512 * 2**20
    assert est["predicted_bytes"] == est["predicted_tensor_bytes"] + est["reserve_bytes"]


def test_estimate_warns_far_below_the_fitted_tokens(capsys, tmp_path):
    """The shipped profiles are fitted on 256-512 tokens; at 1 x 16 a dense rank-64 MiniLM plan is off by
    ~12 % (docs/memory-model.md), so estimate says so, and says nothing at the profile's own shape."""
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", "r": 64, "target_modules": ["query", "value"]}))
    code, text, _ = run(capsys, "estimate", "--model", "all-minilm-l6-v2", "--lora-config", str(cfg), "--json",
                        "--batch-size", "1", "--seq-len", "16")
    assert code == 0 and "re-profile" in json.loads(text)["note"]
    code, text, _ = run(capsys, "estimate", "--model", "all-minilm-l6-v2", "--lora-config", str(cfg))
    assert code == 0 and "note:" not in text


def test_estimate_refuses_a_broken_config(capsys, tmp_path):
    bad = tmp_path / "adapter_config.json"
    bad.write_text('{"r": 8, "target_modules": ')
    code, _, err = run(capsys, "estimate", "--model", "llama-2-7b", "--lora-config", str(bad))
    assert_one_line_error(code, err, "--lora-config", "valid JSON")


@pytest.mark.parametrize("args,needles", [
    (["no-such-model", "-o", "X"], ["MODEL", "llama-2-7b"]),
    (["llama-2-7b", "--dtype", "int3", "-o", "X"], ["--dtype", "bf16"]),
    (["llama-2-7b", "--batch-size", "0", "-o", "X"], ["--batch-size"]),
    (["llama-2-7b", "--seq-len", "100000", "-o", "X"], ["--seq-len", "4096"]),
    (["llama-2-7b", "--target-modules", "qkv", "-o", "X"], ["target module"]),
])
def test_bad_profile_input_is_one_line_and_writes_nothing(capsys, tmp_path, args, needles):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    code, _, err = run(capsys, "profile", *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "X").exists()


def test_unreadable_config_is_one_line(capsys, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{ nope")
    code, _, err = run(capsys, "profile", str(bad), "-o", str(tmp_path / "p.json"))
    assert_one_line_error(code, err, "config.json")


def test_profile_cli_writes_a_loadable_profile_with_a_table(tmp_path, tiny_llama_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "lora_planner.cli.main", "profile", str(tiny_llama_path), "--batch-size", "1",
                        "--seq-len", "16", "--validate", "3", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "predicted" in r.stdout and "measured" in r.stdout
    from lora_planner import load_profile

    assert load_profile(out).num_layers == 4


@pytest.mark.parametrize("task,needles", [("causal-lm", ["--task", "AutoModelForCausalLM", "Try --task seq-cls"]),
                                          ("seq-cls", ["MODEL must be an architecture lora-planner can trace", "t5"])])
def test_an_architecture_we_cannot_build_is_one_line_from_the_worker(capsys, tmp_path, task, needles):
    """Discovery runs in a trace worker; its error must come back as one line, exit 2, no file."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 64,
                               "d_ff": 128, "num_layers": 3, "num_heads": 4, "vocab_size": 300, "d_kv": 16}))
    out = tmp_path / "p.json"
    code, _, err = run(capsys, "profile", str(cfg), "--task", task, "-o", str(out))
    assert_one_line_error(code, err, *needles)
    assert not out.exists()
