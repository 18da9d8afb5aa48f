"""The federated executor on real PEFT clients: every method end to end, FedAvg equivalence,
resume after a real kill -9, faults, and bad input (one line, exit 2, no run folder)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lora_planner.errors import LoraPlannerError
from lora_planner.federated import METHODS, RunSettings, resume, start

BANKING = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"
LABELS = 6  # conftest.LABELS: the first six BANKING77 categories
pytestmark = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")


def fleet_file(tmp_path: Path, ranks=("2", "4", "8")) -> Path:
    """Three clients forced to three different ranks (the fleet's own rank lists), so rules meet mixed ranks."""
    path = tmp_path / "fleet.csv"
    path.write_text("id,memory,ranks\n" + "".join(f"c{i},64MiB,{r}\n" for i, r in enumerate(ranks)))
    return path


def settings(tiny_bert_folder, banking_small, bert_profile, **kw) -> RunSettings:
    train, test = banking_small
    base = dict(model=str(tiny_bert_folder), task="seq-cls", num_labels=LABELS, data=str(train), eval_data=str(test),
                label_column="category", budgets=("64MiB", "64MiB", "64MiB"), profile=str(bert_profile), rounds=2,
                local_steps=3, batch_size=4, seq_len=16, lr=5e-3, ig_samples=8, partition="iid")
    base.update(kw)
    return RunSettings(**base)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_real_clients_and_writes_a_loadable_final_adapter(tmp_path, tiny_bert_folder, banking_small,
                                                                            bert_profile, method):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    kw = {} if method == "fedit" else {"budgets": (), "clients_file": str(fleet_file(tmp_path))}
    run = start(settings(tiny_bert_folder, banking_small, bert_profile, method=method, **kw), tmp_path / "run")
    got = rows(run)
    assert [r["round"] for r in got] == [1, 2]
    for r in got:
        assert 0.0 <= r["eval"]["accuracy"] <= 1.0 and math.isfinite(r["eval"]["loss"])
        trained = [c for c in r["clients"] if not c["dropped"]]
        assert len(trained) == 3, r["clients"]
        for c in trained:
            assert c["measured_peak_bytes"] <= c["budget_bytes"]
            # the plan's prediction beside the measurement of THE step: within 1 % (goal of the executor issue)
            assert abs(c["predicted_bytes"] - c["measured_peak_bytes"]) <= 0.01 * c["measured_peak_bytes"], c
            assert c["measured_peak_bytes"] <= c["predicted_bytes"] + 8, "never under-predicted (8 B: the fit's rounding)"
            assert c["bytes_up"] > 0 and c["num_examples"] > 0 and math.isfinite(c["train_loss"])
    assert all(c["bytes_down"] > 0 for c in got[1]["clients"]), "round 2 receives the global adapter"
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_folder), num_labels=LABELS)
    model = PeftModel.from_pretrained(base, str(run / "final"))
    assert any("lora_B" in n for n, _ in model.named_parameters())
    assert json.loads((run / "final" / "labels.json").read_text())["label_names"][0] == "Refund_not_showing_up"
    plan = json.loads((run / "plan" / "plan.json").read_text())
    if method != "fedit":
        assert len({e["rank"] for c in plan["clients"] for e in c["entries"]}) == 3, "mixed ranks reached the rule"


def test_stagg_with_identical_full_plans_equals_fedavg_over_a_whole_run(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    import torch

    s = settings(tiny_bert_folder, banking_small, bert_profile, method="fedit", rounds=3)
    fedavg = start(s, tmp_path / "fedit")
    stagg = start(replace(s, aggregation="stagg"), tmp_path / "stagg")
    a, b = final_tensors(fedavg), final_tensors(stagg)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # to the bit: every module updated every round gives eta = 1 exactly
    assert [r["eval"] for r in rows(fedavg)] == [r["eval"] for r in rows(stagg)]


def test_flora_clients_merge_the_stack_and_final_equals_the_summed_delta(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lora_planner.aggregation import get_aggregator
    from lora_planner.federated import checkpoint

    s = settings(tiny_bert_folder, banking_small, bert_profile, method="flora", budgets=(),
                 clients_file=str(fleet_file(tmp_path)))
    run = start(s, tmp_path / "run")
    agg = get_aggregator("flora")
    result, _ = checkpoint.load_checkpoint(run, 2, agg)
    assert result.base_delta, "FLoRA's base carries the stacked ΔW"
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_folder), num_labels=LABELS)
    merged = PeftModel.from_pretrained(base, str(run / "final")).merge_and_unload()
    pristine = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_folder), num_labels=LABELS)
    for name, delta in result.base_delta.items():
        got = merged.get_submodule(name).weight - pristine.get_submodule(name).weight
        torch.testing.assert_close(got, delta, rtol=1e-4, atol=1e-5)


def test_resume_after_kill_9_reaches_the_same_final_adapter_to_the_byte(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    train, test = banking_small
    argv = [sys.executable, "-m", "lora_planner.cli.main", "train", "--model", str(tiny_bert_folder), "--num-labels", str(LABELS),
            "--data", str(train), "--eval-data", str(test), "--label-column", "category", "--memory-budget", "64MiB:3",
            "--profile", str(bert_profile), "--method", "hetlora", "--rounds", "4", "--local-steps", "3", "--batch-size", "4",
            "--seq-len", "16", "--iid", "--measure", "never"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    whole = tmp_path / "whole"
    subprocess.run(argv + ["-o", str(whole)], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(argv + ["-o", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "round-0002" / "manifest.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid round 3
    proc.wait()
    assert not (killed / "final").exists()
    out = subprocess.run([sys.executable, "-m", "lora_planner.cli.main", "train", "--resume", str(killed)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (killed / "final" / name).read_bytes() == (whole / "final" / name).read_bytes(), name
    assert [r["eval"] for r in rows(killed)] == [r["eval"] for r in rows(whole)]


def test_rounds_may_grow_on_resume_and_other_settings_are_refused(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    s = settings(tiny_bert_folder, banking_small, bert_profile, method="hetlora", rounds=1)
    run = start(s, tmp_path / "run")
    with pytest.raises(LoraPlannerError, match="^lr must be the run's own setting"):
        resume(run, {"lr": 1e-3})
    resume(run, {"rounds": 2})
    assert [r["round"] for r in rows(run)] == [1, 2]
    with pytest.raises(LoraPlannerError, match="--resume to continue it, or --force"):
        start(s, run)


@pytest.mark.parametrize("fault,needle", [("raise", "injected fault"), ("nan", "NaN"), ("extra-key", "rejected")])
def test_a_failing_client_is_dropped_for_that_round_with_the_reason(tmp_path, tiny_bert_folder, banking_small, bert_profile,
                                                                   fault, needle):
    s = settings(tiny_bert_folder, banking_small, bert_profile, method="hetlora")
    run = start(s, tmp_path / "run", faults={("client-1", 2): fault})
    by_round = {r["round"]: {c["id"]: c["dropped"] for c in r["clients"]} for r in rows(run)}
    assert by_round[1] == {"client-0": None, "client-1": None, "client-2": None}
    assert needle in by_round[2]["client-1"] and by_round[2]["client-0"] is None


def test_too_few_clients_fail_the_round_with_one_line(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    s = settings(tiny_bert_folder, banking_small, bert_profile, method="hetlora", min_clients=3)
    with pytest.raises(LoraPlannerError, match=r"^round 1 must be at least min_clients=3 usable updates; got 2") as err:
        start(s, tmp_path / "run", faults={("client-0", 1): "raise"})
    assert "\n" not in str(err.value)


def test_a_measured_peak_over_the_budget_drops_the_client(tmp_path, tiny_bert_folder, banking_small, bert_profile):
    """A plan whose budget is edited below what the client really uses: measured beside predicted, never silent."""
    from lora_planner.cli.main import main

    plans = tmp_path / "plans"
    assert main(["solve", "--profile", str(bert_profile), "--memory-budget", "64MiB:3", "--solver", "hetlora",
                 "--batch-size", "4", "--seq-len", "16", "-o", str(plans)]) == 0
    body = json.loads((plans / "plan.json").read_text())
    body["clients"][2]["budget_bytes"] = body["clients"][2]["predicted_bytes"] // 2
    (plans / "plan.json").write_text(json.dumps(body))
    run = start(settings(tiny_bert_folder, banking_small, bert_profile, method="hetlora", budgets=(), plan_dir=str(plans),
                         rounds=1), tmp_path / "run")
    client = {c["id"]: c for c in rows(run)[0]["clients"]}["client-2"]
    assert client["dropped"].startswith("measured peak") and client["measured_peak_bytes"] > client["budget_bytes"]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from lora_planner.cli.main import main

    code = main(["train", *args])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("change,needles", [
    (["--rounds", "0"], ["--rounds", "positive"]),
    (["--local-steps", "-1"], ["--local-steps", "positive"]),
    (["--lr", "0"], ["--lr", "positive"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--text-column", "utterance"], ["--text-column", "Known: category, text"]),
    (["--method", "fedpilot"], ["--method", "fed-pilot"]),
    (["--aggregation", "flor"], ["--aggregation", "flora"]),
    (["--device", "tpu"], ["--device", "cpu, cuda"]),
])
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, tiny_bert_folder, banking_small, bert_profile,
                                                        change, needles):
    train, test = banking_small
    args = ["--model", str(tiny_bert_folder), "--num-labels", str(LABELS), "--data", str(train), "--eval-data", str(test),
            "--label-column", "category", "--memory-budget", "64MiB:3", "--profile", str(bert_profile), "--iid",
            "--batch-size", "4", "--seq-len", "16", "-o", str(tmp_path / "run")]
    code, err = _cli(args + change, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "run").exists()


def test_eval_labels_the_training_set_lacks_are_refused(tmp_path, capsys, tiny_bert_folder, banking_small, bert_profile):
    train, test = banking_small
    odd = tmp_path / "odd.csv"
    odd.write_text(test.read_text() + "what is this,not_a_banking_intent\n")
    code, err = _cli(["--model", str(tiny_bert_folder), "--num-labels", str(LABELS), "--data", str(train), "--eval-data", str(odd),
                      "--label-column", "category", "--memory-budget", "64MiB", "--profile", str(bert_profile), "--iid",
                      "-o", str(tmp_path / "run")], capsys)
    assert code == 2 and "--eval-data" in err and "not_a_banking_intent" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_partition_whose_clients_differ_from_the_fleet_is_refused(tmp_path, capsys, tiny_bert_folder, banking_small,
                                                                    bert_profile):
    train, test = banking_small
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"schema_version": 1, "method": "iid", "params": {}, "seed": 0, "source": "",
                                 "clients": {"client-0": [0, 1], "client-9": [2, 3]}}))
    code, err = _cli(["--model", str(tiny_bert_folder), "--num-labels", str(LABELS), "--data", str(train), "--eval-data", str(test),
                      "--label-column", "category", "--memory-budget", "64MiB:2", "--profile", str(bert_profile),
                      "--partition", str(parts), "-o", str(tmp_path / "run")], capsys)
    assert code == 2 and "--partition" in err and "client-9" in err, err
    assert not (tmp_path / "run").exists()


def test_a_plan_whose_modules_the_model_lacks_is_refused(tmp_path, capsys, tiny_bert_folder, banking_small, bert_profile, llama7b):
    from lora_planner.fleet import ClientSpec
    from lora_planner.plan import plan_fleet

    plans = tmp_path / "plans"
    plan_fleet(llama7b, [ClientSpec("client-0", 2**35)]).write(plans, llama7b)
    train, test = banking_small
    code, err = _cli(["--model", str(tiny_bert_folder), "--num-labels", str(LABELS), "--data", str(train), "--eval-data", str(test),
                      "--label-column", "category", "--plan", str(plans), "--profile", str(bert_profile), "--iid",
                      "-o", str(tmp_path / "run")], capsys)
    assert code == 2 and "plan: client client-0" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_causal_lm_trains_on_dolly_with_a_config_built_llama(tmp_path, tiny_llama_folder, dolly_small):
    train, test = dolly_small
    s = RunSettings(model=str(tiny_llama_folder), task="causal-lm", data=str(train), eval_data=str(test), budgets=("64MiB",) * 2,
                    method="hetlora", rounds=2, local_steps=2, batch_size=2, seq_len=32, partition="iid")
    run = start(s, tmp_path / "run")
    got = rows(run)
    assert len(got) == 2 and all(math.isfinite(r["eval"]["loss"]) and "accuracy" not in r["eval"] for r in got)
    for c in got[0]["clients"]:
        assert abs(c["predicted_bytes"] - c["measured_peak_bytes"]) <= 0.01 * c["measured_peak_bytes"], c
        assert c["measured_peak_bytes"] <= c["predicted_bytes"] + 8, "labels are their own tensor in traced batches too"
    assert (run / "profile.json").exists(), "the profile was traced at the training shape and cached"


def test_gradient_checkpointing_is_applied_to_every_client_and_measured_beside_its_prediction(tmp_path, tiny_llama_folder,
                                                                                               dolly_small):
    train, test = dolly_small
    common = dict(model=str(tiny_llama_folder), task="causal-lm", data=str(train), eval_data=str(test), budgets=("64MiB",) * 2,
                  method="hetlora", rounds=1, local_steps=2, batch_size=2, seq_len=32, partition="iid")
    on = start(RunSettings(**common, gradient_checkpointing=True), tmp_path / "on")
    off = start(RunSettings(**common), tmp_path / "off")
    assert json.loads((on / "plan" / "plan.json").read_text())["gradient_checkpointing"] is True
    for c_on, c_off in zip(rows(on)[0]["clients"], rows(off)[0]["clients"]):
        assert c_on["measured_peak_bytes"] <= c_on["predicted_bytes"] <= 1.01 * c_on["measured_peak_bytes"], c_on
        assert c_on["measured_peak_bytes"] < c_off["measured_peak_bytes"], "checkpointing was applied: the peak fell"
    assert math.isfinite(rows(on)[0]["eval"]["loss"])


def test_a_quantised_base_is_applied_to_every_client_and_measured_beside_its_prediction(tmp_path, tiny_llama_folder,
                                                                                      dolly_small):
    pytest.importorskip("bitsandbytes")
    train, test = dolly_small
    common = dict(model=str(tiny_llama_folder), task="causal-lm", data=str(train), eval_data=str(test), budgets=("64MiB",) * 2,
                  method="hetlora", rounds=1, local_steps=2, batch_size=2, seq_len=32, partition="iid")
    run = start(RunSettings(**common, quantization="nf4"), tmp_path / "nf4")
    plan = json.loads((run / "plan" / "plan.json").read_text())
    assert plan["quantization"] == "nf4"
    assert json.loads((run / "profile.json").read_text())["conditions"]["quantization"] == "nf4"
    for c in rows(run)[0]["clients"]:
        # the profile's goal band: never under by more than 0.5 %, over by at most 3 %
        assert 0.995 * c["measured_peak_bytes"] <= c["predicted_bytes"] <= 1.03 * c["measured_peak_bytes"], c
    assert math.isfinite(rows(run)[0]["eval"]["loss"])


def test_flora_is_refused_on_a_quantised_base(tmp_path, tiny_llama_folder, dolly_small):
    train, test = dolly_small
    s = RunSettings(model=str(tiny_llama_folder), task="causal-lm", data=str(train), eval_data=str(test), budgets=("64MiB",),
                    method="flora", rounds=1, quantization="nf4", partition="iid")
    with pytest.raises(LoraPlannerError, match="aggregation"):
        start(s, tmp_path / "run")
    assert not (tmp_path / "run").exists()
